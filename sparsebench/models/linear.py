"""SparseLinear: a pruned linear layer (Y = W @ X + b, optional GELU) on the block-sparse kernels.

Activations are features x tokens (X is in_features x N), the layout the kernels compute in,
so a chain of layers needs no transposes.
"""
import dataclasses

import numpy as np

from ..blocks import SUPPORTED_BLOCKS, check_block
from ..bsr import BSRMatrix
from ..config import KernelConfig, check_config
from ..cpu import default_threads, encoder_module
from ..dispatch import DENSE_BLOCK, default_config
from ..dtypes import check_dtype_blocks, sparse_matrix
from ..errors import ConfigError, UnsupportedISAError
from ..prune import prune
from ..quant import QuantizedActivations
from ..spmm import spmm, spmm_into
from .config import ModelError
from .parallel import blas_threads

ACTIVATIONS = (None, "gelu")
#: KernelPlan.source of a plan the default heuristic chose (no tuned or given config)
DEFAULT_SOURCE = "default heuristic"


def gelu_(x, threads=1):
    """Exact (erf) GELU of a C-contiguous float32 array `x`, in place, on up to `threads` threads:
    the compiled op of the encoder module (the sparse kernels' epilogue GELU, kernels/simd.h).
    Returns x."""
    return encoder_module().gelu_(x, threads)


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    """What a SparseLinear runs for one token count N, and why."""

    method: str                 # "sparse", "dense" (our dense GEMM) or "numpy" (numpy's matmul)
    config: object              # KernelConfig for "sparse" and "dense", None for "numpy"
    source: str                 # "given", "tuned", "tuned (features-major)", "tuned (nearest)", ...
    note: str = ""

    @property
    def kernel(self):
        """The config string, "dense" or "numpy"."""
        return str(self.config) if self.method == "sparse" else self.method

    @property
    def is_default(self):
        """Chosen by the default heuristic (no tuned or given config)."""
        return self.source == DEFAULT_SOURCE


