"""The baseline plug-in interface shared by compare, autotune and the BERT runner."""
import dataclasses
from typing import Callable, Optional

import numpy as np

from ...bsr import BSRMatrix


@dataclasses.dataclass
class Problem:
    """One GEMM Y = W @ X with W block-sparse; every method gets the same arrays. With dtype
    "int8" only our `sparsebench` method computes in int8; the others are the float32 methods
    a user would otherwise run."""

    W: np.ndarray                 # pruned weights, dense float32 (M x K), C order
    A: BSRMatrix                  # the same weights in block-sparse rows
    X: np.ndarray                 # activations float32 (K x N), rows laid out as arrays.activations
    sparsity: float
    threads: int
    config: object = None         # `sparsebench` method: KernelConfig, "dense" or None (default)
    dtype: str = "float32"        # the data type the `sparsebench` method computes in
    Aq: object = None             # int8: the weights as a QuantizedBSRMatrix
    fp32_config: object = None    # `sparsebench-fp32` method (float32 kernels whatever the dtype)
    tokens_config: object = None  # `sparsebench-tokens` method (tuned token-major, else as `config`)

    def contiguous_X(self):
        """X as one C-contiguous block, for methods that take no row stride (where X's rows are
        padded apart, a copy made once in prepare, outside the timing)."""
        return np.ascontiguousarray(self.X, dtype=np.float32)

    @property
    def block(self):
        return self.A.block

    @property
    def shape(self):
        return self.W.shape[0], self.W.shape[1], self.X.shape[1]


class Baseline:
    """A named way to compute W @ X.

    Subclasses set `name`, `description` and, for optional packages, `install_hint`, and
    implement `prepare`: all one-time work (format conversion, MKL's inspection, output
    buffers, thread settings) happens there, and the returned zero-argument callable does
    one multiply and returns Y (float32, M x N; it may reuse one buffer between calls).
    `prepare` raises MethodUnavailable with a one-line reason when it cannot run.
    """

    name = "?"
    description = ""
    install_hint: Optional[str] = None

    def dtype(self, problem: Problem) -> str:
        """The data type this method computes `problem` in (its result's correctness gate)."""
        return "float32"

    def version(self) -> str:
        """Library and version that does the work, for the results' metadata."""
        return ""

    def prepare(self, problem: Problem) -> Callable[[], np.ndarray]:
        raise NotImplementedError

    def __repr__(self):
        return f"<method {self.name}>"
