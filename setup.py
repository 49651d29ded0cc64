"""Build sparsebench: render the Tempita kernel templates, then compile one extension per ISA.

Environment:
  SPARSEBENCH_TARGET  native (default): build the ISA variants this build machine can run and tune
                      instruction scheduling for it (-mtune=native);
                      portable: build every variant of kernels/variants.py (generic, avx2, avx512,
                      avx512vnni) with generic tuning, for wheels that run anywhere.
  Both are safe on any CPU: each variant is compiled with an explicit instruction-set list (never
  -march=native) and sparsebench imports a variant only after checking the CPU has that list.
"""
import hashlib
import importlib.util
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
ENCODER = os.path.join(KERNELS, "encoder")
GENERATED = os.path.join(KERNELS, "_generated")
BANNER = "# DO NOT EDIT: generated from {src} by setup.py; edit the template instead.\n"


def load_variants():
    """kernels/variants.py, the table of ISAs and kernel variants (loaded by path: it is not
    part of the installed package)."""
    spec = importlib.util.spec_from_file_location("sparsebench_variants", os.path.join(KERNELS, "variants.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


VARIANTS = load_variants()
#: shared by every kernel: the variant table, the pool (client and implementation), common.pxi
SHARED_SOURCES = ("variants.py", "pool.h", "pool_impl.h", "pool.pyx", "common.pxi", "simd.h")
#: what the kernels of each dtype are rendered and compiled from (see kernel_hashes)
KERNEL_SOURCES = {"float32": SHARED_SOURCES + ("spmm.pyx.tp", "transpose.h"),
                  "int8": SHARED_SOURCES + ("spmm_int8.pyx.tp", "vnni.h", "transpose.h")}
COMMON_FLAGS = ["-O3", "-pthread", "-fno-math-errno", "-Wno-unused-function", "-Wno-unreachable-code"]


def host_isas():
    """The ISA variants worth building for this machine (x86 Linux: from /proc/cpuinfo)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ["generic"]
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:
        return list(VARIANTS.ISAS)
    isas = ["generic"]
    if {"avx2", "fma"} <= flags:
        isas.append("avx2")
    if {"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags:
        isas.append("avx512")
        if "avx512_vnni" in flags:
            isas.append("avx512vnni")
    return isas


def render(template, out, **namespace):
    """Render a Tempita template to `out` unless `out` is newer than the template, the shared
    kernel sources and this file."""
    deps = [template, __file__] + [os.path.join(KERNELS, n) for n in SHARED_SOURCES]
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


def kernel_extension(name, pyx, flags, depends=()):
    """sparsebench.<name> from the Cython file `pyx`, compiled with `flags`."""
    return Extension(f"sparsebench.{name}", [os.path.relpath(pyx, HERE)],
                     include_dirs=[KERNELS, numpy.get_include()],
                     define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
                     extra_compile_args=flags, extra_link_args=["-pthread"],
                     depends=[os.path.join(KERNELS, n) for n in SHARED_SOURCES + tuple(depends)])


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
    wanted = host_isas() if target == "native" else list(VARIANTS.ISAS)
    tune = ["-mtune=native"] if target == "native" else []
    flags = {isa: COMMON_FLAGS + VARIANTS.ISAS[isa].flags + tune for isa in wanted}
    built = {module: [isa for isa in VARIANTS.isas_with(module) if isa in wanted]
             for module in ("spmm", "spmm_int8", "encoder")}
    exts = []
    for isa in built["spmm"]:
        pyx = os.path.join(GENERATED, f"spmm_{isa}.pyx")
        render(os.path.join(KERNELS, "spmm.pyx.tp"), pyx, isa=isa, VW=VARIANTS.ISAS[isa].lanes,
               VARIANTS=VARIANTS.fp32_variants(isa), PREFETCH_PAD=VARIANTS.PREFETCH_PAD,
               TOKEN_ROWS=VARIANTS.TOKEN_ROWS)
        exts.append(kernel_extension(f"_spmm_{isa}", pyx, flags[isa], ["transpose.h"]))
    for isa in built["spmm_int8"]:
        pyx = os.path.join(GENERATED, f"spmm_int8_{isa}.pyx")
        render(os.path.join(KERNELS, "spmm_int8.pyx.tp"), pyx, isa=isa,
               VARIANTS=VARIANTS.int8_variants(), PREFETCH_PAD=VARIANTS.PREFETCH_PAD,
               TOKEN_ROWS=VARIANTS.TOKEN_ROWS)
        exts.append(kernel_extension(f"_spmm_int8_{isa}", pyx, flags[isa], ["vnni.h", "transpose.h"]))
    encoder_headers = [os.path.join("encoder", n) for n in sorted(os.listdir(ENCODER)) if n.endswith(".h")]
    for isa in built["encoder"]:
        pyx = os.path.join(GENERATED, f"encoder_{isa}.pyx")
        int8 = "spmm_int8" in VARIANTS.ISAS[isa].modules
        render(os.path.join(ENCODER, "encoder.pyx.tp"), pyx, isa=isa, VW=VARIANTS.ISAS[isa].lanes, INT8=int8)
        exts.append(kernel_extension(f"_encoder_{isa}", pyx, flags[isa],
                                     encoder_headers + (["vnni.h"] if int8 else [])))
    for isa in wanted:
        pyx = os.path.join(GENERATED, f"peak_{isa}.pyx")
        vnni = "spmm_int8" in VARIANTS.ISAS[isa].modules
        render(os.path.join(KERNELS, "peak.pyx.tp"), pyx, isa=isa, VW=VARIANTS.ISAS[isa].lanes,
               CHAINS=VARIANTS.ISAS[isa].registers * 3 // 4,
               DPBUSD_CHAINS=VARIANTS.ISAS[isa].registers * 3 // 8, VNNI=vnni)
        exts.append(kernel_extension(f"_peak_{isa}", pyx, flags[isa], ["vnni.h"] if vnni else []))
    # the pool and the untuned reference: baseline-ISA flags, they must run everywhere
    exts.append(kernel_extension("_pool", os.path.join(KERNELS, "pool.pyx"), ["-O2", "-pthread"]))
    exts.append(kernel_extension("_generic_csr", os.path.join(KERNELS, "generic_csr.pyx"), ["-O3", "-pthread"]))
    exts.append(Extension("sparsebench._cpu", ["kernels/cpu.pyx"], include_dirs=[KERNELS],
                          extra_compile_args=["-O2"]))
    buildinfo = {"target": target, "isas": built["spmm"],
                 "flags": {isa: flags[isa] for isa in built["spmm"]},
                 "encoder_isas": built["encoder"], "peak_isas": wanted, "int8_isas": built["spmm_int8"],
                 "int8_flags": {isa: flags[isa] for isa in built["spmm_int8"]},
                 "compiler": compiler_version(), "kernel_hashes": kernel_hashes(), "tune": resolved_tune(tune),
                 "prefetch_pad": VARIANTS.PREFETCH_PAD, "blocks": VARIANTS.FP32_BLOCKS,
                 "int8_blocks": list(VARIANTS.INT8_TILES),
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
