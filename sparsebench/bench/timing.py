"""Robust timing: warm-ups, calibrated loops, many samples, medians with spread.

Methods compared side by side are interleaved (A B C A B C ...) so that drift on a
shared, noisy machine hits them alike, and ratios are taken sample by sample.
"""
import dataclasses
import os
import time

import numpy as np

#: spread (p80 - p20) / median at or above which a measurement is flagged unstable
UNSTABLE_SPREAD = 0.10


@dataclasses.dataclass
class Stats:
    """Seconds per call over the samples of one method."""

    samples: np.ndarray
    loops: int = 1          # calls timed together per sample

    @property
    def n(self):
        return len(self.samples)

    @property
    def median(self):
        return float(np.median(self.samples))

    @property
    def p20(self):
        return float(np.percentile(self.samples, 20))

    @property
    def p80(self):
        return float(np.percentile(self.samples, 80))

    @property
    def min(self):
        return float(np.min(self.samples))

    @property
    def spread(self):
        """(p80 - p20) / median."""
        return (self.p80 - self.p20) / self.median if self.median > 0 else 0.0

    @property
    def unstable(self):
        return self.spread >= UNSTABLE_SPREAD



def last_level_cache_bytes(default=32 << 20):
    """Size of the largest CPU cache (from sysfs), or `default` when it cannot be read."""
    sizes = []
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
            mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            sizes.append(int(text.rstrip("KMG")) * mult)
    except (OSError, ValueError):
        pass
    return max(sizes, default=default)


class CacheFlusher:
    """Evicts the CPU caches by writing a buffer twice the size of the last-level cache."""

    def __init__(self):
        self.buffer = np.zeros(2 * last_level_cache_bytes() // 4, dtype=np.float32)

    def __call__(self):
        self.buffer += 1.0


def _time_loops(fn, loops):
    t0 = time.perf_counter()
    for _ in range(loops):
        fn()
    return (time.perf_counter() - t0) / loops


def calibrate(fn, sample_time=2e-3, max_loops=10_000):
    """Calls per sample so that one sample lasts about `sample_time` seconds."""
    fn()
    t = _time_loops(fn, 1)
    loops = 1
    while t * loops < sample_time / 4 and loops < max_loops:
        loops *= 4
        t = _time_loops(fn, loops)
    return max(1, min(max_loops, int(round(sample_time / max(t, 1e-9)))))


def measure(fn, samples=30, warmup=3, sample_time=2e-3, cold=False):
    """Stats of one callable."""
    return interleaved({"_": fn}, samples, warmup, sample_time, cold=cold)["_"]


def interleaved(fns, samples=30, warmup=3, sample_time=2e-3, cold=False):
    """Stats per name for a dict of callables, sampled round-robin (rotating the order each round).

    Warm (default): each sample times a calibrated loop of calls, so weights and inputs stay
    in cache as they would in a steady stream of calls. Cold: the caches are flushed before
    every call and each sample is one call (first-touch cost included).
    """
    names = list(fns)
    flush = CacheFlusher() if cold else None
    loops = {name: 1 if cold else calibrate(fns[name], sample_time) for name in names}
    for name in names:
        for _ in range(warmup):
            _time_loops(fns[name], loops[name])
    out = {name: [] for name in names}
    for r in range(samples):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if flush:
                flush()
            out[name].append(_time_loops(fns[name], loops[name]))
    return {name: Stats(np.array(out[name]), loops[name]) for name in names}


def ratio(stats_base, stats_other):
    """Per-round speedup samples of `other` over `base` (base time / other time) from interleaved runs."""
    n = min(stats_base.n, stats_other.n)
    return Stats(stats_base.samples[:n] / stats_other.samples[:n])
