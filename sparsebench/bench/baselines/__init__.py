"""Methods that compute Y = W @ X, each a small plug-in with a name (see base.Baseline).

`get(name)` returns the plug-in; `names()` lists them in the order tables show them.
"""
from ...errors import MethodUnavailable
from .base import Baseline, Problem
from . import dense, generic_csr, mkl, ours, scipy_sparse, torch_

_MODULES = (dense, ours, generic_csr, scipy_sparse, mkl, torch_)
_REGISTRY = {b.name: b for module in _MODULES for b in module.BASELINES}
#: the methods `compare` runs when none are named
DEFAULT_METHODS = ("dense", "scipy-csr", "generic-csr", "mkl", "torch", "sparsebench")


def names():
    return list(_REGISTRY)


def get(name):
    """The plug-in called `name`; a clear error listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(_REGISTRY)}") from None


def parse_methods(text):
    """'dense,mkl,...' or 'all' -> list of names (validated, duplicates dropped)."""
    wanted = names() if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    if not wanted:
        raise ValueError("no methods given; e.g. --methods dense,scipy-csr,sparsebench")
    for name in wanted:
        get(name)
    return list(dict.fromkeys(wanted))


__all__ = ["Baseline", "DEFAULT_METHODS", "MethodUnavailable", "Problem", "get", "names",
           "parse_methods"]
