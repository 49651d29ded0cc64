"""`mkl`, `mkl-bsr`: oneMKL's inspector-executor sparse BLAS (mkl_sparse_s_mm) through ctypes.

Optional: ``pip install "sparsebench[mkl]"`` installs the `mkl` wheel, whose libmkl_rt sits in
``sys.prefix/lib`` where the dynamic loader does not look; we find it and load it by path.
LP64 interface (32-bit MKL_INT).

MKL's OpenMP runtime (libiomp5) keeps idle threads spinning for KMP_BLOCKTIME = 200 ms after
each call, which on a small machine takes the cores from whatever runs next (compare
interleaves methods). Unless the user set KMP_BLOCKTIME or OMP_WAIT_POLICY, we set
KMP_BLOCKTIME=50us before libiomp5 loads: long enough to bridge back-to-back calls (0 made
small multiplies 2x slower: every call had to wake the sleeping workers), short enough not
to slow the next method. version() says what is in effect.
"""
import ctypes
import ctypes.util
import functools
import glob
import importlib.metadata
import os
import sys
import weakref

import numpy as np

from ...errors import MethodUnavailable
from ...idle_spin import tame_idle_spin
from .base import Baseline
from .generic_csr import csr_arrays

INSTALL_HINT = 'pip install "sparsebench[mkl]"'

# constants of mkl_spblas.h and mkl_service.h
STATUS = {0: "SPARSE_STATUS_SUCCESS", 1: "SPARSE_STATUS_NOT_INITIALIZED",
          2: "SPARSE_STATUS_ALLOC_FAILED", 3: "SPARSE_STATUS_INVALID_VALUE",
          4: "SPARSE_STATUS_EXECUTION_FAILED", 5: "SPARSE_STATUS_INTERNAL_ERROR",
          6: "SPARSE_STATUS_NOT_SUPPORTED"}
INDEX_BASE_ZERO = 0
OPERATION_NON_TRANSPOSE = 10
MATRIX_TYPE_GENERAL = 20
FILL_MODE_FULL = 42
DIAG_NON_UNIT = 50
LAYOUT_ROW_MAJOR = 101
THREADING_LAYERS = {0: "intel (libiomp5)", 1: "sequential", 2: "pgi", 3: "gnu (libgomp)", 4: "tbb"}
#: multiplies we tell mkl_sparse_set_mm_hint to expect (a benchmark makes many)
EXPECTED_CALLS = 1000
#: how long idle libiomp5 threads spin before sleeping, unless the user says otherwise
IDLE_BLOCKTIME = "50us"


class MKLError(RuntimeError):
    """An MKL sparse routine returned a status other than SPARSE_STATUS_SUCCESS."""


class MatrixDescr(ctypes.Structure):
    """struct matrix_descr (passed by value)."""
    _fields_ = [("type", ctypes.c_int), ("mode", ctypes.c_int), ("diag", ctypes.c_int)]


GENERAL = MatrixDescr(MATRIX_TYPE_GENERAL, FILL_MODE_FULL, DIAG_NON_UNIT)

_int, _float, _handle, _ptr = ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p
_SIGNATURES = {  # name: (restype, argtypes); MKL_INT is int under LP64
    "mkl_sparse_s_create_csr": (_int, [ctypes.POINTER(_handle), _int, _int, _int,
                                       _ptr, _ptr, _ptr, _ptr]),
    "mkl_sparse_s_create_bsr": (_int, [ctypes.POINTER(_handle), _int, _int, _int, _int, _int,
                                       _ptr, _ptr, _ptr, _ptr]),
    "mkl_sparse_set_mm_hint": (_int, [_handle, _int, MatrixDescr, _int, _int, _int]),
    "mkl_sparse_optimize": (_int, [_handle]),
    "mkl_sparse_s_mm": (_int, [_int, _float, _handle, MatrixDescr, _int, _ptr, _int, _int,
                               _float, _ptr, _int]),
    "mkl_sparse_destroy": (_int, [_handle]),
    # the C (by-value) service functions are the mixed-case names; the lower-case ones in
    # libmkl_rt are the Fortran entry points that take pointers
    "MKL_Get_Version_String": (None, [ctypes.c_char_p, _int]),
    "MKL_Set_Threading_Layer": (_int, [_int]),
    "MKL_Get_Max_Threads": (_int, []),
    "MKL_Set_Num_Threads_Local": (_int, [_int]),
}


def library_candidates():
    """Where libmkl_rt may be, best first: files of the `mkl` wheel, sys.prefix/lib, then
    names for the system loader (ctypes.util.find_library runs only if the paths fail)."""
    try:
        dist = importlib.metadata.distribution("mkl")
        files = [str(dist.locate_file(f)) for f in dist.files or ()
                 if os.path.basename(str(f)).startswith("libmkl_rt.so")]
    except importlib.metadata.PackageNotFoundError:
        files = []
    files += sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")), reverse=True)
    yield from dict.fromkeys(os.path.realpath(p) for p in files if os.path.isfile(p))
    found = ctypes.util.find_library("mkl_rt")
    yield from ([found] if found else []) + ["libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so"]


def _check(name, status):
    if status != 0:
        raise MKLError(f"{name} failed: {STATUS.get(status, 'unknown status')} ({status})")


