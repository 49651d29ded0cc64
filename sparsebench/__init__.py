"""sparsebench: autotuned block-sparse x dense matrix multiply for pruned Transformers on CPUs."""
import os as _os

__version__ = "0.1.0"

try:    # what setup.py builds: the build's record and the compiled modules
    from . import _buildinfo, _cpu  # noqa: E402, F401
except ImportError as _e:
    raise ImportError(
        f"sparsebench at {_os.path.dirname(__file__)} is not built: its compiled modules are missing. Run "
        "from a clone's folder, Python imports that source tree before an installed sparsebench: run from "
        "another folder, or build it in place (pip install -e .)") from _e

# numpy's OpenBLAS keeps its idle threads polling for ~0.1 s after each call, on the cores our
# kernels need (see blas_spin): set its timeout before numpy loads, or restart its pool below
from . import blas_spin as _blas_spin  # noqa: E402

_NUMPY_FIRST = _blas_spin.before_numpy()

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

#: what keeps OpenBLAS's idle workers off our cores in this process (sparsebench info shows it)
BLAS_SPIN = (_blas_spin.restart_loaded_openblas() if _NUMPY_FIRST else
             f"{_blas_spin.VAR}={_os.environ.get(_blas_spin.VAR)} before numpy loaded")

__all__ = ["BSRMatrix", "KernelConfig", "ConfigError", "QuantizedActivations", "QuantizedBSRMatrix",
           "SparsebenchError", "SUPPORTED_BLOCKS", "UnsupportedISAError", "default_config",
           "empty", "kernel_configs", "load_tuned", "prune", "quantize_activations", "spmm",
           "TunedFallbackWarning", "ForeignTunedWarning"]
