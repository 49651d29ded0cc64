"""Hardware and build fingerprints: results from another machine or build are not silently reused."""
import hashlib
import json
import os

from . import __version__
from ._buildinfo import BUILD
from .cpu import available_isas, cpu_features, cpu_model


def hardware():
    """CPU model, relevant instruction sets and core count."""
    return {"cpu": cpu_model(), "isa": list(cpu_features()),
            "cores": os.cpu_count() or 1}


def build(dtype=None):
    """sparsebench version, kernel source hashes, compiler and the flags of the modules that can
    run; with a dtype, only what that dtype's kernels are made of (what build_id(dtype) keys)."""
    dtypes = [dtype] if dtype else list(BUILD["kernel_hashes"])
    flags = {}
    for d in dtypes:
        key, prefix = ("flags", "") if d == "float32" else (d + "_flags", d + "-")
        flags.update({prefix + isa: BUILD[key][isa] for isa in available_isas(d)})
    return {"version": __version__, "kernel_hashes": {d: BUILD["kernel_hashes"][d] for d in dtypes},
            "compiler": BUILD["compiler"], "flags": flags}


def digest(obj):
    """A short stable hash of a JSON-ready object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def hardware_id():
    return digest(hardware())


def build_id(dtype=None):
    """Id of the build of one dtype's kernels (tuning records carry it), or of all of them."""
    return digest(build(dtype))
