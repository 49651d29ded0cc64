"""The autotuner: search space, strategies, database durability and resume, export and lookup."""
import json
import re
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import sparsebench as sb
from sparsebench.cli.main import main
from sparsebench.config import check_config
from sparsebench.errors import ConfigError
from sparsebench.bench.shapes import Shape
from sparsebench.tune.apply import TunedFallbackWarning, export, load_tuned
from sparsebench.tune import Autotuner, SearchSpace, Task, TuningDB, autotune, strategies
from sparsebench.tune.space import TUNABLE

SMALL = Shape("small", 64, 48, 24)


def _matrix(M=64, K=48, block=(4, 1), sparsity=0.7):
    W = np.random.default_rng(0).standard_normal((M, K), dtype=np.float32)
    return sb.BSRMatrix.from_dense(sb.prune(W, sparsity, block), block)


def test_space_comes_from_the_kernels_and_every_config_is_valid():
    A = _matrix()
    space = SearchSpace(A, 24, threads=2)
    assert len(space) == len(sb.kernel_configs(A, 24, threads=2)) > 10
    for c in space.configs:
        check_config(c, A)
    assert space.default in space
    for p in TUNABLE:
        for c in space.neighbours(space.default, p):
            diff = [q for q in TUNABLE if getattr(c, q) != getattr(space.default, q)]
            assert diff == [p] and c in space


def _synthetic(space, optimum):
    """A smooth cost: distance in value indices from `optimum` (deterministic, no timing)."""
    def cost(c):
        return 1 + sum(abs(space.params[p].index(getattr(c, p)) - space.params[p].index(getattr(optimum, p)))
                       for p in TUNABLE)
    return cost


