"""What `sparsebench info` reports: the machine, the build and the kernels it can run."""
import platform

import numpy as np

from . import __version__
from ._buildinfo import BUILD
from .cpu import ISA_REQUIREMENTS, available_isas, cpu_features, cpu_model, isa_supported, kernel_module
from .cpu import openmp_threads


def collect():
    """A JSON-ready description of this machine and build."""
    variants = {}
    for isa in BUILD["isas"]:
        if isa_supported(isa):
            variants[isa] = ["%dx%d/nt%d" % (br, bc, nt) for br, bc, nt, _ in kernel_module(isa).VARIANTS]
        else:
            variants[isa] = "not runnable here (needs %s)" % ", ".join(ISA_REQUIREMENTS[isa])
    from .bench import blas_info

    return {"sparsebench": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "blas": blas_info(), "cpu": cpu_model(), "machine": platform.machine(),
            "cpu_features": list(cpu_features()), "isas_available": available_isas(),
            "openmp_threads": openmp_threads(), "build": BUILD, "variants": variants}


def format_info(info):
    lines = [f"sparsebench {info['sparsebench']} (Python {info['python']}, numpy {info['numpy']})",
             f"CPU:            {info['cpu']} ({info['machine']})",
             f"CPU features:   {' '.join(info['cpu_features']) or 'none of avx2/avx512'}",
             f"Kernels usable: {', '.join(info['isas_available'])} (first is the default)",
             f"OpenMP threads: {info['openmp_threads']}",
             f"BLAS (numpy):   {info['blas']}",
             f"Build target:   {info['build']['target']}; compiler {info['build']['compiler']}",
             f"Template hash:  {info['build']['template_hash']}"]
    for isa, flags in info["build"]["flags"].items():
        lines.append(f"  {isa:8} flags: {' '.join(flags)}")
    lines.append("Compiled variants (block/N-tile):")
    for isa, v in info["variants"].items():
        lines.append(f"  {isa:8} {v if isinstance(v, str) else ' '.join(v)}")
    return "\n".join(lines)
