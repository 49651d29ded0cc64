"""Kernel configurations: what can be tuned, what is valid for a matrix, and the default choice."""
import dataclasses
import json

from .cpu import available_isas, best_isa, kernel_module, default_threads
from .errors import ConfigError
from .quant import QuantizedBSRMatrix

#: cache panel widths (columns of X kept hot while every block row is swept); 0 = all of N
PANELS = (0, 128, 256, 512)
#: rows of X per K slice (partial sums go through Y so a slice of X stays in cache); 0 = all of K
K_SLICES = (0, 64, 128, 256, 512)
#: block rows per dynamically scheduled task; 0 = one nonzero-balanced range per thread
M_TILES = (0, 1, 4, 16)
#: software prefetch distance in blocks; 0 = off
PREFETCH = (0, 4, 16)
#: below this many multiply-adds a call runs on one thread (waking a team costs more)
SERIAL_WORK = 1 << 17
#: X above this many bytes no longer fits the L2 of the machines we target
L2_PANEL_BYTES = 512 * 1024
#: the int8 kernels run about 3x the multiply-adds per second: a higher bar for threads
SERIAL_WORK_INT8 = 1 << 19


@dataclasses.dataclass(frozen=True, order=True)
class KernelConfig:
    """One compiled kernel variant plus its run-time knobs. Immutable, hashable, JSON-ready."""

    block: tuple            # (rows, cols) of W per block; must match the matrix
    isa: str                # compiled module: avx512, avx2 or generic
    n_tile: int             # register tile width in columns of X (a compile-time constant)
    n_panel: int = 0        # columns of X per cache panel, a multiple of n_tile; 0 = whole N
    k_slice: int = 0        # rows of X per K slice, a multiple of the block's columns; 0 = whole K
    m_tile: int = 0         # block rows per task (dynamic schedule); 0 = static, balanced by nnz
    prefetch: int = 0       # software prefetch distance in blocks (int8: groups); 0 = off
    threads: int = 1        # OpenMP threads
    dtype: str = "float32"  # float32 (BSRMatrix) or int8 (QuantizedBSRMatrix) kernels

    def __post_init__(self):
        object.__setattr__(self, "block", tuple(int(b) for b in self.block))

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


def variant_id(config):
    """(kernel module, variant id) of a config's compiled variant, or ConfigError saying why not."""
    # UnsupportedISAError (a ConfigError) if it cannot run
    module = kernel_module(config.isa, config.dtype)
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


def kernel_configs(A, n, threads=None, isas=None):
    """Every valid KernelConfig for matrix A times a K x n X: the autotuner's search space.

    Tiles much wider than n are left out (they would only run their masked tail path),
    as are panels that would not split N.
    """
    threads = threads or default_threads()
    if isinstance(A, QuantizedBSRMatrix):
        return _int8_configs(A, n, threads, isas)
    out = []
    for isa in isas or available_isas():
        module = kernel_module(isa)
        vw = module.VECTOR_WIDTH
        widest = max(vw, -(-n // vw) * vw)
        for br, bc, nt, _ in module.VARIANTS:
            if (br, bc) != A.block or nt > widest:
                continue
            for n_panel in PANELS:
                if n_panel and (n_panel % nt or n_panel >= n):
                    continue
                for k_slice in K_SLICES:
                    if k_slice and k_slice >= A.shape[1]:
                        continue
                    for m_tile in M_TILES:
                        for prefetch in PREFETCH:
                            out.append(KernelConfig(A.block, isa, nt, n_panel, k_slice, m_tile,
                                                    prefetch, threads))
    return out


def _int8_configs(A, n, threads, isas):
    """kernel_configs for a QuantizedBSRMatrix: N-tile, m_tile, prefetch (no panels or slices)."""
    out = []
    for isa in isas or [best_isa("int8")]:
        module = kernel_module(isa, "int8")
        widths = sorted(nt for br, bc, nt in module.VARIANTS if (br, bc) == A.block)
        widest = max(widths[0], -(-n // 16) * 16)
        for nt in widths:
            if nt > widest:
                continue
            for m_tile in M_TILES:
                for prefetch in PREFETCH:
                    out.append(KernelConfig(A.block, isa, nt, 0, 0, m_tile, prefetch, threads, "int8"))
    return out


def _int8_default(A, n, threads):
    isa = best_isa("int8")
    module = kernel_module(isa, "int8")
    widths = sorted(nt for br, bc, nt in module.VARIANTS if (br, bc) == A.block)
    n_tile = max([w for w in widths if w <= max(64, widths[0]) and w < n + 16] or widths[:1])
    work = A.nnz * max(n, 1)
    # prefetching the X rows of the group 4 ahead won by a few % on the BERT-Base shapes
    return KernelConfig(A.block, isa, n_tile, 0, 0, 0, 4,
                        threads if work >= SERIAL_WORK_INT8 else 1, "int8")


def default_config(A, n, threads=None):
    """The heuristic used when no tuned config is given: sensible, not optimal."""
    threads = threads or default_threads()
    if isinstance(A, QuantizedBSRMatrix):
        return _int8_default(A, n, threads)
    isa = available_isas()[0]
    module = kernel_module(isa)
    br, bc = A.block
    # prefer variants that hold a whole block row in registers (one pass over the blocks)
    widths = (sorted(nt for vbr, vbc, nt, rb in module.VARIANTS if (vbr, vbc) == A.block and rb == br)
              or sorted(nt for vbr, vbc, nt, rb in module.VARIANTS if (vbr, vbc) == A.block))
    # about 16-24 accumulators: wide tiles for short blocks, narrow for tall ones
    target = max(module.VECTOR_WIDTH, (24 // (br + 1)) * module.VECTOR_WIDTH)
    n_tile = max([w for w in widths if w <= target] or widths[:1])
    while n_tile > module.VECTOR_WIDTH and n_tile // 2 >= n and n_tile // 2 in widths:
        n_tile //= 2
    K = A.shape[1]
    # single-row blocks load one X vector per multiply-add: keep a K slice of X in cache;
    # the others prefetch the X rows of coming blocks, further ahead once X outgrows L2
    # (what won most often in results/bench-bert-spmm.csv)
    k_slice = 128 if br == 1 and K > 128 else 0
    prefetch = 0 if br == 1 else (16 if K * n * 4 > L2_PANEL_BYTES else 4)
    work = A.nnz * max(n, 1)
    return KernelConfig(A.block, isa, n_tile, 0, k_slice, 0, prefetch,
                        threads if work >= SERIAL_WORK else 1)
