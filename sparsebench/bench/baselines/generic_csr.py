"""`generic-csr`: our untuned row-at-a-time CSR SpMM (always available; the floor to beat)."""
import numpy as np

from ... import _generic_csr
from .base import Baseline


def csr_arrays(W):
    """(indptr, indices, data) of dense W's nonzeros, int32/float32."""
    rows, cols = np.nonzero(W)
    indptr = np.zeros(W.shape[0] + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=W.shape[0]), out=indptr[1:])
    return indptr, cols.astype(np.int32), np.ascontiguousarray(W[rows, cols], dtype=np.float32)


class GenericCSR(Baseline):
    name = "generic-csr"
    description = "untuned CSR, one row at a time, no tiling (ours)"

    def version(self):
        from ... import __version__
        return f"sparsebench {__version__} generic-csr"

    def prepare(self, problem):
        indptr, indices, data = csr_arrays(problem.W)
        X, threads = problem.contiguous_X(), problem.threads
        Y = np.empty((problem.W.shape[0], X.shape[1]), dtype=np.float32)

        def run():
            _generic_csr.csr_spmm(indptr, indices, data, X, Y, threads)
            return Y
        return run


BASELINES = [GenericCSR()]
