# What every kernel module shares (included by the templates and generic_csr.pyx): the thread
# pool of sparsebench._pool, numpy's C API, and the argument checks that run before nogil code.
cimport numpy as cnp
from libc.stdint cimport int32_t

cnp.import_array()

cdef extern from "pool.h" nogil:
    enum: SB_POOL_MAX
    ctypedef void (*sb_task_fn)(void *ctx, int task) noexcept nogil
    int sb_pool_run(int threads, int ntasks, sb_task_fn fn, void *ctx)

cdef extern from "pool.h":
    int sb_pool_import() except -1

sb_pool_import()


cdef inline int _require(bint ok, str what) except -1:
    if not ok:
        raise ValueError(f"sparsebench {KERNEL_KIND} called with invalid arguments: {what}")
    return 0


cdef inline bint _is(cnp.ndarray a, int typenum):
    """a is a numpy array of type `typenum` in this machine's byte order ('>f4' is NPY_FLOAT32
    too, its bytes swapped)."""
    return a is not None and cnp.PyArray_TYPE(a) == typenum and cnp.PyArray_ISNOTSWAPPED(a)


cdef inline bint _c_array(cnp.ndarray a, int typenum, int ndim):
    """a is a C-contiguous numpy array of type `typenum` (native byte order) with ndim dimensions."""
    return _is(a, typenum) and a.ndim == ndim and cnp.PyArray_IS_C_CONTIGUOUS(a)


cdef inline bint _never_decreases(const int32_t *a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(1, n):
        if a[i] < a[i - 1]:
            return False
    return True


cdef inline bint _apart(cnp.ndarray a, cnp.ndarray b):
    """2-D arrays a and b (rows contiguous, non-negative strides) share no byte."""
    cdef const char *a0 = <const char *>cnp.PyArray_DATA(a)
    cdef const char *b0 = <const char *>cnp.PyArray_DATA(b)
    if a.size == 0 or b.size == 0:
        return True
    cdef Py_ssize_t aspan = (a.shape[0] - 1) * a.strides[0] + a.itemsize * a.shape[1]
    cdef Py_ssize_t bspan = (b.shape[0] - 1) * b.strides[0] + b.itemsize * b.shape[1]
    return b0 >= a0 + aspan or a0 >= b0 + bspan
