"""Run-time CPU detection and the choice of compiled kernel module (ISA) to use.

Every ISA module is compiled with an explicit instruction-set list (see setup.py) and is
imported only after checking, via CPUID, that this CPU and OS support that list: a build
copied to an older CPU raises UnsupportedISAError or falls back, it never dies of SIGILL.
"""
import functools
import importlib
import os
import platform

from . import _cpu, _pool
from ._buildinfo import BUILD
from .errors import UnsupportedISAError

#: what each compiled module needs from the CPU, best first
ISA_REQUIREMENTS = {
    "avx512": ("avx512f", "avx512vl", "avx512bw", "avx512dq", "avx2", "fma"),
    "avx2": ("avx2", "fma"),
    "generic": (),
}
#: what each compiled int8 module (u8 x s8 dot products) needs from the CPU, best first
INT8_ISA_REQUIREMENTS = {
    "avx512vnni": ("avx512f", "avx512vl", "avx512bw", "avx512dq", "avx512vnni", "avx2", "fma"),
}
#: what each compiled encoder-op module needs, best first (avx512vnni: with int8 attention)
ENCODER_ISA_REQUIREMENTS = {**INT8_ISA_REQUIREMENTS, **ISA_REQUIREMENTS}
#: per dtype: requirements, the BUILD key listing compiled modules, module name prefix
_KERNELS = {"float32": (ISA_REQUIREMENTS, "isas", "_spmm_"),
            "int8": (INT8_ISA_REQUIREMENTS, "int8_isas", "_spmm_int8_")}
ENV_ISA = "SPARSEBENCH_ISA"
#: microseconds idle pool workers keep yielding before they sleep (default
#: sparsebench._pool.DEFAULT_SPIN_US), for every kernel module: they share one pool
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


def compiled_isas(dtype="float32"):
    """ISA modules this build contains for `dtype` (float32 or int8), best first."""
    requirements, key, _ = _KERNELS[dtype]
    return [isa for isa in requirements if isa in BUILD[key]]


def isa_supported(isa, dtype="float32"):
    return set(_KERNELS[dtype][0][isa]) <= set(cpu_features())


@functools.lru_cache(maxsize=None)
def available_isas(dtype="float32"):
    """Compiled ISA modules this CPU can run, best first. SPARSEBENCH_ISA restricts the float32
    choice; int8 has a single ISA (avx512vnni), so the list is empty on CPUs without VNNI."""
    usable = [isa for isa in compiled_isas(dtype) if isa_supported(isa, dtype)]
    forced = os.environ.get(ENV_ISA)
    if forced and dtype == "float32":
        kernel_module(forced)  # raises with the reason if it cannot be used
        return [forced]
    return usable


def best_isa(dtype="float32"):
    """The first of available_isas(dtype); UnsupportedISAError saying why if there is none."""
    isas = available_isas(dtype)
    if not isas:
        for isa in _KERNELS[dtype][0]:
            kernel_module(isa, dtype)   # raises with the reason
    return isas[0]


@functools.lru_cache(maxsize=None)
def kernel_module(isa, dtype="float32"):
    """Import the compiled `dtype` kernels for `isa`, after checking the CPU can execute them."""
    if dtype not in _KERNELS:
        raise UnsupportedISAError(f"unknown dtype {dtype!r}; choose float32 or int8")
    requirements, key, prefix = _KERNELS[dtype]
    kind = "" if dtype == "float32" else "int8 "
    if isa not in requirements:
        raise UnsupportedISAError(
            f"unknown {kind}instruction set {isa!r}; choose one of {', '.join(requirements)}")
    if isa not in BUILD[key]:
        raise UnsupportedISAError(
            f"this build of sparsebench has no {kind}{isa!r} kernels (built: "
            f"{', '.join(BUILD[key]) or 'none'}); rebuild with SPARSEBENCH_TARGET=portable to "
            "include every variant")
    missing = sorted(set(requirements[isa]) - set(cpu_features()))
    if missing:
        usable = [i for i in compiled_isas(dtype) if isa_supported(i, dtype)]
        hint = (f"use one of: {', '.join(usable)}" if usable else
                "quantized matrices need a CPU with AVX512-VNNI; use a float32 BSRMatrix here")
        raise UnsupportedISAError(
            f"the {kind}{isa!r} kernels need {', '.join(missing)}, which this CPU ({cpu_model()}) "
            f"lacks; {hint}")
    _apply_spin_setting()
    return importlib.import_module(f"sparsebench.{prefix}{isa}")