@pytest.mark.parametrize("name", ["exhaustive", "random", "smart"])
def test_strategies_find_the_optimum_of_a_smooth_cost(name):
    space = SearchSpace(_matrix(), 24, threads=2)
    optimum = space.configs[len(space) // 3]
    cost = _synthetic(space, optimum)
    seen = []

    def evaluate(c):
        assert c in space
        seen.append(c)
        return cost(c)
    strategies.get(name).search(space, evaluate, np.random.default_rng(0), [space.default])
    assert optimum in seen
    if name == "exhaustive":
        assert len(seen) == len(space)
    if name == "smart":
        assert len(set(seen)) <= 0.5 * len(space)


def test_unknown_strategy_is_a_clear_error(capsys):
    with pytest.raises(ValueError, match="unknown strategy 'fast'.*smart"):
        strategies.get("fast")
    assert main(["autotune", "--shapes", "8x8x8", "--strategy", "fast"]) == 2
    assert "unknown strategy" in capsys.readouterr().err


def _tune(db_path, strategy="smart", max_evals=6, **kw):
    db = TuningDB(str(db_path), log=lambda *a: None)
    tuner = Autotuner(db, strategy, max_evals=max_evals, samples=3, confirm_samples=3, log=lambda *a: None, **kw)
    return db, tuner.tune_all([SMALL], [0.7], [(4, 1)], threads=1)


def _measurements(path):
    recs = [json.loads(line) for line in open(path) if line.strip()]
    return [r for r in recs if r["kind"] == "measurement"]


def test_budget_records_resume_and_retune(tmp_path, steady_machine):
    path = tmp_path / "db.jsonl"
    db, [res] = _tune(path)
    meas = _measurements(path)
    assert res["evals"] == 6 and len(meas) == 1 + 6          # dense + 6 configs, all recorded
    assert all(r["status"] == "ok" and r["hardware_id"] and r["build_id"] for r in meas)
    assert res["method"] in ("sparse", "dense") and res["dense_s"] > 0
    assert 0 < res["pct_peak"] <= 100 * 1.2 and res["peak_gflops"] > 0 and res["degraded"] in (True, False)
    assert [p["label"] for p in res["peak_probes"]] == ["start", SMALL.name]
    _tune(path)                                             # done already: nothing measured
    assert len(_measurements(path)) == 7
    _tune(path, max_evals=9)                                # same strategy: still done
    assert len(_measurements(path)) == 7
    _tune(path, strategy="random", max_evals=9)             # another run reuses what is measured
    assert len(_measurements(path)) <= 7 + 9
    _tune(path, retune=True)
    assert len(_measurements(path)) > 16 - 1


def test_interrupted_run_resumes_without_loss_or_duplicates(tmp_path, monkeypatch):
    path = tmp_path / "db.jsonl"
    real = autotune.Autotuner._measure
    count = {"n": 0}

    def flaky(self, *a):
        count["n"] += 1
        if count["n"] == 5:
            raise KeyboardInterrupt
        return real(self, *a)
    monkeypatch.setattr(autotune.Autotuner, "_measure", flaky)
    with pytest.raises(KeyboardInterrupt):
        _tune(path, strategy="exhaustive", max_evals=10)
    assert len(_measurements(path)) == 4
    monkeypatch.setattr(autotune.Autotuner, "_measure", real)
    db, [res] = _tune(path, strategy="exhaustive", max_evals=10)
    meas = _measurements(path)
    keys = [json.dumps([r["method"], r["config"]], sort_keys=True) for r in meas]
    assert len(keys) == len(set(keys)) == 11
    assert res["evals"] == 10


def test_kill_9_mid_run_loses_nothing_and_resumes(tmp_path):
    path = tmp_path / "db.jsonl"
    cmd = [sys.executable, "-m", "sparsebench.cli", "autotune", "--shapes", "256x256x64", "--sparsity", "0.8",
           "--strategy", "exhaustive", "--threads", "1", "--samples", "5", "--db", str(path)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and (not path.exists() or path.read_text().count("\n") < 12):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [line for line in path.read_text().split("\n")[:-1]]
    assert len(before) >= 12
    subprocess.run(cmd + ["--max-evals", "40"], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = path.read_text().split("\n")
    assert after[-1] == ""
    recs = [json.loads(line) for line in after[:-1]]          # every line parses
    assert [json.dumps(r, sort_keys=True) for r in recs[:len(before)]] == \
        [json.dumps(json.loads(line), sort_keys=True) for line in before]      # nothing lost
    meas = [r for r in recs if r["kind"] == "measurement"]
    keys = [json.dumps([r["method"], r["config"]], sort_keys=True) for r in meas]
    assert len(keys) == len(set(keys))                          # nothing measured twice
    assert sum(r["kind"] == "result" for r in recs) == 1


def test_truncated_last_line_is_skipped_then_repaired(tmp_path):
    path = tmp_path / "db.jsonl"
    _tune(path, max_evals=2)
    with open(path, "a") as f:
        f.write('{"kind": "measurement", "task": {"M": 6')
    with pytest.warns(UserWarning, match="incomplete last line"):
        db, _ = _tune(path, strategy="random", max_evals=3)
    lines = open(path).read().split("\n")
    assert lines[-1] == "" and all(json.loads(line) for line in lines[:-1])


def test_records_of_another_machine_are_ignored_unless_asked(tmp_path):
    path = tmp_path / "db.jsonl"
    _tune(path, max_evals=2)
    text = open(path).read().replace(TuningDB(str(path)).hardware_id, "0badc0ffee00")
    open(path, "w").write(text)
    said = []
    db = TuningDB(str(path), log=said.append)
    assert not db.records and db.ignored > 0 and "another machine" in said[0] and "--use-foreign" in said[0]
    assert TuningDB(str(path), foreign=True, log=said.append).records


def test_wrong_candidates_are_recorded_and_never_win(tmp_path, monkeypatch):
    real = autotune.sparse_runner

    def sometimes_wrong(A, X, config, layout):
        run = real(A, X, config, layout)
        if config.prefetch == 0:
            def wrong(out):
                run(out)
                out[0, 0] += 100.0
                return out
            return wrong
        return run
    monkeypatch.setattr(autotune, "sparse_runner", sometimes_wrong)
    path = tmp_path / "db.jsonl"
    db, [res] = _tune(path, strategy="exhaustive", max_evals=30)
    meas = _measurements(path)
    wrong = [r for r in meas if r["status"] == "wrong"]
    assert wrong and all(r["config"]["prefetch"] == 0 for r in wrong)
    assert "float64 reference" in wrong[0]["reason"]
    assert res["method"] == "dense" or res["config"]["prefetch"] != 0 or \
        res["config"] == res["default_config"]


def test_the_dense_candidate_is_our_dense_gemm_and_numpy_is_the_yardstick(tmp_path, monkeypatch):
    built = []
    real = autotune.dense_runner

    def counting(W, X, threads, layout):
        built.append(W.shape)
        return real(W, X, threads, layout)
    monkeypatch.setattr(autotune, "dense_runner", counting)
    db, [res] = _tune(tmp_path / "db.jsonl", strategy="exhaustive", max_evals=5)
    assert built                                        # "dense" ran on our dense GEMM
    assert res["numpy_s"] > 0 and res["dense_s"] > 0    # numpy timed beside it, never a choice
    assert res["method"] in ("dense", "sparse")
    dense_meas = [r for r in _measurements(tmp_path / "db.jsonl") if r["method"] == "dense"]
    assert len(dense_meas) == 1 and dense_meas[0]["status"] == "ok"


def test_export_and_lookup_exact_nearest_default(tmp_path):
    path = tmp_path / "db.jsonl"
    db, [res] = _tune(path)
    out = tmp_path / "tuned.json"
    data = export(TuningDB(str(path)), str(out))
    assert data["entries"][0]["M"] == 64 and data["hardware_id"] == db.hardware_id
    tuned = load_tuned(str(out))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = tuned.lookup(64, 48, 24, 0.7, (4, 1), threads=1)
    assert c.exact and c.method == res["method"]
    if c.method == "sparse":
        assert c.config == sb.KernelConfig.from_dict(res["config"])
    with pytest.warns(TunedFallbackWarning, match="not tuned; using the choice tuned for 64x48x24"):
        near = tuned.lookup(64, 48, 32, 0.72, (4, 1))
    assert not near.exact and near.method == c.method
    with pytest.warns(TunedFallbackWarning, match="default heuristic"):
        far = tuned.lookup(4096, 48, 24, 0.7, (4, 1))
    assert far.method == "sparse" and far.config is None
    with pytest.warns(TunedFallbackWarning):
        assert tuned.lookup(64, 48, 24, 0.7, (1, 1)).config is None      # other block


def test_bad_tuned_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found.*sparsebench export"):
        load_tuned(str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_tuned(str(bad))
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError, match="not a sparsebench tuned-config"):
        load_tuned(str(bad))
    bad.write_text(json.dumps({"format": "sparsebench-tuned", "version": 1, "entries": [{"method": "sparse"}]}))
    with pytest.raises(ConfigError, match="malformed entry"):
        load_tuned(str(bad))


def test_cli_autotune_export_and_bad_input(tmp_path, capsys):
    db = tmp_path / "t.jsonl"
    assert main(["autotune", "--shapes", "40x32x16", "--sparsity", "0.8", "--max-evals", "4", "--threads", "1",
                 "--samples", "3", "--db", str(db)]) == 0
    printed = capsys.readouterr().out
    assert "best per task" in printed and "40x32x16" in printed and "default/best" in printed
    assert "% peak" in printed and "peak at 1 threads" in printed
    assert main(["export", "--db", str(db), "--out", str(tmp_path / "tuned.json")]) == 0
    assert load_tuned(str(tmp_path / "tuned.json")).entries
    empty = tmp_path / "empty.csv"
    empty.write_text("# nothing\n")
    assert main(["autotune", "--shapes", str(empty), "--db", str(db)]) == 2
    assert "no shapes" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["autotune", "--shapes", "40x32x16", "--max-evals", "1", "--db", str(blocker / "t.jsonl")]) == 2
    assert "cannot write results" in capsys.readouterr().err
    assert main(["export", "--db", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "x.json")]) == 2
    assert "no finished tuning results" in capsys.readouterr().err


def test_check_strategy_retimes_both_winners_in_fresh_processes(tmp_path, capsys):
    db = tmp_path / "t.jsonl"
    for strategy in ("smart", "exhaustive"):
        assert main(["autotune", "--shapes", "40x32x16", "--sparsity", "0.8", "--threads", "1", "--samples", "3",
                     "--db", str(db), "--strategy", strategy]) == 0
    capsys.readouterr()
    assert main(["check-strategy", "--shapes", "40x32x16,48x32x16", "--sparsity", "0.8", "--threads", "1",
                 "--db", str(db), "--samples", "5", "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert "in each of 2 fresh processes" in out and "not tuned with smart" in out     # 48x32x16: not tuned
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("40x32x16"))
    slowdown, low, high = (float(x) for x in re.findall(r"(\d+\.\d+) \[(\d+\.\d+)-(\d+\.\d+)\]", line)[0])
    assert 0 < low <= slowdown <= high


def test_check_strategy_against_the_best_few_of_a_sweep(tmp_path, monkeypatch, capsys):
    """--top 3: the reference is the fastest, re-timed, of the exhaustive winner and the next two
    configs by the sweep's times, each timed beside the smart winner (a config in both once)."""
    from sparsebench.tune import TuningDB, check
    from sparsebench.tune.records import candidate_of, task_of
    db_path = tmp_path / "t.jsonl"
    for strategy in ("smart", "exhaustive"):
        assert main(["autotune", "--shapes", "40x32x16", "--sparsity", "0.8", "--threads", "1", "--samples", "3",
                     "--db", str(db_path), "--strategy", strategy]) == 0
    db = TuningDB(str(db_path), writable=False)
    task = task_of(db.results()[0])
    table = check.sweep_table(db, task, "exhaustive")
    winner = candidate_of(next(r for r in db.results(task) if r["strategy"] == "exhaustive"))
    refs = list(dict.fromkeys([winner] + sorted(table, key=table.get)))[:3]
    mine = candidate_of(next(r for r in db.results(task) if r["strategy"] == "smart"))
    timed = []
    real = check.interleaved
    monkeypatch.setattr(check, "interleaved", lambda fns, **kw: timed.append(list(fns)) or real(fns, **kw))
    ((mine_s, ref_s, slowdown, fastest),) = check.time_winners([(task, mine, refs)], 3)
    assert timed == [list(dict.fromkeys([str(mine)] + [str(c) for c in refs]))] and len(refs) == 3
    assert fastest in {str(c) for c in refs} and mine_s > 0 and ref_s > 0 and slowdown > 0
    capsys.readouterr()
    assert main(["check-strategy", "--shapes", "40x32x16", "--sparsity", "0.8", "--threads", "1",
                 "--db", str(db_path), "--samples", "3", "--processes", "1", "--top", "3"]) == 0
    assert "the fastest of exhaustive's 3 best configs" in capsys.readouterr().out
    assert main(["check-strategy", "--shapes", "40x32x16", "--db", str(db_path), "--replay", "--top", "3"]) == 2
    assert "--top re-times configs and --replay times nothing" in capsys.readouterr().err


def test_check_strategy_replays_smart_on_the_exhaustive_measurements(tmp_path, capsys):
    db = tmp_path / "t.jsonl"
    assert main(["autotune", "--shapes", "40x32x16", "--sparsity", "0.8", "--threads", "1", "--samples", "3",
                 "--db", str(db), "--strategy", "exhaustive"]) == 0
    capsys.readouterr()
    assert main(["check-strategy", "--shapes", "40x32x16,48x32x16", "--sparsity", "0.8", "--threads", "1",
                 "--db", str(db), "--replay"]) == 0
    out = capsys.readouterr().out
    assert "replayed on the whole-space table exhaustive's run measured" in out
    assert "no exhaustive sweep of all" in out               # 48x32x16 was never tuned
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("40x32x16"))
    evals, space = (int(x) for x in re.search(r"(\d+)/(\d+)", line).groups())
    mine, best, slowdown = (float(x) for x in line.split()[4:7])
    assert 1 <= evals <= space and best <= mine and slowdown >= 1
    assert slowdown == pytest.approx(mine / best, rel=0.05)            # printed to 4 decimals
    # the optimum is the fastest of every measured config of the task
    from sparsebench.tune import Task, TuningDB
    times = [r["median_s"] for c, r in TuningDB(str(db), writable=False).measurements(
        Task(40, 32, 16, 0.8, (4, 1), "float32", 1)).items() if c != "dense" and r["status"] == "ok"]
    assert best == pytest.approx(min(times) * 1e3, abs=6e-5)


def test_nearby_winners_of_one_strategy_only(tmp_path):
    """The replay seeds a strategy with its own winners of other tasks, never with the optima of
    the exhaustive run it is judged against."""
    from sparsebench.tune.records import candidate_of, nearby_winners
    db = TuningDB(str(tmp_path / "db.jsonl"), log=lambda *a: None)
    quiet = dict(samples=3, confirm_samples=3, log=lambda *a: None)
    for strategy, n in (("random", 64), ("exhaustive", 96)):
        Autotuner(db, strategy, max_evals=3, **quiet).tune_all([Shape("s", 256, 256, n)], [0.9], [(4, 1)],
                                                               threads=1)
    winners = {r["strategy"]: candidate_of(r) for r in db.results() if r["method"] == "sparse"}
    assert set(winners) == {"random", "exhaustive"}, "both runs must pick a sparse config here"
    third = Task(256, 256, 80, 0.9, (4, 1), "float32", 1)
    assert set(nearby_winners(db, third)) == set(winners.values())
    assert nearby_winners(db, third, strategy="random") == [winners["random"]]
    assert nearby_winners(db, third, strategy="smart") == []


def test_a_task_whose_time_share_is_spent_still_times_dense_and_ends_cleanly(tmp_path, monkeypatch, steady_machine):
    clock = iter([0.0] + [1e9] * 100000)            # the deadline passes at once
    db = TuningDB(str(tmp_path / "db.jsonl"), log=lambda *a: None)
    tuner = Autotuner(db, "smart", samples=3, confirm_samples=3, log=lambda *a: None)
    monkeypatch.setattr(autotune.time, "monotonic", lambda: next(clock))
    res = tuner.tune(Task(SMALL.M, SMALL.K, SMALL.N, 0.7, (4, 1), "float32", 1), SMALL.name, time_share=1.0)
    assert res["evals"] == 0 and res["dense_s"] > 0
    assert [r["method"] for r in _measurements(tmp_path / "db.jsonl")] == ["dense"]


def test_a_tuning_result_keeps_the_probes_of_the_attempt_it_keeps(tmp_path, monkeypatch):
    """The finalists' re-timing is repeated while degraded; when no attempt is clean the result
    is the attempt whose slower probe ran fastest, and its record carries that attempt's probes."""
    from sparsebench import peak
    monkeypatch.setattr(peak, "peak", lambda threads, max_age=None: peak.Peak(1, 100.0, None, 100.0, None, "t", 0.0))
    rates = iter([100.0, 60.0, 40.0, 40.0, 30.0, 30.0, 20.0, 20.0])   # start, after; then (again, after) x 3
    monkeypatch.setattr(peak, "_run", lambda *a: next(rates))
    monkeypatch.setattr(peak._CopyProbe, "rate", lambda self, repeats=1: 30.0)
    db, [res] = _tune(tmp_path / "db.jsonl", max_evals=2)
    assert res["degraded"] is True
    assert [(p["label"], p["gflops"]) for p in res["peak_probes"]] == [("start", 100.0), (SMALL.name, 60.0)]


def test_a_degraded_probe_marks_the_tuning_result(tmp_path, monkeypatch):
    from sparsebench import peak
    monkeypatch.setattr(peak, "peak", lambda threads, max_age=None: peak.Peak(1, 100.0, None, 100.0, None, "t", 0.0))
    monkeypatch.setattr(peak, "_run", lambda *a: 50.0)
    monkeypatch.setattr(peak._CopyProbe, "rate", lambda self, repeats=1: 30.0)
    db, [res] = _tune(tmp_path / "db.jsonl", max_evals=2)
    assert res["degraded"] is True and db.results()[-1]["degraded"] is True
