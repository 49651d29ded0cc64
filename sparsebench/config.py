"""Kernel configurations: the config type and whether a config can run on a matrix."""
import dataclasses
import json
import operator

from .cpu import kernel_module
from .errors import ConfigError
from .quant import QuantizedBSRMatrix


#: what a float32 config runs, by version (bumped when spmm's choice of path for a config
#: changes): part of the float32 build id (fingerprint.build), so tuning records measured under
#: other rules are not reused. 2: token-major, an n_panel runs panel tasks of at most that many
#: tokens, narrowed to give every thread one (spmm.panel_tasks, spmm.panel_width); none, or no
#: width that does, transposes X whole first
FLOAT32_CONFIG_RULES = 2


@dataclasses.dataclass(frozen=True, order=True)
class KernelConfig:
    """One compiled kernel variant plus its run-time knobs. Immutable, hashable, JSON-ready."""

    block: tuple            # (rows, cols) of W per block; must match the matrix
    isa: str                # compiled module: avx512, avx2 or generic
    n_tile: int             # register tile width in columns of X (a compile-time constant)
    n_panel: int = 0        # columns of X per cache panel (token-major: per task), a multiple of n_tile; 0 = whole N
    k_slice: int = 0        # rows of X per K slice, a multiple of the block's columns; 0 = whole K
    m_tile: int = 0         # block rows per task (dynamic schedule); 0 = static, balanced by nnz
    prefetch: int = 0       # software prefetch distance in blocks (int8: groups); 0 = off
    threads: int = 1        # threads of the kernel pool (the caller included)
    dtype: str = "float32"  # float32 (BSRMatrix) or int8 (QuantizedBSRMatrix) kernels

    def __post_init__(self):
        try:
            block = tuple(operator.index(b) for b in self.block)     # whole numbers only: 4.9 is not 4
        except TypeError:
            raise ConfigError(f"block must be a pair of integers such as (4, 1), got {self.block!r}") from None
        object.__setattr__(self, "block", block)

    def to_dict(self):
        """Plain JSON data; dtype only when not float32 (so float32 records stay as they were)."""
        d = dataclasses.asdict(self)
        d["block"] = list(self.block)
        if self.dtype == "float32":
            del d["dtype"]
        return d

    @classmethod
    def from_dict(cls, d):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ConfigError(f"unknown KernelConfig fields {sorted(unknown)}; known: {sorted(fields)}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ConfigError(f"incomplete KernelConfig {d!r}: {e}") from None

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        return cls.from_dict(json.loads(text))

    def __str__(self):
        b = "%dx%d" % self.block
        dtype = "" if self.dtype == "float32" else self.dtype + "/"
        return (f"{dtype}{self.isa}/b{b}/nt{self.n_tile}/np{self.n_panel}/ks{self.k_slice}"
                f"/mt{self.m_tile}/pf{self.prefetch}/t{self.threads}")


def variant_id(config, dense=False):
    """(kernel module, variant id) of a config's compiled variant, or ConfigError saying why not.

    dense: the matrix stores every block (BSRMatrix.is_dense); its dense variant, where one is
    compiled, reads X without index loads."""
    # UnsupportedISAError (a ConfigError) if it cannot run
    module = kernel_module(config.isa, config.dtype)
    vid = getattr(module, "DENSE_VARIANTS", {}).get(config.block + (config.n_tile,)) if dense else None
    if vid is not None:
        return module, vid
    for vid, (br, bc, nt) in enumerate(v[:3] for v in module.VARIANTS):
        if (br, bc) == config.block and nt == config.n_tile:
            return module, vid
    widths = sorted(v[2] for v in module.VARIANTS if tuple(v[:2]) == config.block)
    raise ConfigError(f"no {config.isa} kernel with n_tile={config.n_tile} for block "
                      f"{config.block[0]}x{config.block[1]}; compiled widths: {widths}")


def check_config(config, A):
    """Raise ConfigError, with the reason, if `config` cannot run on matrix A."""
    if not isinstance(config, KernelConfig):
        raise TypeError(f"config must be a KernelConfig, got {type(config).__name__}")
    dtype = "int8" if isinstance(A, QuantizedBSRMatrix) else "float32"
    if config.dtype != dtype:
        raise ConfigError(f"config is for {config.dtype} kernels but the matrix is a "
                          f"{type(A).__name__} ({dtype})")
    if config.block != A.block:
        raise ConfigError(f"config is for {config.block[0]}x{config.block[1]} blocks but the matrix "
                          f"has {A.block[0]}x{A.block[1]} blocks")
    module, _ = variant_id(config)
    if dtype == "int8" and (config.n_panel or config.k_slice):
        raise ConfigError("int8 kernels take n_panel=0 and k_slice=0 (u8 X is a quarter of the "
                          f"float32 size and stays in cache), got {config.n_panel} and {config.k_slice}")
    if config.n_panel < 0 or config.n_panel % config.n_tile:
        raise ConfigError(f"n_panel={config.n_panel} must be 0 or a multiple of n_tile={config.n_tile}")
    if config.k_slice < 0 or config.k_slice % config.block[1]:
        raise ConfigError(f"k_slice={config.k_slice} must be 0 or a multiple of the block's "
                          f"{config.block[1]} columns")
    if config.m_tile < 0:
        raise ConfigError(f"m_tile={config.m_tile} must be >= 0")
    if not 0 <= config.prefetch <= module.PREFETCH_PAD:
        raise ConfigError(f"prefetch={config.prefetch} must be in [0, {module.PREFETCH_PAD}]")
    if not 1 <= config.threads <= 4096:
        raise ConfigError(f"threads={config.threads} must be in [1, 4096]")
