"""Hardware and build fingerprints: results from another machine or build are not silently reused."""
import hashlib
import json

from . import __version__
from ._buildinfo import BUILD
from .config import FLOAT32_CONFIG_RULES
from .cpu import available_isas
from .machine import cpu_identity


def hardware():
    """The CPU's identity (sparsebench.machine.cpu_identity: vendor, family, model, stepping,
    uarch, caches, cores, threads, isa) and its model name as "cpu"."""
    identity = cpu_identity()
    return {"cpu": identity["brand"], **identity}


def build(dtype=None):
    """sparsebench version, kernel source hashes, compiler, what -mtune resolved to at build time,
    the flags of the modules that can run and (float32) the config rules version; with a dtype,
    only what that dtype's kernels are made of (what build_id(dtype) keys)."""
    dtypes = [dtype] if dtype else list(BUILD["kernel_hashes"])
    flags = {}
    for d in dtypes:
        key, prefix = ("flags", "") if d == "float32" else (d + "_flags", d + "-")
        flags.update({prefix + isa: BUILD[key][isa] for isa in available_isas(d)})
    out = {"version": __version__, "kernel_hashes": {d: BUILD["kernel_hashes"][d] for d in dtypes},
           "compiler": BUILD["compiler"], "tune": BUILD.get("tune", "unrecorded"), "flags": flags}
    if "float32" in dtypes:
        out["config_rules"] = FLOAT32_CONFIG_RULES
    return out


def digest(obj):
    """A short stable hash of a JSON-ready object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def hardware_id():
    """Id of this CPU kind (a hash of hardware()): tuning records and results carry it."""
    return digest(hardware())


def build_id(dtype=None):
    """Id of the build of one dtype's kernels (tuning records carry it), or of all of them."""
    return digest(build(dtype))
