"""What `sparsebench info` reports: the machine, the build and the kernels it can run."""
import platform

import numpy as np

from .. import __version__, fingerprint
from .._buildinfo import BUILD
from ..machine import cpu_identity, cpu_label
from ..cpu import INT8_ISA_REQUIREMENTS, ISA_REQUIREMENTS, available_isas, cpu_features, cpu_model
from ..cpu import isa_supported, kernel_module
from ..cpu import default_threads


def collect():
    """A JSON-ready description of this machine and build."""
    variants = {}
    for isa in BUILD["isas"]:
        if isa_supported(isa):
            variants[isa] = ["%dx%d/nt%d" % (br, bc, nt) for br, bc, nt, _ in kernel_module(isa).VARIANTS]
        else:
            variants[isa] = "not runnable here (needs %s)" % ", ".join(ISA_REQUIREMENTS[isa])
    int8_variants = {}
    for isa in BUILD["int8_isas"]:
        if isa_supported(isa, "int8"):
            int8_variants[isa] = ["%dx%d/nt%d" % v for v in kernel_module(isa, "int8").VARIANTS]
        else:
            int8_variants[isa] = "not runnable here (needs %s)" % ", ".join(INT8_ISA_REQUIREMENTS[isa])
    from ..bench.baselines.dense import blas_version

    from .. import BLAS_SPIN

    return {"sparsebench": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "blas": blas_version(), "blas_idle_spin": BLAS_SPIN,
            "cpu": cpu_model(), "machine": platform.machine(),
            "cpu_features": list(cpu_features()), "isas_available": available_isas(),
            "default_threads": default_threads(), "cpu_identity": cpu_identity(), "cpu_label": cpu_label(),
            "hardware_id": fingerprint.hardware_id(), "build_id": fingerprint.build_id(),
            "tune": BUILD.get("tune", "unrecorded"), "build": BUILD, "variants": variants,
            "int8_variants": int8_variants}


def format_info(info):
    lines = [f"sparsebench {info['sparsebench']} (Python {info['python']}, numpy {info['numpy']})",
             f"CPU:            {info['cpu']} ({info['machine']})",
             *_identity_lines(info),
             f"CPU features:   {' '.join(info['cpu_features']) or 'none of avx2/avx512'}",
             f"Kernels usable: {', '.join(info['isas_available'])} (first is the default)",
             f"Threads:        {info['default_threads']} (SPARSEBENCH_NUM_THREADS or OMP_NUM_THREADS to change)",
             f"BLAS (numpy):   {info['blas']}; idle workers: {info['blas_idle_spin']}",
             f"Build target:   {info['build']['target']}; compiler {info['build']['compiler']}; "
             f"-mtune resolved to {info['tune']}",
             f"Build id:       {info['build_id']}",
             "Kernel hashes:  " + ", ".join(f"{d} {h}" for d, h in info["build"]["kernel_hashes"].items())]
    for isa, flags in list(info["build"]["flags"].items()) + list(info["build"]["int8_flags"].items()):
        lines.append(f"  {isa:8} flags: {' '.join(flags)}")
    lines.append("Compiled variants (block/N-tile):")
    for isa, v in info["variants"].items():
        lines.append(f"  {isa:8} {v if isinstance(v, str) else ' '.join(v)}")
    lines.append("Compiled int8 variants (block/N-tile):")
    for isa, v in info["int8_variants"].items():
        lines.append(f"  {isa:8} {v if isinstance(v, str) else ' '.join(v)}")
    if not info["int8_variants"]:
        lines.append("  none (built on a CPU without AVX512-VNNI; SPARSEBENCH_TARGET=portable builds them)")
    return "\n".join(lines)


def _identity_lines(info):
    """The CPU identity lines of `sparsebench info`."""
    ident = info["cpu_identity"]
    caches = ", ".join(f"{name} {_size(size)}" for name, size in ident["caches"].items() if size) or "unknown"
    return [f"CPU kind:       {info['cpu_label']}; vendor {ident['vendor']}, uarch {ident['uarch']}, "
            f"family {ident['family']} model {ident['model']} stepping {ident['stepping']}",
            f"Caches:         {caches}",
            f"Cores/threads:  {ident['cores'] or 'unknown'} cores, {ident['threads']} logical CPUs",
            f"Hardware id:    {info['hardware_id']}"]


def _size(nbytes):
    """1024 -> '1 KiB', 33554432 -> '32 MiB'."""
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 and not nbytes % (1 << 20) else f"{nbytes >> 10} KiB"


def collect_peak(threads=None):
    """The measured peaks (sparsebench.peak.peak, cached) for `threads` (default: all cores)."""
    import dataclasses

    from ..peak import cache_path, peak

    measured = peak(threads or default_threads())
    return dict(dataclasses.asdict(measured), cache=cache_path())


def format_peak(p):
    """The peak lines of `sparsebench info --peak`."""
    def rates(fp32, int8):
        return f"fp32 {fp32:.1f} GFLOP/s" + (f", int8 {int8:.1f} GOP/s" if int8 is not None else ", int8 -")
    return "\n".join([
        f"Peak per core:  {rates(p['fp32_gflops_core'], p['int8_gops_core'])} ({p['isa']} probes)",
        f"{'Peak %d threads:' % p['threads']:16}{rates(p['fp32_gflops'], p['int8_gops'])}",
        f"Memory copy:    {p['copy_gbs']:.1f} GB/s (one thread, read + written)",
        f"Peak cache:     {p['cache']} (measured {_when(p['measured_at'])}; delete it to measure again)"])


def _when(timestamp):
    import datetime
    return datetime.datetime.fromtimestamp(timestamp).isoformat(sep=" ", timespec="seconds")