class SparseLinear:
    """Y = act(scale (W @ X + b)) for X of shape (in_features, N), W stored as a BSRMatrix
    (dtype "float32") or a QuantizedBSRMatrix (dtype "int8": s8 weights per row, X quantized
    per call to u8 unless it is given as QuantizedActivations, Y float32).

    `weight` (out_features x in_features) is pruned to `sparsity` with sparsebench.prune in
    `block` blocks, or kept as it is with sparsity=None; `scale` (e.g. attention's 1/sqrt(d))
    is then folded into the stored W and b. `config` picks the kernel: a
    KernelConfig, "dense" (our dense GEMM: the kernels' dense variants on every block of W, bias
    and GELU in the epilogue), "numpy" (numpy's matmul, the yardstick) or None; with None,
    `tuned` (a table from sparsebench.tune.apply.load_tuned) is asked per (M, K, N, sparsity,
    block), a "dense" verdict runs our dense GEMM, and without a table the default heuristic is
    used. `kernel` names what the last call ran.
    """

    def __init__(self, weight, bias=None, *, sparsity=None, block=(4, 1), scale=1.0, activation=None,
                 config=None, tuned=None, threads=None, name="linear", dtype="float32"):
        weight = np.asarray(weight)
        if weight.ndim != 2 or not np.issubdtype(weight.dtype, np.floating):
            raise ModelError(f"{name}: weight must be a 2-D floating-point matrix, "
                             f"got {weight.dtype} of shape {weight.shape}")
        block = check_block(block)
        if activation not in ACTIVATIONS:
            raise ModelError(f"{name}: unknown activation {activation!r}; choose one of {ACTIVATIONS}")
        if not (config is None or config in ("dense", "numpy") or isinstance(config, KernelConfig)):
            raise ModelError(f"{name}: config must be a KernelConfig, 'dense', 'numpy' or None, got {config!r}")
        try:
            check_dtype_blocks(dtype, [block])
        except (ValueError, UnsupportedISAError) as e:
            raise ModelError(f"{name}: {e}") from None
        self.name = name
        self.dtype = dtype
        self.activation = activation
        self.threads = threads or default_threads()
        self.tuned = tuned
        self._config = config
        if sparsity is not None:
            weight = prune(weight, sparsity, block)
        self.scale = float(scale)
        self.A = sparse_matrix(weight * np.float32(scale) if scale != 1 else weight, block, dtype)
        self.out_features, self.in_features = self.A.shape
        if bias is None:
            self.bias = None
        else:
            self.bias = np.array(bias, dtype=np.float32) * np.float32(scale)
            if self.bias.shape != (self.out_features,):
                raise ModelError(f"{name}: bias has shape {self.bias.shape}, needs ({self.out_features},)")
        if isinstance(config, KernelConfig):
            check_config(config, self.A)
        self._dense = None
        self._bias_column = None if self.bias is None else self.bias[:, None]
        self._plans = {}
        self._last = None                     # the plan of the last call

    # -- kernel choice ------------------------------------------------------------------------
    @property
    def sparsity(self):
        """Fraction of the block grid that is zero."""
        return self.A.sparsity

    @property
    def block(self):
        return self.A.block

    def plan(self, n, layout="features"):
        """The KernelPlan for N = n tokens with X in `layout` (chosen once per N and layout)."""
        plan = self._plans.get((n, layout))
        if plan is None:
            plan = self._plans[n, layout] = self._choose(n, layout)
            if plan.method == "numpy" and self._dense is None:
                self._dense = self.A.to_dense()
            if plan.method == "dense":
                if self._dense is None:
                    self._dense = BSRMatrix.from_dense(self.A.to_dense(), DENSE_BLOCK, keep_zero_blocks=True)
                plan = self._plans[n, layout] = dataclasses.replace(
                    plan, config=default_config(self._dense, n, self.threads, layout))
        return plan

    def _choose(self, n, layout):
        if isinstance(self._config, KernelConfig):
            return KernelPlan("sparse", self._config, "given")
        if self._config in ("dense", "numpy"):
            return KernelPlan(self._config, None, "given")
        heuristic = default_config(self.A, n, self.threads, layout)
        if self.tuned is None:
            return KernelPlan("sparse", heuristic, DEFAULT_SOURCE, "no tuned file")
        M, K = self.A.shape
        entry = self.tuned.lookup(M, K, n, self.sparsity, self.block, dtype=self.dtype, threads=self.threads,
                                  layout=layout)
        if entry.method == "sparse" and entry.config is None:
            return KernelPlan("sparse", heuristic, DEFAULT_SOURCE, entry.note)
        source = ("tuned (nearest)" if not entry.exact else "tuned" if entry.layout == layout
                  else f"tuned ({entry.layout}-major)")
        if entry.method == "dense":
            return KernelPlan("dense", None, source, entry.note)
        try:
            check_config(entry.config, self.A)
        except (ConfigError, TypeError) as e:
            return KernelPlan("sparse", heuristic, DEFAULT_SOURCE,
                              f"tuned config {entry.config} unusable: {e}")
        return KernelPlan("sparse", entry.config, source, entry.note)

    # -- compute ------------------------------------------------------------------------------
    def __call__(self, X, out=None):
        """act(scale (W @ X + b)) into `out` (a new array if None); see matmul and activate."""
        return self.activate(self.matmul(X, out))

    def matmul(self, X, out=None, layout="features"):
        """scale (W @ X + b) into `out` with the planned kernel, and the activation too when the
        kernel applies it in its epilogue (ours do). Sets `kernel` and `method`. An int8 layer
        also takes X as QuantizedActivations (quantize_activations(X, block)). layout "tokens":
        X is tokens x in_features and the result tokens x out_features (spmm's token-major entry)."""
        if layout == "tokens":
            return self._token_major(X, out)
        quantized = isinstance(X, QuantizedActivations)
        if not ((isinstance(X, np.ndarray) and X.ndim == 2) or (quantized and self.dtype == "int8")):
            raise ModelError(f"{self.name}: X must be a 2-D numpy array (in_features x tokens)"
                             + (" or QuantizedActivations" if self.dtype == "int8" else "")
                             + f", got {type(X).__name__} {getattr(X, 'shape', '')}")
        return self._compute(X, out, spmm)

    def matmul_into(self, X, out, accumulate=False):
        """matmul into the encoder's own arrays (its Workspace), known good: through spmm_into,
        without spmm's Python checks. accumulate: out += the product instead (no activation): in
        our kernels' store step, or after numpy's matmul."""
        return self._compute(X, out, spmm_into, accumulate)

    def _compute(self, X, out, multiply, accumulate=False):
        if accumulate and self.activation is not None:
            raise ModelError(f"{self.name}: adding into `out` takes a layer without activation")
        n = X.shape[1]
        plan = self._plans.get((n, "features")) or self.plan(n)
        quantized = isinstance(X, QuantizedActivations)
        more = {"accumulate": True} if accumulate else {}
        if plan.method == "sparse":
            out = multiply(self.A, X, plan.config, out=out, bias=self.bias, activation=self.activation, **more)
        elif plan.method == "dense":
            X = X.to_float() if quantized else X
            out = multiply(self._dense, X, plan.config, out=out, bias=self.bias, activation=self.activation, **more)
        elif accumulate:
            out += self._numpy_matmul(X.to_float() if quantized else X, None)
        else:
            out = self._numpy_matmul(X.to_float() if quantized else X, out)
        self._last = plan
        return out

    def _token_major(self, X, out):
        if not (isinstance(X, np.ndarray) and X.ndim == 2):
            raise ModelError(f"{self.name}: token-major X must be a 2-D numpy array (tokens x in_features)")
        n = X.shape[0]
        plan = self._plans.get((n, "tokens")) or self.plan(n, "tokens")
        if plan.method == "numpy":
            raise ModelError(f"{self.name}: the 'numpy' config computes features x tokens only")
        A = self.A if plan.method == "sparse" else self._dense
        out = spmm(A, X, plan.config, out=out, bias=self.bias, activation=self.activation, layout="tokens")
        self._last = plan
        return out

    def share(self, A, bias):
        """Compute with `A` and `bias` from now on: the same values, in arrays shared with other
        layers (views of the rows of a stacked matrix and bias)."""
        self.A = A
        self.bias = bias
        self._bias_column = None if bias is None else bias[:, None]

    def ran(self, plan):
        """Record `plan` as what the last call ran: a call made for this layer together with others
        (the encoder's one call for Q, K and V)."""
        self._last = plan

    def __setstate__(self, state):
        state.setdefault("_last", None)          # pickled when kernel and method were attributes
        self.__dict__.update(state)

    @property
    def kernel(self):
        """What the last call ran: the config string, "dense" or "numpy" (None before any)."""
        return None if self._last is None else self._last.kernel

    @property
    def method(self):
        """The method of the last call: "sparse", "dense" or "numpy" (None before any)."""
        return None if self._last is None else self._last.method

    def activate(self, Y):
        """The activation of the last `matmul` output `Y` (rows contiguous), in place, unless the
        kernel already applied it (ours do; numpy's matmul does not); GELU runs on the layer's
        threads."""
        if self.activation != "gelu" or self.method != "numpy":
            return Y
        return gelu_(Y, self.threads)

    def _numpy_matmul(self, X, out):
        if X.shape[0] != self.in_features or X.dtype != np.float32:
            raise ModelError(f"{self.name}: X must be float32 with {self.in_features} rows, "
                             f"got {X.dtype} of shape {X.shape}")
        if out is None:
            out = np.empty((self.out_features, X.shape[1]), dtype=np.float32)
        with blas_threads(self.threads):
            np.matmul(self._dense, X, out=out)
        if self._bias_column is not None:
            np.add(out, self._bias_column, out=out)
        return out

    def dense_weight(self):
        """(W, b) as given (pruned, without `scale`), float32."""
        W = self.A.to_dense()
        b = self.bias
        if self.scale != 1:
            W, b = W / np.float32(self.scale), None if b is None else b / np.float32(self.scale)
        return W, b

    def as_dense(self):
        """The same layer (same pruned weights) running numpy's dense matmul."""
        W, b = self.dense_weight()
        return SparseLinear(W, b, block=self.block, scale=self.scale, activation=self.activation,
                            config="numpy", threads=self.threads, name=self.name)

    def as_float32(self):
        """The same layer on the float32 sparse kernels (an int8 layer's dequantized weights),
        its kernel chosen as this layer's is (tuned table or heuristic)."""
        W, b = self.dense_weight()
        return SparseLinear(W, b, block=self.block, scale=self.scale, activation=self.activation,
                            config=self._config if self._config in ("dense", "numpy") else None, tuned=self.tuned,
                            threads=self.threads, name=self.name)

    def __repr__(self):
        act = f", {self.activation}" if self.activation else ""
        act += ", int8" if self.dtype == "int8" else ""
        return (f"<SparseLinear {self.name} {self.out_features}x{self.in_features}, block "
                f"{self.block[0]}x{self.block[1]}, sparsity {self.sparsity:.3f}{act}>")


def detect_block(weight, candidates=SUPPORTED_BLOCKS, tolerance=0.01):
    """(block, sparsity) that describe the zeros of an already pruned `weight`.

    A block shape fits when the blocks it would store are (almost) all nonzero entries; the
    largest fitting block wins. Returns (None, sparsity) for a dense matrix (< 1% zeros).
    """
    weight = np.asarray(weight)
    nonzero = weight != 0
    density = nonzero.mean() if weight.size else 1.0
    if density > 0.99:
        return None, 1.0 - density
    best = None
    for block in candidates:
        br, bc = block
        M, K = weight.shape
        Mb, Kb = -(-M // br), -(-K // bc)
        padded = np.zeros((Mb * br, Kb * bc), dtype=bool)
        padded[:M, :K] = nonzero
        stored = padded.reshape(Mb, br, Kb, bc).any(axis=(1, 3)).sum() * br * bc
        if stored <= nonzero.sum() * (1 + tolerance) and (best is None or br * bc > best[0][0] * best[0][1]):
            best = (block, 1.0 - stored / (Mb * br * Kb * bc))
    return best or ((1, 1), 1.0 - density)
