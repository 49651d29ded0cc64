"""Build sparsebench: render the Tempita kernel templates, then compile one extension per ISA.

Environment:
  SPARSEBENCH_TARGET  native (default): build the ISA variants this build machine can run and tune
                      instruction scheduling for it (-mtune=native);
                      portable: build every variant (generic, avx2, avx512, and the int8
                      avx512vnni kernels) with generic tuning, for wheels that run anywhere.
  Both are safe on any CPU: each variant is compiled with an explicit instruction-set list (never
  -march=native) and sparsebench imports a variant only after checking the CPU has that list.
"""
import hashlib
import pprint
import os
import platform
import subprocess
import sys

import numpy
from Cython.Build import cythonize
from Cython.Tempita import Template
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(HERE, "kernels")
# fused encoder ops (LayerNorm, attention): a subfolder, so template_hash (the build id of the
# tuning records) covers only the SpMM kernels' sources
ENCODER = os.path.join(KERNELS, "encoder")
GENERATED = os.path.join(KERNELS, "_generated")
BANNER = "# DO NOT EDIT: generated from {src} by setup.py; edit the template instead.\n"

BLOCKS = [(1, 1), (1, 4), (4, 1), (4, 4), (8, 1), (16, 1)]
ISAS = {
    # name: (compiler flags, vector lanes, vector registers, N-tile widths in vectors)
    "generic": ([], 4, 16, (1, 2, 4, 8)),
    "avx2": (["-mavx2", "-mfma"], 8, 16, (1, 2, 3, 4, 6, 8)),
    "avx512": (["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma"],
               16, 32, (1, 2, 3, 4, 6, 8)),
}
# int8 kernels (kernels/spmm_int8.pyx.tp): u8 activations x s8 weights -> s32 with vpdpbusd
INT8_ISAS = {
    "avx512vnni": ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx512vnni",
                   "-mavx2", "-mfma"],
}
INT8_BLOCKS = [(4, 1), (4, 4), (1, 4)]
PREFETCH_PAD = 64
#: what the kernels of each dtype are rendered and compiled from (see kernel_hashes)
KERNEL_SOURCES = {"float32": ("spmm.pyx.tp", "simd.h", "pool.h"),
                  "int8": ("spmm_int8.pyx.tp", "vnni.h", "simd.h", "pool.h")}
#: headers compiled into the int8 module (attention_int8.h: its attention kernel, not the SpMM)
INT8_HEADERS = ("vnni.h", "simd.h", "pool.h", "attention_int8.h")
COMMON_FLAGS = ["-O3", "-pthread", "-fno-math-errno", "-Wno-unused-function", "-Wno-unreachable-code"]


