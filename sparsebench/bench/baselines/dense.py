"""`dense`: numpy's W @ X through the BLAS numpy was built with (threads set by threadpoolctl)."""
import numpy as np
from threadpoolctl import threadpool_info

from .base import Baseline


def blas_version():
    return ", ".join(f"{p.get('internal_api')} {p.get('version')} ({p.get('threading_layer')})"
                     for p in threadpool_info() if p.get("user_api") == "blas") or "unknown BLAS"


class Dense(Baseline):
    name = "dense"
    description = "numpy W @ X (dense BLAS sgemm)"

    def version(self):
        return f"numpy {np.__version__}, {blas_version()}"

    def prepare(self, problem):
        W, X = problem.W, problem.X
        Y = np.empty((W.shape[0], X.shape[1]), dtype=np.float32)
        return lambda: np.matmul(W, X, out=Y)


BASELINES = [Dense()]
