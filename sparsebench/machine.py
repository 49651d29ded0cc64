"""Which CPU this is: vendor, family/model/stepping, microarchitecture, caches, cores, ISA.

Two CPUs can share a /proc/cpuinfo model name ("AMD EPYC"), instruction-set list and core
count yet differ in kind (Zen 4 and Zen 5): the identity below tells them apart, so tuning
records of one are never taken for the other's (see sparsebench.fingerprint).

SPARSEBENCH_FAKE_CPU (test-only): a JSON object merged over the detected identity, e.g.
'{"family": 26, "model": 2}', to pretend to be another CPU. It changes only what the
fingerprints see (uarch and label follow a faked vendor/family/model), never which kernels run.
"""
import functools
import glob
import json
import os
import platform
import re

from . import _cpu
from .cpu import cpu_features, cpu_model

ENV_FAKE_CPU = "SPARSEBENCH_FAKE_CPU"
SYSFS_CPU = "/sys/devices/system/cpu"

#: (vendor, family, first model, last model, microarchitecture); the first match wins
UARCH_TABLE = (
    ("AuthenticAMD", 0x17, 0x08, 0x08, "Zen+"),
    ("AuthenticAMD", 0x17, 0x18, 0x18, "Zen+"),
    ("AuthenticAMD", 0x17, 0x00, 0x2F, "Zen"),
    ("AuthenticAMD", 0x17, 0x50, 0x5F, "Zen"),
    ("AuthenticAMD", 0x17, 0x30, 0x4F, "Zen 2"),
    ("AuthenticAMD", 0x17, 0x60, 0x7F, "Zen 2"),
    ("AuthenticAMD", 0x17, 0x90, 0x91, "Zen 2"),
    ("AuthenticAMD", 0x17, 0xA0, 0xAF, "Zen 2"),
    ("AuthenticAMD", 0x19, 0x00, 0x0F, "Zen 3"),
    ("AuthenticAMD", 0x19, 0x20, 0x5F, "Zen 3"),
    ("AuthenticAMD", 0x19, 0x10, 0x1F, "Zen 4"),
    ("AuthenticAMD", 0x19, 0x60, 0x7F, "Zen 4"),
    ("AuthenticAMD", 0x19, 0xA0, 0xAF, "Zen 4"),
    ("AuthenticAMD", 0x1A, 0x00, 0x2F, "Zen 5"),
    ("AuthenticAMD", 0x1A, 0x40, 0x4F, "Zen 5"),
    ("AuthenticAMD", 0x1A, 0x60, 0x7F, "Zen 5"),
    ("GenuineIntel", 6, 0x55, 0x55, "Skylake-SP/Cascade Lake"),
    ("GenuineIntel", 6, 0x6A, 0x6A, "Ice Lake-SP"),
    ("GenuineIntel", 6, 0x6C, 0x6C, "Ice Lake-SP"),
    ("GenuineIntel", 6, 0x8F, 0x8F, "Sapphire Rapids"),
    ("GenuineIntel", 6, 0xCF, 0xCF, "Emerald Rapids"),
    ("GenuineIntel", 6, 0xAD, 0xAE, "Granite Rapids"),
)
#: sysfs cache (level, type) -> identity key
_CACHE_NAMES = {("1", "Data"): "L1d", ("1", "Instruction"): "L1i", ("2", "Unified"): "L2",
                ("3", "Unified"): "L3"}


def uarch_name(vendor, family, model):
    """Microarchitecture of a (vendor, display family, display model), or "unknown"."""
    for v, fam, first, last, name in UARCH_TABLE:
        if vendor == v and family == fam and isinstance(model, int) and first <= model <= last:
            return name
    return "unknown"


def cpu_identity():
    """This CPU as a JSON-ready dict: vendor, brand, family, model, stepping (ints, None where
    unknown), uarch, caches ({L1d, L1i, L2, L3: bytes or None}), cores (physical), threads
    (logical CPUs), isa (the instruction sets sparsebench uses); SPARSEBENCH_FAKE_CPU applies."""
    identity = dict(_detected_identity(), isa=list(cpu_features()))
    fake = _fake_cpu()
    identity.update(fake)
    if "uarch" not in fake:
        identity["uarch"] = uarch_name(identity["vendor"], identity["family"], identity["model"])
    return identity


