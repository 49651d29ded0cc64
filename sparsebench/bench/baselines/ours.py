"""Our kernels as compare methods.

`sparsebench`: our block-sparse kernels in the problem's dtype, with a given or tuned config (or
"dense" where the tuner found dense fastest), else the default heuristic;
`sparsebench-default`: the default heuristic whatever is tuned (what tuning gains);
`sparsebench-fp32`: our float32 kernels whatever the dtype, the yardstick of the int8 ones;
`sparsebench-int8-kernel`: the int8 kernel alone, on activations quantized beforehand (the
`sparsebench` method of an int8 run includes quantizing X);
`sparsebench-dense`: our dense GEMM (the kernels' dense variants, every block of W stored),
the yardstick beside numpy's BLAS;
`sparsebench-tokens`: our kernels on token-major X and Y (spmm's layout="tokens", what
sparsebench.torch.SparseLinear runs: PyTorch's tokens x features), with the config tuned
token-major (the `sparsebench` config when only feature-major was tuned). Its X and Y come from
the same page allocator as `sparsebench`'s (huge pages from 256 KiB on), their rows unpadded as
PyTorch's are, so that the page size does not tell the two apart.
"""
import dataclasses

import numpy as np

from ...arrays import activations, empty
from ...bsr import BSRMatrix
from ...dispatch import DENSE_BLOCK, default_config
from ...errors import MethodUnavailable
from ...quant import quantize_activations
from ...spmm import spmm
from .base import Baseline


class Sparsebench(Baseline):
    name = "sparsebench"
    description = "sparsebench block-sparse kernel (tuned or default config), in the compare dtype"
    float32_only = False
    heuristic = False
    layout = "features"             # of X and Y: what the default config is chosen for

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
        if self.heuristic:
            cfg = None
        if cfg == "dense":
            return "dense"
        cfg = cfg or default_config(A, problem.X.shape[1], problem.threads, self.layout)
        if cfg.threads != problem.threads:
            cfg = dataclasses.replace(cfg, threads=problem.threads)
        return cfg

    def prepare(self, problem):
        A, X = self._operands(problem)[0], problem.X
        Y = activations(A.shape[0], X.shape[1])
        cfg = self.config_for(problem)
        if cfg == "dense":       # the tuner found dense fastest for this shape
            W = problem.W
            return lambda: np.matmul(W, X, out=Y)
        return lambda: spmm(A, X, cfg, out=Y)


class SparsebenchFloat32(Sparsebench):
    name = "sparsebench-fp32"
    description = "sparsebench float32 block-sparse kernel (tuned or default config)"
    float32_only = True


class SparsebenchDefault(Sparsebench):
    name = "sparsebench-default"
    description = "sparsebench block-sparse kernel with the default heuristic's config, in the compare dtype"
    heuristic = True


class SparsebenchInt8Kernel(Sparsebench):
    name = "sparsebench-int8-kernel"
    description = "sparsebench int8 kernel alone, on activations quantized and packed beforehand"

    def prepare(self, problem):
        if problem.dtype != "int8":
            raise MethodUnavailable("only in int8 runs (compare --dtype int8)")
        A, X = problem.Aq, problem.X
        Xq = quantize_activations(X, A.block, threads=problem.threads)
        Y = activations(A.shape[0], X.shape[1])
        cfg = self.config_for(problem)
        if cfg == "dense":
            raise MethodUnavailable("the tuned choice for this case is dense")
        return lambda: spmm(A, Xq, cfg, out=Y)


class SparsebenchTokens(Sparsebench):
    name = "sparsebench-tokens"
    description = "sparsebench block-sparse kernel on token-major X and Y (layout='tokens'), tuned token-major"
    layout = "tokens"

    def _operands(self, problem):
        A, config = super()._operands(problem)
        return A, problem.tokens_config or config

    def prepare(self, problem):
        A, X = self._operands(problem)[0], problem.X
        Xt = empty(X.shape[::-1])                           # contiguous, as a PyTorch tensor
        Xt[:] = X.T
        Yt = empty((X.shape[1], A.shape[0]))
        cfg = self.config_for(problem)
        if cfg == "dense":
            raise MethodUnavailable("the tuned choice for this case is dense")
        return lambda: spmm(A, Xt, cfg, out=Yt, layout="tokens").T      # checked as M x N


class SparsebenchDense(Baseline):
    name = "sparsebench-dense"
    description = "sparsebench dense GEMM: the dense variants of our kernels, every block of W stored"

    def version(self):
        from ... import __version__
        return f"sparsebench {__version__} dense"

    def prepare(self, problem):
        A = BSRMatrix.from_dense(problem.W, DENSE_BLOCK, keep_zero_blocks=True)
        X = problem.X
        Y = activations(A.shape[0], X.shape[1])
        cfg = default_config(A, X.shape[1], problem.threads)
        return lambda: spmm(A, X, cfg, out=Y)


BASELINES = [Sparsebench(), SparsebenchDefault(), SparsebenchFloat32(), SparsebenchInt8Kernel(),
             SparsebenchDense(), SparsebenchTokens()]
