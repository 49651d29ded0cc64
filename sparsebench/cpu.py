"""Run-time CPU detection and the choice of compiled kernel module (ISA) to use.

Every ISA module is compiled with an explicit instruction-set list (see setup.py) and is
imported only after checking, via CPUID, that this CPU and OS support that list: a build
copied to an older CPU raises UnsupportedISAError or falls back, it never dies of SIGILL.
"""
import functools
import importlib
import os
import platform

from . import _cpu
from ._buildinfo import BUILD
from .errors import UnsupportedISAError

#: what each compiled module needs from the CPU, best first
ISA_REQUIREMENTS = {
    "avx512": ("avx512f", "avx512vl", "avx512bw", "avx512dq", "avx2", "fma"),
    "avx2": ("avx2", "fma"),
    "generic": (),
}
ENV_ISA = "SPARSEBENCH_ISA"
#: microseconds idle kernel threads keep yielding before they sleep (default 2000)
ENV_SPIN_US = "SPARSEBENCH_SPIN_US"


@functools.lru_cache(maxsize=None)
def cpu_features():
    """Instruction-set extensions of this CPU that sparsebench cares about."""
    return _cpu.cpu_features()


@functools.lru_cache(maxsize=None)
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compiled_isas():
    """ISA modules this build contains, best first."""
    return [isa for isa in ISA_REQUIREMENTS if isa in BUILD["isas"]]


def isa_supported(isa):
    return set(ISA_REQUIREMENTS[isa]) <= set(cpu_features())


@functools.lru_cache(maxsize=None)
def available_isas():
    """Compiled ISA modules this CPU can run, best first (SPARSEBENCH_ISA restricts the choice)."""
    usable = [isa for isa in compiled_isas() if isa_supported(isa)]
    forced = os.environ.get(ENV_ISA)
    if forced:
        kernel_module(forced)  # raises with the reason if it cannot be used
        return [forced]
    return usable


def best_isa():
    return available_isas()[0]


@functools.lru_cache(maxsize=None)
def kernel_module(isa):
    """Import the compiled kernels for `isa`, after checking the CPU can execute them."""
    if isa not in ISA_REQUIREMENTS:
        raise UnsupportedISAError(
            f"unknown instruction set {isa!r}; choose one of {', '.join(ISA_REQUIREMENTS)}")
    if isa not in BUILD["isas"]:
        raise UnsupportedISAError(
            f"this build of sparsebench has no {isa!r} kernels (built: {', '.join(BUILD['isas'])}); "
            "rebuild with SPARSEBENCH_TARGET=portable to include every variant")
    missing = sorted(set(ISA_REQUIREMENTS[isa]) - set(cpu_features()))
    if missing:
        raise UnsupportedISAError(
            f"the {isa!r} kernels need {', '.join(missing)}, which this CPU ({cpu_model()}) lacks; "
            f"use one of: {', '.join(i for i in compiled_isas() if isa_supported(i))}")
    module = importlib.import_module(f"sparsebench._spmm_{isa}")
    spin = os.environ.get(ENV_SPIN_US)
    if spin:
        try:
            module.set_spin_us(int(spin))
        except ValueError:
            raise ValueError(f"{ENV_SPIN_US}={spin!r} must be a whole number of microseconds") from None
    return module


ENV_THREADS = "SPARSEBENCH_NUM_THREADS"


def default_threads():
    """Threads a kernel uses by default: SPARSEBENCH_NUM_THREADS, else OMP_NUM_THREADS, else the
    CPUs this process may run on."""
    for var in (ENV_THREADS, "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").split(",")[0].strip()
        if value:
            try:
                if int(value) >= 1:
                    return int(value)
            except ValueError:
                pass
            raise ValueError(f"{var}={os.environ[var]!r} must be a positive integer")
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1
