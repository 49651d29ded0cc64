"""The machine's measured peak: fp32 FMA and int8 dot-product (VNNI) throughput, per core and
for the threads in use, and the memory copy bandwidth, cached per hardware id; and the short
probes a run takes to tell when the machine was degraded (a core shared with another tenant,
or the memory and last-level cache busy with another tenant's traffic).

A speedup over a weak baseline is not a result: every measurement also reports its useful
rate as a percentage of this peak (`pct_peak`).
"""
import dataclasses
import json
import os
import time

import numpy as np

from . import fingerprint, store
from .cpu import peak_module
from .machine import cpu_label

ENV_CACHE_DIR = "SPARSEBENCH_CACHE_DIR"
#: seconds a cached peak stays valid
MAX_AGE = 7 * 24 * 3600
#: repetitions of each measurement (the best counts) and seconds each
REPEATS = 3
MEASURE_SECONDS = 0.015
#: seconds of one probe during a run
PROBE_SECONDS = 0.02
#: a probe this fraction or more below the best peak marks what was measured beside it degraded
DEGRADED_BELOW = 0.15
#: bytes the copy probe moves (source and destination each: past the last-level cache share of
#: a core, so that another tenant's memory traffic shows), and how far under its best it may fall
#: (memory bandwidth varies more than FMA throughput on a quiet machine)
COPY_BYTES = 24 << 20
COPY_DEGRADED_BELOW = 0.25
#: how many times until_clean measures while the probes say degraded (one run and 3 more)
ATTEMPTS = 4
#: version of the probes: a cache written by other probes is measured again (2: the int8 probe
#: no longer spills its accumulators, which had halved the int8 peak; 3: the copy bandwidth)
PROBES_VERSION = 3
#: what "degraded" means, for messages
DEGRADED = "a probe ran > 15% under the FMA peak or > 25% under the copy bandwidth"


@dataclasses.dataclass(frozen=True)
class Peak:
    """Measured peaks: fp32 GFLOP/s (2 flops per FMA lane), int8 GOP/s (2 ops per u8 x s8
    product; None without VNNI), for `threads` threads and for one core."""

    threads: int
    fp32_gflops: float
    int8_gops: object
    fp32_gflops_core: float
    int8_gops_core: object
    isa: str
    measured_at: float
    copy_gbs: float = None    # memory copy bandwidth, GB/s (bytes read + written), one thread

    def rate(self, dtype="float32"):
        """The peak of `dtype` work (float32: GFLOP/s, int8: GOP/s; None if not measurable)."""
        return self.int8_gops if dtype == "int8" else self.fp32_gflops


def _ops_per_round(module, kind):
    if kind == "fp32":
        return 2 * module.CHAINS * module.LANES
    return 2 * module.DPBUSD_CHAINS * module.DPBUSD_PRODUCTS


