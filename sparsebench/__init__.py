"""sparsebench: autotuned block-sparse x dense matrix multiply for pruned Transformers on CPUs."""
from .blocks import SUPPORTED_BLOCKS
from .bsr import BSRMatrix
from .config import KernelConfig, default_config, kernel_configs
from .errors import ConfigError, SparsebenchError, UnsupportedISAError
from .prune import prune
from .spmm import spmm

__version__ = "0.1.0"
__all__ = ["BSRMatrix", "KernelConfig", "ConfigError", "SparsebenchError", "SUPPORTED_BLOCKS",
           "UnsupportedISAError", "default_config", "kernel_configs", "prune", "spmm"]