class _MKL:
    """libmkl_rt with typed entry points, and the idle-spin setting we made."""

    def __init__(self, lib, path, blocktime_note):
        self.path = path
        self.blocktime_note = blocktime_note
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
            setattr(self, name, fn)

    def version(self):
        buf = ctypes.create_string_buffer(256)
        self.MKL_Get_Version_String(buf, len(buf))
        layer = self.MKL_Set_Threading_Layer(-1)   # an invalid code only returns the current one
        return (f"{buf.value.decode(errors='replace').strip()}, LP64, threading "
                f"{THREADING_LAYERS.get(layer, layer)}, {self.blocktime_note}")

    def call(self, name, *args):
        _check(name, getattr(self, name)(*args))


@functools.lru_cache(maxsize=None)
def _tame_idle_spin():
    """Set KMP_BLOCKTIME once, before libiomp5.so loads, unless the user chose; returns a note."""
    return tame_idle_spin("KMP_BLOCKTIME", IDLE_BLOCKTIME, "libiomp5.so", "idle MKL threads spin for 200 ms after each call")


@functools.lru_cache(maxsize=None)
def load():
    """The loaded MKL; MethodUnavailable if no libmkl_rt can be found and loaded."""
    note = _tame_idle_spin()
    errors = []
    for cand in library_candidates():
        try:
            lib = ctypes.CDLL(cand)
        except OSError as e:
            if os.sep in cand:
                errors.append(str(e))
            continue
        try:
            return _MKL(lib, cand, note)
        except AttributeError as e:
            errors.append(f"{cand}: {e}")
    if errors:
        raise MethodUnavailable(f"oneMKL could not be loaded ({errors[0]}); "
                                f"reinstall it: {INSTALL_HINT}")
    raise MethodUnavailable(f"oneMKL is not installed: {INSTALL_HINT}")


def _destroy(mkl, handle, *keepalive):
    """Finalizer: free the MKL handle (the arrays it points into are released after)."""
    mkl.call("mkl_sparse_destroy", handle)


class MKLSparse(Baseline):
    install_hint = INSTALL_HINT

    def __init__(self, fmt):
        self.fmt = fmt
        self.name = "mkl" if fmt == "csr" else f"mkl-{fmt}"
        self.description = f"oneMKL inspector-executor {fmt.upper()} mkl_sparse_s_mm"

    def version(self):
        try:
            return load().version()
        except MethodUnavailable:
            return "oneMKL not installed"

    def _create(self, mkl, problem):
        """(handle, arrays the handle points into) for W in this method's format."""
        handle = _handle()
        M, K = problem.W.shape
        if self.fmt == "csr":
            indptr, indices, values = csr_arrays(problem.W)
            mkl.call("mkl_sparse_s_create_csr", ctypes.byref(handle), INDEX_BASE_ZERO, M, K,
                     indptr.ctypes.data, indptr.ctypes.data + 4, indices.ctypes.data,
                     values.ctypes.data)
        else:
            br, bc = problem.block
            if br != bc:
                raise MethodUnavailable(f"MKL BSR needs square blocks, not {br}x{bc}")
            if M % br or K % bc:
                raise MethodUnavailable(f"MKL BSR needs M and K divisible by the block {br}x{bc}; "
                                        f"W is {M}x{K}")
            A = problem.A
            indptr = np.array(A.indptr, dtype=np.int32)
            indices = np.array(A.indices, dtype=np.int32)
            values = np.array(A.data, dtype=np.float32)      # (blocks, b, b), row-major blocks
            mkl.call("mkl_sparse_s_create_bsr", ctypes.byref(handle), INDEX_BASE_ZERO,
                     LAYOUT_ROW_MAJOR, M // br, K // bc, br, indptr.ctypes.data,
                     indptr.ctypes.data + 4, indices.ctypes.data, values.ctypes.data)
        return handle.value, (indptr, indices, values)

    def prepare(self, problem):
        mkl = load()
        X = problem.contiguous_X()
        M, N = problem.W.shape[0], X.shape[1]
        Y = np.empty((M, N), dtype=np.float32)
        threads = problem.threads
        handle, arrays = self._create(mkl, problem)
        try:
            mkl.call("mkl_sparse_set_mm_hint", handle, OPERATION_NON_TRANSPOSE, GENERAL,
                     LAYOUT_ROW_MAJOR, N, EXPECTED_CALLS)
            mkl.call("mkl_sparse_optimize", handle)
        except BaseException:
            mkl.call("mkl_sparse_destroy", handle)
            raise
        set_threads, mm = mkl.MKL_Set_Num_Threads_Local, mkl.mkl_sparse_s_mm
        args = (OPERATION_NON_TRANSPOSE, 1.0, handle, GENERAL, LAYOUT_ROW_MAJOR, X.ctypes.data,
                N, max(N, 1), 0.0, Y.ctypes.data, max(N, 1))

        def run():
            set_threads(threads)     # thread-local: methods with other thread counts may interleave
            _check("mkl_sparse_s_mm", mm(*args))
            return Y
        # the finalizer holds X, Y and W's arrays, which MKL points into, until the handle is gone
        weakref.finalize(run, _destroy, mkl, handle, X, Y, arrays)
        return run


BASELINES = [MKLSparse("csr"), MKLSparse("bsr")]