def _rounds(module, seconds, gops_per_thread, kind):
    """Rounds per thread that take about `seconds` at `gops_per_thread`."""
    step = module.TASKS_PER_THREAD
    return max(step, int(seconds * gops_per_thread * 1e9 / _ops_per_round(module, kind)) // step * step)


def _run(module, kind, threads, rounds):
    """G(FL)OP/s of one run of `rounds` rounds per thread, after a tiny one that wakes (or starts)
    the pool's workers."""
    run = module.fma_seconds if kind == "fp32" else module.dpbusd_seconds
    run(threads, module.TASKS_PER_THREAD)
    return _ops_per_round(module, kind) * rounds * threads / run(threads, rounds) / 1e9


def _best_rate(module, kind, threads, seconds=MEASURE_SECONDS, repeats=REPEATS):
    """Best G(FL)OP/s of `repeats` runs of about `seconds`, after a short calibrating run."""
    guess = _run(module, kind, threads, module.TASKS_PER_THREAD * 256) / threads
    rounds = _rounds(module, seconds, guess, kind)
    return max(_run(module, kind, threads, rounds) for _ in range(repeats))


class _CopyProbe:
    """np.copyto between two COPY_BYTES buffers (touched once, so no page faults are timed)."""

    def __init__(self):
        self.src = np.ones(COPY_BYTES // 4, np.float32)
        self.dst = np.zeros_like(self.src)

    def rate(self, repeats=1):
        """Best GB/s (read + written) of `repeats` copies."""
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.copyto(self.dst, self.src)
            best = max(best, 2 * self.src.nbytes / max(time.perf_counter() - t0, 1e-9) / 1e9)
        return best


def measure(threads):
    """Measure the peaks for `threads` threads and for one core, and the copy bandwidth (~0.3 s)."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, not {threads!r}")
    module = peak_module()
    vnni = module.DPBUSD_PRODUCTS > 0
    rates = {(kind, t): _best_rate(module, kind, t) if kind == "fp32" or vnni else None
             for kind in ("fp32", "int8") for t in sorted({1, threads})}
    return Peak(threads, rates["fp32", threads], rates["int8", threads], rates["fp32", 1],
                rates["int8", 1], module.ISA, time.time(), _CopyProbe().rate(REPEATS + 2))


def cache_path(hardware_id=None):
    """The peak cache of a machine: $SPARSEBENCH_CACHE_DIR (default ~/.cache/sparsebench)/peak-<hardware id>.json."""
    folder = os.environ.get(ENV_CACHE_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "sparsebench")
    return os.path.join(folder, f"peak-{hardware_id or fingerprint.hardware_id()}.json")


def _read_cache(path):
    """{threads (str): Peak fields} of a cache file; {} if it is absent or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        peaks = data.get("peaks", {}) if data.get("probes") == PROBES_VERSION else {}
    except (OSError, ValueError, AttributeError):
        return {}
    return peaks if isinstance(peaks, dict) else {}


def peak(threads, max_age=MAX_AGE):
    """The peak for `threads` threads: this machine's cached one if younger than `max_age`
    seconds, else measured now and cached."""
    path = cache_path()
    peaks = _read_cache(path)
    try:
        cached = Peak(**peaks[str(threads)])
    except (KeyError, TypeError):
        cached = None
    if cached is not None and time.time() - cached.measured_at <= max_age:
        return cached
    fresh = measure(threads)
    peaks[str(threads)] = dataclasses.asdict(fresh)
    with store.atomic_file(path) as f:
        json.dump({"hardware_id": fingerprint.hardware_id(), "cpu": cpu_label(), "probes": PROBES_VERSION,
                   "peaks": peaks}, f,
                  indent=1, sort_keys=True)
    return fresh


def pct_peak(gops, peak_rate):
    """A useful rate (G(FL)OP/s) as a percentage of `peak_rate`; None without a peak or rate."""
    if gops is None or not peak_rate:
        return None
    return 100.0 * gops / peak_rate


def _slower(probes):
    """The slower fp32 rate of probe records (GFLOP/s)."""
    return min(p["gflops"] for p in probes)


class PeakMonitor:
    """Short probes through a run: fp32 FMAs (PROBE_SECONDS) and two memory copies. What is
    measured between two probes is degraded if either probe's FMA rate fell DEGRADED_BELOW or
    more under the best peak seen (the cached peak, or a faster probe: the cache was then
    measured on a busy machine), or its copy bandwidth COPY_DEGRADED_BELOW under the best seen."""

    def __init__(self, threads, max_age=MAX_AGE):
        self.threads = threads
        self.peak = peak(threads, max_age)
        self.best = self.peak.fp32_gflops
        self.best_copy = self.peak.copy_gbs or 0.0
        self._copy = None
        self.probes = []

    def probe(self, label):
        """Probe now; the probe's record {label, gflops, copy_gbs, degraded, time}."""
        module = peak_module()
        rounds = _rounds(module, PROBE_SECONDS, self.best / self.threads, "fp32")
        rate = _run(module, "fp32", self.threads, rounds)
        self._copy = self._copy or _CopyProbe()
        copy = self._copy.rate(2)
        self.best = max(self.best, rate)
        self.best_copy = max(self.best_copy, copy)
        record = {"label": label, "gflops": round(rate, 1), "copy_gbs": round(copy, 1),
                  "time": round(time.time(), 3),
                  "degraded": rate < (1 - DEGRADED_BELOW) * self.best
                  or copy < (1 - COPY_DEGRADED_BELOW) * self.best_copy}
        self.probes.append(record)
        return record

    def rate(self, dtype="float32"):
        """The peak pct_peak is taken of: the best fp32 rate seen; int8 scaled alike (a busy
        core slows both), None without VNNI."""
        if dtype != "int8":
            return self.best
        return None if self.peak.int8_gops is None else self.peak.int8_gops * self.best / self.peak.fp32_gflops

    def around(self, label, measure_fn):
        """(measure_fn(), degraded): the result between the last probe (one is taken first if
        there is none) and a probe after it, labelled `label`."""
        if not self.probes:
            self.probe("start")
        before = self.probes[-1]
        result = measure_fn()
        after = self.probe(label)
        return result, before["degraded"] or after["degraded"]

    def until_clean(self, label, measure_fn, attempts=ATTEMPTS, log=None):
        """around(), again while a probe says the machine was degraded, up to `attempts` times
        in all (a shared host's busy spells last seconds): (result, degraded, probes) of the first
        clean attempt, else of the one whose slower fp32 probe ran fastest; probes: the two
        probe records around that attempt."""
        best = None
        for attempt in range(attempts):
            if attempt:
                self.probe(f"{label} (again)")         # a slow probe must not count twice
            result, degraded = self.around(label, measure_fn)
            probes = self.probes[-2:]
            if best is None or not degraded or _slower(probes) > _slower(best[2]):
                best = (result, degraded, probes)
            if not degraded:
                break
            if log and attempt + 1 < attempts:
                log(f"{label}: a peak probe ran more than {DEGRADED_BELOW:.0%} under the peak "
                    f"({_slower(probes):.0f} of {self.best:.0f} GFLOP/s) or the copy bandwidth "
                    f"{COPY_DEGRADED_BELOW:.0%} under its best; measuring again")
        return best

    def pct(self, ops, seconds, dtype="float32"):
        """`ops` useful operations (flops; int8: u8 x s8 ops) in `seconds`, as a % of the peak of
        `dtype` (None without one)."""
        return pct_peak(ops / seconds / 1e9, self.rate(dtype))

    def meta(self):
        """What results carry: peak_gflops and peak_int8_gops (the rates pct_peak is taken of),
        peak_isa, peak_threads, and the probes so far (peak_probes)."""
        int8 = self.rate("int8")
        return {"peak_gflops": round(self.best, 1), "peak_int8_gops": None if int8 is None else round(int8, 1),
                "peak_isa": self.peak.isa, "peak_threads": self.threads, "peak_probes": list(self.probes)}
