"""The measured peak: the probes, the per-machine cache and the degraded-run monitor."""
import json
import math
import os

import pytest

from sparsebench import cpu, fingerprint, peak as peak_mod, store
from sparsebench.machine import ENV_FAKE_CPU
from sparsebench.peak import Peak, PeakMonitor, cache_path, measure, peak, pct_peak

ZEN5 = json.dumps({"vendor": "AuthenticAMD", "brand": "AMD EPYC", "family": 26, "model": 2})


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(peak_mod.ENV_CACHE_DIR, str(tmp_path))
    return tmp_path


def test_probes_give_positive_finite_rates():
    module = cpu.peak_module()
    step = module.TASKS_PER_THREAD
    for threads in (1, 2):
        seconds = module.fma_seconds(threads, step * 100)
        assert seconds > 0 and math.isfinite(seconds)
        if module.DPBUSD_PRODUCTS:
            assert 0 < module.dpbusd_seconds(threads, step * 100) < math.inf
    p = measure(2)
    assert p.threads == 2 and p.isa == module.ISA
    for rate in (p.fp32_gflops, p.fp32_gflops_core) + ((p.int8_gops, p.int8_gops_core) if module.DPBUSD_PRODUCTS else ()):
        assert 0 < rate < math.inf
    if not module.DPBUSD_PRODUCTS:
        assert p.int8_gops is None and p.rate("int8") is None


@pytest.mark.parametrize("threads, rounds", [(0, 8), (-1, 8), (100000, 8), (1, 0), (1, -8), (1, 7), (1, 1 << 50)])
def test_probes_reject_bad_arguments(threads, rounds):
    module = cpu.peak_module()
    with pytest.raises(ValueError, match="invalid arguments"):
        module.fma_seconds(threads, rounds)
    if module.DPBUSD_PRODUCTS:
        with pytest.raises(ValueError, match="invalid arguments"):
            module.dpbusd_seconds(threads, rounds)


def test_measure_rejects_bad_threads():
    with pytest.raises(ValueError, match="threads"):
        measure(0)


def test_probe_module_is_never_one_the_cpu_lacks(no_cpu_features):
    assert cpu.peak_module().ISA == "generic"
    assert cpu.peak_module().fma_seconds(1, 8) > 0
    with pytest.raises(NotImplementedError, match="VNNI"):
        cpu.peak_module().dpbusd_seconds(1, 8)


def test_cache_is_written_atomically_read_back_and_keyed_by_hardware(cache_dir, monkeypatch):
    calls = []
    real = peak_mod.measure
    monkeypatch.setattr(peak_mod, "measure", lambda t: calls.append(t) or real(t))
    atomic = []
    real_atomic = store.atomic_file
    monkeypatch.setattr(store, "atomic_file", lambda path, *a: atomic.append(path) or real_atomic(path, *a))
    first = peak(1)
    path = cache_path()
    assert os.path.dirname(path) == str(cache_dir) and fingerprint.hardware_id() in os.path.basename(path)
    assert atomic == [path] and calls == [1]
    assert not [n for n in os.listdir(cache_dir) if n.endswith(".tmp")]
    saved = json.load(open(path))
    assert saved["hardware_id"] == fingerprint.hardware_id() and saved["peaks"]["1"]["fp32_gflops"] == first.fp32_gflops
    assert peak(1) == first and calls == [1]                 # read back, not measured
    monkeypatch.setenv(ENV_FAKE_CPU, ZEN5)                   # another CPU: its own file, measured anew
    assert cache_path() != path
    peak(1)
    assert calls == [1, 1] and os.path.exists(cache_path())


def test_stale_or_corrupt_cache_is_measured_again(cache_dir, monkeypatch):
    first = peak(1)
    assert peak(1, max_age=0.0) != first                     # stale: measured again
    with open(cache_path(), "w") as f:
        f.write("{not json")
    assert peak(1).measured_at > first.measured_at


def test_pct_peak():
    assert pct_peak(50.0, 200.0) == 25.0
    assert pct_peak(None, 200.0) is None and pct_peak(50.0, None) is None


def _fake_peak(rate):
    return Peak(1, rate, None, rate, None, "test", 0.0)


def test_monitor_marks_what_was_measured_beside_a_slow_probe(monkeypatch):
    monkeypatch.setattr(peak_mod, "peak", lambda threads, max_age=None: _fake_peak(100.0))
    rates = iter([99.0, 98.0, 50.0, 97.0, 99.0])
    monkeypatch.setattr(peak_mod, "_run", lambda *a: next(rates))
    monkeypatch.setattr(peak_mod._CopyProbe, "rate", lambda self, repeats=1: 30.0)
    mon = PeakMonitor(1)
    assert mon.around("a", lambda: "x") == ("x", False)      # start 99, after 98
    assert mon.around("b", lambda: "y") == ("y", True)       # after: 50 < 85
    assert mon.around("c", lambda: "z") == ("z", True)       # before was the slow one
    assert mon.around("d", lambda: "w") == ("w", False)
    meta = mon.meta()
    assert meta["peak_gflops"] == 100.0 and meta["peak_threads"] == 1 and [p["label"] for p in meta["peak_probes"]] == ["start", "a", "b", "c", "d"]
    assert [p["degraded"] for p in meta["peak_probes"]] == [False, False, True, False, False]


def test_monitor_compares_with_a_faster_probe_than_the_cache(monkeypatch):
    monkeypatch.setattr(peak_mod, "peak", lambda threads, max_age=None: _fake_peak(50.0))
    rates = iter([100.0, 80.0])
    monkeypatch.setattr(peak_mod, "_run", lambda *a: next(rates))
    monkeypatch.setattr(peak_mod._CopyProbe, "rate", lambda self, repeats=1: 30.0)
    mon = PeakMonitor(1)
    assert mon.around("a", lambda: None) == (None, True)     # 80 is 20% under the best seen (100)


def test_monitor_marks_what_was_measured_beside_a_slow_memory_copy(monkeypatch):
    """The cores at full FMA speed but the memory busy with another tenant's traffic (seen here:
    a 768x768x1024 SpMM at half speed while the FMA probe read 232 GFLOP/s)."""
    monkeypatch.setattr(peak_mod, "peak", lambda threads, max_age=None: _fake_peak(100.0))
    monkeypatch.setattr(peak_mod, "_run", lambda *a: 100.0)
    copies = iter([30.0, 29.0, 20.0, 31.0, 24.0])
    monkeypatch.setattr(peak_mod._CopyProbe, "rate", lambda self, repeats=1: next(copies))
    mon = PeakMonitor(1)
    assert mon.around("a", lambda: 1) == (1, False)          # 30, 29
    assert mon.around("b", lambda: 2) == (2, True)           # 20 < 0.75 * 30
    assert mon.around("c", lambda: 3) == (3, True)           # before was the slow one
    assert mon.around("d", lambda: 4) == (4, False)          # 24 >= 0.75 * 31
    assert [p["copy_gbs"] for p in mon.meta()["peak_probes"]] == [30.0, 29.0, 20.0, 31.0, 24.0]


def test_measured_peak_has_a_copy_bandwidth():
    p = peak_mod.measure(1)
    assert p.copy_gbs > 0.5 and math.isfinite(p.copy_gbs)
