"""What a plain user script gets: OpenBLAS tamed whatever the import order."""
import os
import subprocess
import sys

import numpy as np
import pytest

import sparsebench as sb

NUMPY_FIRST = """
import numpy as np
a = np.arange(90000, dtype=np.float32).reshape(300, 300) / 1e4
before = a @ a
import sparsebench as sb
assert np.array_equal(a @ a, before)          # numpy still computes the same after the restart
print(sb.BLAS_SPIN)
"""


def _run(code, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "SPARSEBENCH_TAME_BLAS")}
    full.update(env)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_openblas_loaded_first_is_restarted_with_the_short_timeout():
    note = _run(NUMPY_FIRST)
    assert "OPENBLAS_THREAD_TIMEOUT=4, set after load" in note and "restarted its pool" in note


def test_sparsebench_first_sets_the_timeout_before_numpy_loads():
    note = _run("import sparsebench as sb, os; print(sb.BLAS_SPIN, os.environ['OPENBLAS_THREAD_TIMEOUT'])")
    assert note == "OPENBLAS_THREAD_TIMEOUT=4 before numpy loaded 4"


def test_a_users_timeout_and_the_opt_out_are_respected():
    assert _run(NUMPY_FIRST, OPENBLAS_THREAD_TIMEOUT="20") == "OPENBLAS_THREAD_TIMEOUT=20 (user)"
    assert _run(NUMPY_FIRST, SPARSEBENCH_TAME_BLAS="0") == "left alone (SPARSEBENCH_TAME_BLAS=0)"


def test_single_row_blocks_on_a_numpy_x_match_the_reference():
    rng = np.random.default_rng(1)
    for block in [(1, 1), (1, 4)]:
        W = sb.prune(rng.standard_normal((300, 1024), dtype=np.float32), 0.8, block)
        X = rng.standard_normal((1024, 130), dtype=np.float32)[:, 1:129]   # a column slice
        A = sb.BSRMatrix.from_dense(W, block)
        ref = W.astype(np.float64) @ X
        assert np.abs(sb.spmm(A, X) - ref).max() <= 1e-4 * np.abs(ref).max()


class _ScriptedMonitor:
    """PeakMonitor.around with the probes' verdicts given in advance, one per process."""

    def __init__(self, slow):
        self.slow = list(slow)

    def around(self, label, measure):
        return measure(), self.slow.pop(0)


def _scripted_run(times):
    """run_process stand-in: each call returns the next lab or plain time of the one case."""
    times = {kind: list(t) for kind, t in times.items()}
    return lambda kind, threads, torch_model: {"case": times[kind].pop(0)}


def test_plain_benchmark_measures_degraded_rounds_again_and_leaves_them_out():
    from sparsebench.bench import plain
    # round 1's plain process ran while a probe was slow (ratio 5): set aside, measured again
    run = _scripted_run({"lab": [1.0, 1.0, 1.0], "plain": [5.0, 1.1, 1.3]})
    rows = plain.compare(2, 2, log=lambda line: None, monitor=_ScriptedMonitor([False, True, False, False,
                                                                                False, False]), run=run)
    (row,) = rows
    assert (row["rounds"], row["degraded_rounds"], row["clean"]) == (2, 1, True)
    assert (row["low"], row["high"]) == pytest.approx((1.1, 1.3))


def test_plain_benchmark_with_too_few_clean_rounds_uses_them_all():
    """4 rounds asked, one clean among 12 attempts: the ratios come from all 12 (median of
    ratios 1.5 x 11 and 1.0), flagged not clean, rather than from the one clean round."""
    from sparsebench.bench import plain
    attempts = 4 * (1 + plain.RETRIES)
    run = _scripted_run({"lab": [1.0] * attempts, "plain": [1.0] + [1.5] * (attempts - 1)})
    verdicts = [False, False] + [True] * (2 * attempts - 2)
    (row,) = plain.compare(4, 2, log=lambda line: None, monitor=_ScriptedMonitor(verdicts), run=run)
    assert (row["rounds"], row["degraded_rounds"], row["clean"]) == (attempts, attempts - 1, False)
    assert (row["plain_over_lab"], row["low"], row["high"]) == (1.5, 1.0, 1.5)


def test_plain_benchmark_with_no_clean_round_says_so():
    from sparsebench.bench import plain
    attempts = 2 * (1 + plain.RETRIES)
    run = _scripted_run({"lab": [1.0] * attempts, "plain": [2.0] * attempts})
    (row,) = plain.compare(2, 2, log=lambda line: None, monitor=_ScriptedMonitor([True] * (2 * attempts)), run=run)
    assert (row["rounds"], row["degraded_rounds"], row["clean"]) == (attempts, attempts, False)
    assert row["plain_over_lab"] == 2.0


def test_plain_benchmark_alternates_which_kind_runs_first_degraded_rounds_too():
    from sparsebench.bench import plain
    order = []
    attempts = 2 * (1 + plain.RETRIES)

    def run(kind, threads, torch_model):
        order.append(kind)
        return {"case": 1.0}
    plain.compare(2, 2, log=lambda line: None, monitor=_ScriptedMonitor([True] * (2 * attempts)), run=run)
    firsts = order[::2]
    assert len(firsts) == attempts and firsts == ["lab", "plain"] * (attempts // 2)


def test_plain_benchmark_balances_which_kind_runs_first_among_clean_rounds():
    """Rounds degraded one in two: the clean rounds still run lab first and plain first as often."""
    from sparsebench.bench import plain
    order = []

    def run(kind, threads, torch_model):
        order.append(kind)
        return {"case": 1.0}
    verdicts = [False, False, True, False] * 4             # rounds 1, 3, 5, 7 clean; 2, 4, 6, 8 degraded
    plain.compare(4, 2, log=lambda line: None, monitor=_ScriptedMonitor(verdicts), run=run)
    clean_firsts = [order[2 * i] for i in (0, 2, 4, 6)]
    assert sorted(clean_firsts) == ["lab", "lab", "plain", "plain"]
