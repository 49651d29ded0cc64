"""`sparsebench`: our block-sparse kernels in the problem's dtype, with a given or tuned config
(or "dense" where the tuner found dense fastest), else the default heuristic;
`sparsebench-fp32`: our float32 kernels whatever the dtype, the yardstick of the int8 ones."""
import dataclasses

import numpy as np

from ...dispatch import default_config
from ...spmm import spmm
from .base import Baseline


class Sparsebench(Baseline):
    name = "sparsebench"
    description = "sparsebench block-sparse kernel (tuned or default config), in the compare dtype"
    float32_only = False

    def version(self):
        from ... import __version__
        return f"sparsebench {__version__}"

    def dtype(self, problem):
        return "float32" if self.float32_only else problem.dtype

    def _operands(self, problem):
        """(matrix, config) this method runs."""
        if self.dtype(problem) == "int8":
            return problem.Aq, problem.config
        return problem.A, problem.fp32_config if self.float32_only else problem.config

    def config_for(self, problem):
        """The KernelConfig that runs ("dense" when the tuned choice is dense)."""
        A, cfg = self._operands(problem)
        if cfg == "dense":
            return "dense"
        cfg = cfg or default_config(A, problem.X.shape[1], problem.threads)
        if cfg.threads != problem.threads:
            cfg = dataclasses.replace(cfg, threads=problem.threads)
        return cfg

    def prepare(self, problem):
        A, X = self._operands(problem)[0], problem.X
        Y = np.empty((A.shape[0], X.shape[1]), dtype=np.float32)
        cfg = self.config_for(problem)
        if cfg == "dense":       # the tuner found dense fastest for this shape
            W = problem.W
            return lambda: np.matmul(W, X, out=Y)
        return lambda: spmm(A, X, cfg, out=Y)


class SparsebenchFloat32(Sparsebench):
    name = "sparsebench-fp32"
    description = "sparsebench float32 block-sparse kernel (tuned or default config)"
    float32_only = True


BASELINES = [Sparsebench(), SparsebenchFloat32()]
