"""sparsebench: autotuned block-sparse x dense matrix multiply for pruned Transformers on CPUs."""
import os as _os
import sys as _sys

__version__ = "0.1.0"

# numpy's OpenBLAS keeps its idle threads spinning (not yielding) for ~0.1 s after each call,
# which starves our kernel threads on small machines: measured on 2 cores, our 2-thread kernel
# ran at 1-thread speed right after any numpy matmul. OpenBLAS reads this setting only when
# numpy loads, so it takes effect when sparsebench is imported first (as the CLI does).
BLAS_IDLE_SPIN_TAMED = "numpy" not in _sys.modules or "OPENBLAS_THREAD_TIMEOUT" in _os.environ
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .arrays import empty  # noqa: E402
from .blocks import SUPPORTED_BLOCKS  # noqa: E402
from .bsr import BSRMatrix  # noqa: E402
from .config import KernelConfig  # noqa: E402
from .dispatch import default_config  # noqa: E402
from .errors import ConfigError, SparsebenchError, UnsupportedISAError  # noqa: E402
from .prune import prune  # noqa: E402
from .quant import QuantizedActivations, QuantizedBSRMatrix, quantize_activations  # noqa: E402
from .spmm import spmm  # noqa: E402
from .tune.apply import ForeignTunedWarning, TunedFallbackWarning, load_tuned  # noqa: E402
from .tune.space import kernel_configs  # noqa: E402

__all__ = ["BSRMatrix", "KernelConfig", "ConfigError", "QuantizedActivations", "QuantizedBSRMatrix",
           "SparsebenchError", "SUPPORTED_BLOCKS", "UnsupportedISAError", "default_config",
           "empty", "kernel_configs", "load_tuned", "prune", "quantize_activations", "spmm",
           "TunedFallbackWarning", "ForeignTunedWarning"]
