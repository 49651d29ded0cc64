# cython: boundscheck=False, wraparound=False, cdivision=True
"""An untuned CSR SpMM of our own: the library-style floor the tuned kernels must beat.

One row of W at a time, Y[i, :] += W[i, j] * X[j, :] over the row's nonzeros, no tiling,
no blocking; rows split evenly (by count, not by nonzeros) over the threads.
"""
include "common.pxi"

KERNEL_KIND = "CSR kernel"

ctypedef struct csr_job_t:
    const int32_t *ptr
    const int32_t *idx
    const float *val
    const float *X
    float *Y
    int M
    int N
    int ntasks


cdef void csr_task(void *ctx, int t) noexcept nogil:
    cdef csr_job_t *j = <csr_job_t *>ctx
    cdef int first = <int>((<long>j.M * t) // j.ntasks)
    cdef int last = <int>((<long>j.M * (t + 1)) // j.ntasks)
    cdef int i, n, p
    cdef float a
    cdef float *y
    cdef const float *x
    for i in range(first, last):
        y = j.Y + <Py_ssize_t>i * j.N
        for n in range(j.N):
            y[n] = 0
        for p in range(j.ptr[i], j.ptr[i + 1]):
            a = j.val[p]
            x = j.X + <Py_ssize_t>j.idx[p] * j.N
            for n in range(j.N):
                y[n] += a * x[n]


def csr_spmm(const int32_t[::1] indptr, const int32_t[::1] indices, const float[::1] data,
             const float[:, ::1] X, float[:, ::1] Y, int threads=1):
    """Y = W @ X for W (Y.shape[0] x X.shape[0]) in CSR; the structure is checked first."""
    cdef int M = Y.shape[0], K = X.shape[0], N = X.shape[1]
    cdef int i, p
    if Y.shape[1] != N:
        raise ValueError(f"Y has {Y.shape[1]} columns, X has {N}")
    if threads < 1:
        raise ValueError(f"threads must be positive, got {threads}")
    if indptr.shape[0] != M + 1 or indptr[0] != 0:
        raise ValueError(f"indptr must have {M + 1} entries starting at 0")
    for i in range(M):
        if indptr[i + 1] < indptr[i]:
            raise ValueError(f"indptr decreases at row {i}")
    if indices.shape[0] < indptr[M] or data.shape[0] < indptr[M]:
        raise ValueError(f"indices and data need {indptr[M]} entries")
    for p in range(indptr[M]):
        if not 0 <= indices[p] < K:
            raise ValueError(f"column index {indices[p]} out of range [0, {K})")
    cdef csr_job_t job
    job.ptr = &indptr[0]
    job.idx = &indices[0] if indices.shape[0] else NULL
    job.val = &data[0] if data.shape[0] else NULL
    job.X = &X[0, 0] if X.shape[0] and N else NULL
    job.Y = &Y[0, 0] if M and N else NULL
    job.M, job.N = M, N
    job.ntasks = min(threads, M) if M else 0
    if M == 0 or N == 0:
        return
    with nogil:
        sb_pool_run(threads, job.ntasks, csr_task, &job)
