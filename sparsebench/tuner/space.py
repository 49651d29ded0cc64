"""The search space of one tuning task, taken from the kernels themselves.

`config.kernel_configs` knows which compiled variants exist and which knob values are valid
for a matrix and N (the restrictions); this module views that set as a grid of parameters,
Kernel Tuner style, so strategies can walk it: values per parameter, membership, and the
configs that differ from a given one in a single parameter.
"""
import dataclasses

from ..config import KernelConfig, default_config, kernel_configs

#: the parameters a strategy may change (block and threads are fixed by the task)
TUNABLE = ("isa", "n_tile", "n_panel", "k_slice", "m_tile", "prefetch")


class SearchSpace:
    """Valid KernelConfigs for matrix A times a K x n X, with `threads` threads."""

    def __init__(self, A, n, threads, isas=None):
        self.configs = kernel_configs(A, n, threads=threads, isas=isas)
        self._valid = set(self.configs)
        self.params = {p: sorted({getattr(c, p) for c in self.configs}, key=_order) for p in TUNABLE}
        dflt = default_config(A, n, threads)
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
