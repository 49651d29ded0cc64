"""numpy's BLAS thread count for the dense linear layers (everything else runs on the kernels'
own thread pool, sparsebench._pool)."""
import contextlib
import functools

from threadpoolctl import ThreadpoolController


@functools.lru_cache(maxsize=None)
def _controller():
    return ThreadpoolController()


@contextlib.contextmanager
def blas_threads(n):
    """numpy's BLAS limited to `n` threads inside the block."""
    with _controller().limit(limits=n, user_api="blas"):
        yield
