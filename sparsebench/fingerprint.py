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


def build():
    """sparsebench version, kernel template hash, compiler and flags of the modules that can run."""
    flags = {isa: BUILD["flags"][isa] for isa in available_isas()}
    flags.update({"int8-" + isa: BUILD["int8_flags"][isa] for isa in available_isas("int8")})
    return {"version": __version__, "template_hash": BUILD["template_hash"],
            "compiler": BUILD["compiler"], "flags": flags}


def digest(obj):
    """A short stable hash of a JSON-ready object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def hardware_id():
    return digest(hardware())


def build_id():
    return digest(build())
