"""`sparsebench`: our block-sparse kernels with a given or tuned config (or "dense" where the
tuner found dense fastest), else the default heuristic."""
import dataclasses

import numpy as np

from ..config import default_config
from ..spmm import spmm
from .base import Baseline


class Sparsebench(Baseline):
    name = "sparsebench"
    description = "sparsebench block-sparse kernel (tuned or default config)"

    def version(self):
        from .. import __version__
        return f"sparsebench {__version__}"

    def config_for(self, problem):
        """The KernelConfig that runs ("dense" when the tuned choice is dense)."""
        if problem.config == "dense":
            return "dense"
        cfg = problem.config or default_config(problem.A, problem.X.shape[1], problem.threads)
        if cfg.threads != problem.threads:
            cfg = dataclasses.replace(cfg, threads=problem.threads)
        return cfg

    def prepare(self, problem):
        A, X = problem.A, problem.X
        if problem.config == "dense":       # the tuner found dense fastest for this shape
            W, Y = problem.W, np.empty((A.shape[0], X.shape[1]), dtype=np.float32)
            return lambda: np.matmul(W, X, out=Y)
        cfg = self.config_for(problem)
        Y = np.empty((A.shape[0], X.shape[1]), dtype=np.float32)
        return lambda: spmm(A, X, cfg, out=Y)


BASELINES = [Sparsebench()]