def host_isas():
    """The ISA variants worth building for this machine (x86 Linux: from /proc/cpuinfo)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ["generic"]
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return list(ISAS)
    isas = ["generic"]
    if {"avx2", "fma"} <= flags:
        isas.append("avx2")
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags:
        isas.append("avx512")
        if "avx512_vnni" in flags:
            isas.append("avx512vnni")
    return isas


def render(template, out, **namespace):
    """Render a Tempita template to `out` unless `out` is newer than the template, the headers
    and this file."""
    headers = [os.path.join(KERNELS, n) for n in os.listdir(KERNELS) if n.endswith(".h")]
    deps = [template, __file__] + headers
    if os.path.exists(out) and os.path.getmtime(out) >= max(map(os.path.getmtime, deps)):
        return
    with open(template) as f:
        text = Template(f.read(), name=template).substitute(**namespace)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(BANNER.format(src=os.path.relpath(template, HERE)) + text)
    os.replace(tmp, out)


def kernel_hashes():
    """Per dtype, a hash of the sources its kernels are made of: it keys the tuning records, so a
    change to the int8 kernels does not orphan the float32 records, nor the other way round."""
    out = {}
    for dtype, names in KERNEL_SOURCES.items():
        h = hashlib.sha256()
        for name in names:
            h.update(name.encode())
            with open(os.path.join(KERNELS, name), "rb") as f:
                h.update(f.read())
        out[dtype] = h.hexdigest()[:16]
    return out


def compiler_version():
    cc = os.environ.get("CC", "cc").split()[0]
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "unknown"


def resolved_tune(tune_flags):
    """What the compiler's -mtune resolves to under `tune_flags` (-mtune=native: this CPU's kind,
    e.g. znver4), so a build on another CPU kind gets another build id; "unknown" if it cannot tell."""
    try:
        out = subprocess.run(os.environ.get("CC", "cc").split() + tune_flags + ["-Q", "--help=target"],
                             capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    for line in out.splitlines():
        name, _, value = line.strip().partition(" ")
        if name == "-mtune=" and value.strip():
            return value.strip()
    return "unknown"


def extensions():
    target = os.environ.get("SPARSEBENCH_TARGET", "native")
    if target not in ("native", "portable"):
        sys.exit(f"SPARSEBENCH_TARGET must be 'native' or 'portable', not {target!r}")
    wanted = host_isas() if target == "native" else list(ISAS) + list(INT8_ISAS)
    isas = [isa for isa in wanted if isa in ISAS]
    int8_isas = [isa for isa in wanted if isa in INT8_ISAS]
    tune = ["-mtune=native"] if target == "native" else []
    exts, flags_by_isa, int8_flags = [], {}, {}
    for isa in isas:
        isa_flags, vw, nregs, j_choices = ISAS[isa]
        pyx = os.path.join(GENERATED, f"spmm_{isa}.pyx")
        render(os.path.join(KERNELS, "spmm.pyx.tp"), pyx, isa=isa, VW=vw, NREGS=nregs,
               J_CHOICES=j_choices, BLOCKS=BLOCKS, PREFETCH_PAD=PREFETCH_PAD)
        flags = COMMON_FLAGS + isa_flags + tune
        flags_by_isa[isa] = flags
        exts.append(Extension(f"sparsebench._spmm_{isa}", [os.path.relpath(pyx, HERE)],
                              include_dirs=[KERNELS, numpy.get_include()],
                              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
                              extra_compile_args=flags, extra_link_args=["-pthread"],
                              depends=[os.path.join(KERNELS, n) for n in ("simd.h", "pool.h")]))
    for isa in int8_isas:
        pyx = os.path.join(GENERATED, f"spmm_int8_{isa}.pyx")
        render(os.path.join(KERNELS, "spmm_int8.pyx.tp"), pyx, isa=isa, BLOCKS=INT8_BLOCKS,
               PREFETCH_PAD=PREFETCH_PAD)
        flags = COMMON_FLAGS + INT8_ISAS[isa] + tune
        int8_flags[isa] = flags
        exts.append(Extension(f"sparsebench._spmm_int8_{isa}", [os.path.relpath(pyx, HERE)],
                              include_dirs=[KERNELS, numpy.get_include()],
                              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
                              extra_compile_args=flags, extra_link_args=["-pthread"],
                              depends=[os.path.join(KERNELS, n) for n in INT8_HEADERS]))
    encoder_sources = [os.path.join(ENCODER, n) for n in sorted(os.listdir(ENCODER)) if n.endswith(".h")]
    for isa in isas:
        pyx = os.path.join(GENERATED, f"encoder_{isa}.pyx")
        render(os.path.join(ENCODER, "encoder.pyx.tp"), pyx, isa=isa, VW=ISAS[isa][1])
        exts.append(Extension(f"sparsebench._encoder_{isa}", [os.path.relpath(pyx, HERE)],
                              include_dirs=[ENCODER, numpy.get_include()],
                              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
                              extra_compile_args=flags_by_isa[isa], extra_link_args=["-pthread"],
                              depends=encoder_sources + [os.path.join(KERNELS, n) for n in ("simd.h", "pool.h")]))
    exts.append(Extension("sparsebench._cpu", ["kernels/cpu.pyx"], include_dirs=[KERNELS],
                          extra_compile_args=["-O2"]))
    # baseline-ISA flags: the untuned reference must run everywhere
    exts.append(Extension("sparsebench._generic_csr", ["kernels/generic_csr.pyx"],
                          include_dirs=[KERNELS, numpy.get_include()],
                          define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
                          extra_compile_args=["-O3", "-pthread"], extra_link_args=["-pthread"]))
    buildinfo = {"target": target, "isas": isas, "flags": flags_by_isa, "encoder_isas": isas,
                 "int8_isas": int8_isas, "int8_flags": int8_flags,
                 "compiler": compiler_version(), "kernel_hashes": kernel_hashes(), "tune": resolved_tune(tune),
                 "prefetch_pad": PREFETCH_PAD, "blocks": BLOCKS, "int8_blocks": INT8_BLOCKS,
                 "python": platform.python_version(), "numpy_build": numpy.__version__}
    write_if_changed(os.path.join(HERE, "sparsebench", "_buildinfo.py"),
                     BANNER.format(src="setup.py") + f"BUILD = {pprint.pformat(buildinfo)}\n")
    return cythonize(exts, compiler_directives={"language_level": 3}, include_path=[KERNELS])


def write_if_changed(path, text):
    if os.path.exists(path) and open(path).read() == text:
        return
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class ParallelBuildExt(build_ext):
    """Compile the ISA modules in parallel (they are independent and each takes a while)."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1


setup(ext_modules=extensions(), cmdclass={"build_ext": ParallelBuildExt})
