"""The search space of one tuning task, taken from the kernels themselves.

`kernel_configs` knows which compiled variants exist and which knob values are valid for a
matrix and N (the restrictions); `SearchSpace` views that set as a grid of parameters, Kernel
Tuner style, so strategies can walk it: values per parameter, membership, and the configs that
differ from a given one in a single parameter.
"""
import dataclasses

from ..config import KernelConfig
from ..cpu import available_isas, best_isa, default_threads, kernel_module
from ..dispatch import default_config
from ..quant import QuantizedBSRMatrix
from ..spmm import even_panel, panel_tasks, reads_tokens

#: cache panel widths (columns of X kept hot while every block row is swept); 0 = all of N
PANELS = (0, 128, 256, 512)
#: rows of X per K slice (partial sums go through Y so a slice of X stays in cache); 0 = all of K
K_SLICES = (0, 64, 128, 256, 512)
#: block rows per dynamically scheduled task; 0 = one nonzero-balanced range per thread
M_TILES = (0, 1, 4, 16)
#: software prefetch distance in blocks; 0 = off
PREFETCH = (0, 4, 16)

#: the parameters a strategy may change (block and threads are fixed by the task)
TUNABLE = ("isa", "n_tile", "n_panel", "k_slice", "m_tile", "prefetch")


def kernel_configs(A, n, threads=None, isas=None, layout="features"):
    """Every valid KernelConfig for matrix A times a K x n X: the autotuner's search space.

    Tiles much wider than n are left out (they would only run their masked tail path),
    as are cache panels that would not split N. Token-major, n_panel is also the task
    (panel_tasks): its panels (token_panels) take no task size; the direct kernel
    (spmm.reads_tokens) takes only a task size.
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
            for k_slice in K_SLICES:
                if k_slice and k_slice >= A.shape[1]:
                    continue
                panels = [p for p in PANELS if not p or (p % nt == 0 and p < n)]
                probe = KernelConfig(A.block, isa, nt, nt, k_slice, 0, 0, threads)
                if layout == "tokens" and panel_tasks(A, probe):
                    panels = [0] + token_panels(nt, n, threads)
                for n_panel in panels:
                    for m_tile in M_TILES:
                        for prefetch in PREFETCH:
                            config = KernelConfig(A.block, isa, nt, n_panel, k_slice, m_tile, prefetch, threads)
                            if layout == "tokens" and (
                                    m_tile and panel_tasks(A, config)
                                    or (n_panel or prefetch) and reads_tokens(A, config)):
                                continue
                            out.append(config)
    return out


def token_panels(n_tile, n, threads):
    """Token-major panel widths (each a task, panel_tasks) worth trying for N = n: one tile, two
    and four, N split evenly over the threads (spmm.even_panel), and PANELS; multiples of
    n_tile up to the even split (wider ones run as it: spmm.panel_width); none if N is under a
    tile a thread."""
    even = even_panel(n_tile, n, threads)
    widths = {n_tile, 2 * n_tile, 4 * n_tile, even} | set(PANELS)
    return sorted(p for p in widths if 0 < p <= even and p % n_tile == 0)


def _int8_configs(A, n, threads, isas):
    """kernel_configs for a QuantizedBSRMatrix: N-tile, m_tile, prefetch (no panels or slices)."""
    out = []
    for isa in isas or [best_isa("int8")]:
        module = kernel_module(isa, "int8")
        widths = sorted(nt for br, bc, nt in module.VARIANTS if (br, bc) == A.block)
        # up to the narrowest tile that covers n (wider ones only add empty columns)
        widest = min([w for w in widths if w >= n] or widths[-1:])
        for nt in widths:
            if nt > widest:
                continue
            for m_tile in M_TILES:
                for prefetch in PREFETCH:
                    out.append(KernelConfig(A.block, isa, nt, 0, 0, m_tile, prefetch, threads, "int8"))
    return out


class SearchSpace:
    """Valid KernelConfigs for matrix A times a K x n X, with `threads` threads."""

    def __init__(self, A, n, threads, isas=None, layout="features"):
        self.configs = kernel_configs(A, n, threads=threads, isas=isas, layout=layout)
        self._valid = set(self.configs)
        self.params = {p: sorted({getattr(c, p) for c in self.configs}, key=_order) for p in TUNABLE}
        dflt = default_config(A, n, threads, layout)
        # the heuristic may pick a single thread for tiny work; the space is for `threads`
        self.default = dflt if dflt in self._valid else min(
            self.configs, key=lambda c: sum(getattr(c, p) != getattr(dflt, p) for p in TUNABLE))

    def __len__(self):
        return len(self.configs)

    def __contains__(self, config):
        return config in self._valid

    def neighbours(self, config, param):
        """Valid configs equal to `config` except for `param` (every other value of it)."""
        others = (self.replace(config, **{param: v}) for v in self.params[param] if v != getattr(config, param))
        return [c for c in others if c is not None]

    def replace(self, config, **changes):
        """`config` with `changes` applied, or None if that is not a valid config."""
        c = dataclasses.replace(config, **changes)
        return c if c in self._valid else None

    def closest(self, config):
        """The valid config sharing the most parameters with `config` (e.g. from another shape)."""
        if config in self._valid:
            return config
        if not isinstance(config, KernelConfig) or config.block != self.configs[0].block:
            return self.default
        return min(self.configs, key=lambda c: (sum(getattr(c, p) != getattr(config, p) for p in TUNABLE),
                                                c != self.default))


def _order(v):
    return (0, v, "") if isinstance(v, int) else (1, 0, str(v))
