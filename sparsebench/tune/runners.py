"""The ways a tuning task's candidates run: our sparse kernels with a config, our dense GEMM (the
"dense" candidate: what a model runs for a "dense" verdict), numpy's dense matmul (the yardstick).
Each is out -> W @ X into a given output; with layout "tokens", X is N x K and out N x M
(out -> X @ W.T, as PyTorch's linear computes)."""
import numpy as np

from ..arrays import activations
from ..bsr import BSRMatrix
from ..dispatch import DENSE_BLOCK, default_config
from ..spmm import spmm


def dense_runner(W, X, threads, layout="features"):
    """out <- W @ X on our dense GEMM (every block of W stored: the kernels' dense variants), what
    a model runs for a "dense" verdict."""
    A = BSRMatrix.from_dense(W, DENSE_BLOCK, keep_zero_blocks=True)
    n = X.shape[0] if layout == "tokens" else X.shape[1]
    config = default_config(A, n, threads, layout)
    return lambda out: spmm(A, X, config, out=out, layout=layout)


def numpy_runner(W, X, layout="features"):
    """out <- W @ X (token-major: X @ W.T) on numpy's BLAS: the yardstick."""
    if layout == "tokens":
        return lambda out: np.matmul(X, W.T, out=out)
    return lambda out: np.matmul(W, X, out=out)


def sparse_runner(A, X, config, layout="features"):
    """out <- A @ X with `config`."""
    return lambda out: spmm(A, X, config, out=out, layout=layout)


def in_layout(X, layout):
    """A task's X (K x N) as its candidates read it: for "tokens" a contiguous N x K copy, as a
    PyTorch tensor holds it (rows a multiple of 4 KiB apart for K = 1024 or 3072, say)."""
    return np.ascontiguousarray(X.T) if layout == "tokens" else X


def out_shape(task):
    """The shape of a task's output: N x M token-major, M x N feature-major."""
    return (task.N, task.M) if task.layout == "tokens" else (task.M, task.N)


def new_output(task):
    """An output as the task's callers hold it: rows padded apart (arrays.activations, as our models
    allocate) feature-major; contiguous token-major, as a PyTorch tensor."""
    if task.layout == "tokens":
        return np.empty(out_shape(task), np.float32)
    return activations(task.M, task.N)