def cpu_label(identity=None):
    """A short name of the CPU kind, e.g. "AMD EPYC Zen 4 (family 25 model 17)"."""
    ident = identity or cpu_identity()
    uarch = "" if ident.get("uarch") in (None, "unknown") else " " + ident["uarch"]
    return f"{ident.get('brand') or ident.get('vendor')}{uarch} (family {ident.get('family')} model {ident.get('model')})"


def cpu_slug(identity=None):
    """A folder-name-friendly name of the CPU kind, e.g. "amd-epyc-zen4-f25m17"."""
    ident = identity or cpu_identity()
    brand = re.sub(r"\((R|TM)\)|\bCPU\b|\bProcessor\b|\d+-Core|@.*$", " ",
                   str(ident.get("brand") or ident.get("vendor") or "cpu"), flags=re.I)
    uarch = "" if ident.get("uarch") in (None, "unknown") else ident["uarch"].replace(" ", "")
    kind = f"f{ident['family']}m{ident['model']}" if ident.get("family") is not None else ""
    return re.sub(r"[^a-z0-9]+", "-", f"{brand} {uarch} {kind}".lower()).strip("-") or "cpu"


def results_folder(root="results", identity=None):
    """This machine's results folder: `root`/<cpu_slug()>."""
    return os.path.join(root, cpu_slug(identity))


@functools.lru_cache(maxsize=None)
def _detected_identity():
    ids = _cpu.cpuid_identity() or _proc_cpuinfo_identity()
    threads, cores = _topology()
    return {"vendor": ids["vendor"], "brand": ids["brand"] or cpu_model(), "family": ids["family"],
            "model": ids["model"], "stepping": ids["stepping"], "caches": _caches(),
            "cores": cores, "threads": threads}


def _proc_cpuinfo_identity():
    """The identity fields of CPUs without CPUID (e.g. ARM: implementer, architecture, part, revision)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    if fields:
                        break          # the first processor's block is enough
                    continue
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass

    def number(*keys):
        for key in keys:
            try:
                return int(fields[key], 0)
            except (KeyError, ValueError):
                pass
        return None
    return {"vendor": fields.get("vendor_id") or fields.get("CPU implementer") or platform.machine(),
            "brand": cpu_model(), "family": number("cpu family", "CPU architecture"),
            "model": number("model", "CPU part"), "stepping": number("stepping", "CPU revision")}


def _caches():
    """{L1d, L1i, L2, L3: bytes or None} of cpu0, from sysfs."""
    out = dict.fromkeys(_CACHE_NAMES.values())
    for index in sorted(glob.glob(os.path.join(SYSFS_CPU, "cpu0", "cache", "index*"))):
        try:
            level, kind, size = (_read(os.path.join(index, name)) for name in ("level", "type", "size"))
            name = _CACHE_NAMES.get((level, kind))
            if name:
                out[name] = _bytes(size)
        except (OSError, ValueError):
            continue
    return out


def _bytes(size):
    """sysfs cache size ("32K", "1024K", "32M", "512") in bytes."""
    unit = {"K": 1 << 10, "M": 1 << 20}.get(size[-1:], 1)
    return int(size[:-1] if unit > 1 else size) * unit


def _topology():
    """(logical CPUs, physical cores) of the machine; cores None if sysfs does not say."""
    cores = set()
    for topo in glob.glob(os.path.join(SYSFS_CPU, "cpu[0-9]*", "topology")):
        try:
            cores.add((_read(os.path.join(topo, "physical_package_id")), _read(os.path.join(topo, "core_id"))))
        except OSError:
            continue
    return os.cpu_count() or 1, len(cores) or None


def _read(path):
    with open(path) as f:
        return f.read().strip()


def _fake_cpu():
    text = os.environ.get(ENV_FAKE_CPU, "").strip()
    if not text:
        return {}
    try:
        fake = json.loads(text)
    except ValueError as e:
        raise ValueError(f"{ENV_FAKE_CPU} (test-only) must be a JSON object, e.g. "
                         f"'{{\"family\": 26, \"model\": 2}}': {e}") from None
    if not isinstance(fake, dict):
        raise ValueError(f"{ENV_FAKE_CPU} (test-only) must be a JSON object, not {type(fake).__name__}")
    return fake
