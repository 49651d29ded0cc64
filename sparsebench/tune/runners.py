"""The ways a tuning task's candidates run: our sparse kernels with a config, our dense GEMM (the
"dense" candidate: what a model runs for a "dense" verdict), numpy's dense matmul (the yardstick).
Each is out -> W @ X into a given output."""
import numpy as np

from ..bsr import BSRMatrix
from ..dispatch import DENSE_BLOCK, default_config
from ..spmm import spmm


def dense_runner(W, X, threads):
    """out <- W @ X on our dense GEMM (every block of W stored: the kernels' dense variants), what
    a model runs for a "dense" verdict."""
    A = BSRMatrix.from_dense(W, DENSE_BLOCK, keep_zero_blocks=True)
    config = default_config(A, X.shape[1], threads)

    return lambda out: spmm(A, X, config, out=out)


def numpy_runner(W, X):
    """out <- W @ X on numpy's BLAS: the yardstick."""
    return lambda out: np.matmul(W, X, out=out)


def sparse_runner(A, X, config):
    """out <- A @ X with `config`."""
    return lambda out: spmm(A, X, config, out=out)