def _apply_spin_setting():
    """SPARSEBENCH_SPIN_US, if set, for the thread pool every kernel module shares."""
    spin = os.environ.get(ENV_SPIN_US)
    if spin:
        try:
            _pool.set_spin_us(int(spin))
        except ValueError:
            raise ValueError(f"{ENV_SPIN_US}={spin!r} must be a whole number of microseconds") from None


@functools.lru_cache(maxsize=None)
def encoder_isas():
    """Compiled encoder-op modules this CPU can run, best first: avx512vnni (the only one with
    int8 attention), avx512, avx2, generic. SPARSEBENCH_ISA, if set, is the only choice."""
    built = BUILD.get("encoder_isas", [])
    forced = os.environ.get(ENV_ISA)
    if forced:
        return [forced] if forced in built else []
    return [isa for isa in ENCODER_ISA_REQUIREMENTS if isa in built
            and set(ENCODER_ISA_REQUIREMENTS[isa]) <= set(cpu_features())]


@functools.lru_cache(maxsize=None)
def encoder_module(isa=None):
    """Import the compiled encoder ops (LayerNorm, GELU, attention; int8 attention too in the
    avx512vnni module) for `isa`, by default the first of encoder_isas(). They are built with the
    same flags and CPU check as the SpMM kernels of their ISA."""
    if isa is None:
        usable = encoder_isas()
        if not usable:
            raise UnsupportedISAError(
                f"this build of sparsebench has no encoder ops for {', '.join(available_isas())}; "
                "rebuild it (python setup.py build_ext --inplace, or pip install -e .)")
        isa = usable[0]
    return _isa_companion(isa, "encoder_isas", "_encoder_", "encoder ops")


def _isa_companion(isa, key, prefix, what):
    """Import sparsebench.<prefix><isa>, a module built with the flags of `isa`'s kernels (listed
    in BUILD[key]), after the same CPU check as those kernels."""
    # raises with the reason if this CPU or build cannot run `isa`
    kernel_module(isa, "int8" if isa in INT8_ISA_REQUIREMENTS else "float32")
    built = BUILD.get(key, [])
    if isa not in built:
        raise UnsupportedISAError(f"this build of sparsebench has no {isa!r} {what} (built: "
                                  f"{', '.join(built) or 'none'}); rebuild it")
    return importlib.import_module(f"sparsebench.{prefix}{isa}")


@functools.lru_cache(maxsize=None)
def peak_module():
    """The peak probes (sparsebench._peak_<isa>) of the best ISA this CPU runs, SPARSEBENCH_ISA
    or not: the machine's peak is its best instruction set's."""
    built = BUILD.get("peak_isas", [])
    for isa in ENCODER_ISA_REQUIREMENTS:
        if isa in built and set(ENCODER_ISA_REQUIREMENTS[isa]) <= set(cpu_features()):
            return _isa_companion(isa, "peak_isas", "_peak_", "peak probes")
    raise UnsupportedISAError("this build of sparsebench has no peak probes this CPU can run "
                              f"(built: {', '.join(built) or 'none'}); rebuild it")


def int8_attention():
    """The int8 attention kernel (qkv, ctx, heads, batch, mask, threads) of the avx512vnni
    encoder module; UnsupportedISAError, saying why, where it cannot run."""
    return encoder_module("avx512vnni").attention_int8


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
