"""`sparsebench`: our tuned block-sparse kernels (given config, else the default heuristic)."""
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
        cfg = problem.config or default_config(problem.A, problem.X.shape[1], problem.threads)
        if cfg.threads != problem.threads:
            cfg = dataclasses.replace(cfg, threads=problem.threads)
        return cfg

    def prepare(self, problem):
        A, X = problem.A, problem.X
        cfg = self.config_for(problem)
        Y = np.empty((A.shape[0], X.shape[1]), dtype=np.float32)
        return lambda: spmm(A, X, cfg, out=Y)


BASELINES = [Sparsebench()]
