"""The comparison harness: statistics, interleaving, the correctness gate, resumable CSV, CLI."""
import csv
import re

import numpy as np
import pytest

from sparsebench import store
from sparsebench.bench import baselines
from sparsebench.bench.baselines import MethodUnavailable
from sparsebench.cli.main import main
from sparsebench.bench.compare import FIELDS, Compare, _csv_line, layout_table, read_rows, speedup_table
from sparsebench.bench.shapes import Shape
from sparsebench.bench.timing import Stats, interleaved, ratio
from sparsebench.bench.verify import Reference

TINY = [Shape("tiny", 40, 36, 9)]


def test_stats_percentiles_and_instability():
    st = Stats(np.array([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert (st.median, st.min, st.n) == (3.0, 1.0, 5)
    assert st.p20 == pytest.approx(1.8) and st.p80 == pytest.approx(4.2)
    assert st.spread == pytest.approx(0.8) and st.unstable
    assert not Stats(np.array([1.0, 1.01, 0.99, 1.0])).unstable


def test_interleaved_runs_methods_round_robin_and_ratio_pairs_rounds():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    stats = interleaved(fns, samples=6, warmup=0, sample_time=0)
    timed = calls[-18:]               # after calibration: 6 rounds of one call each
    rounds = [timed[i:i + 3] for i in range(0, 18, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert rounds[0][0] != rounds[1][0]          # the order rotates
    assert all(s.n == 6 for s in stats.values())
    r = ratio(Stats(np.array([2.0, 4.0])), Stats(np.array([1.0, 1.0])))
    assert list(r.samples) == [2.0, 4.0]


def test_cold_mode_times_single_calls():
    st = interleaved({"x": lambda: None}, samples=3, warmup=0, cold=True)
    assert st["x"].loops == 1 and st["x"].n == 3


def test_reference_bound_accepts_reordered_sums_and_rejects_wrong():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((30, 500), dtype=np.float32)
    X = rng.standard_normal((500, 7), dtype=np.float32)
    ref = Reference(W, X)
    assert ref.check(W @ X)[0]
    assert ref.check((W[:, ::-1] @ X[::-1]).astype(np.float32))[0]   # another summation order
    bad = (W @ X)
    bad[3, 2] += 0.5            # e.g. one product w*x missing
    ok, err = ref.check(bad)
    assert not ok and err > 0
    assert not ref.check((W @ X).astype(np.float64))[0]     # wrong dtype
    assert not ref.check(np.zeros((7, 30), np.float32))[0]  # wrong shape


class _Wrong(baselines.Baseline):
    name = "wrong"

    def prepare(self, problem):
        Y = np.empty((problem.W.shape[0], problem.X.shape[1]), np.float32)

        def run():
            np.matmul(problem.W, problem.X, out=Y)
            Y[0, 0] += 1.0
            return Y
        return run


class _Missing(baselines.Baseline):
    name = "missing"

    def prepare(self, problem):
        raise MethodUnavailable("libfoo is not installed: pip install foo")


class _Broken(baselines.Baseline):
    name = "broken"

    def prepare(self, problem):
        raise RuntimeError("boom")


@pytest.fixture
def fake_methods(monkeypatch):
    for m in (_Wrong(), _Missing(), _Broken()):
        monkeypatch.setitem(baselines._REGISTRY, m.name, m)


def test_correctness_gate_fails_wrong_method_and_keeps_going(tmp_path, fake_methods, steady_machine):
    out = tmp_path / "c.csv"
    logged = []
    rows = Compare(["dense", "wrong", "missing", "broken", "sparsebench"], threads=1, samples=3,
                   out=str(out), log=logged.append).run(TINY, [0.5], [(4, 1)])
    by = {r["method"]: r for r in rows}
    assert by["wrong"]["status"] == "wrong" and by["wrong"]["median_ms"] == ""
    assert "float64 reference" in by["wrong"]["reason"]
    assert by["missing"]["status"] == "skipped" and "pip install foo" in by["missing"]["reason"]
    assert by["broken"]["status"] == "error" and "boom" in by["broken"]["reason"]
    assert by["sparsebench"]["status"] == "ok" and "/b4x1/" in by["sparsebench"]["config"]
    assert float(by["dense"]["speedup"]) == 1.0
    assert float(by["sparsebench"]["max_rel_error"]) < 1e-5
    assert any("skipping missing: libfoo" in line for line in logged)
    assert read_rows(str(out)) == rows


def test_every_builtin_method_passes_the_gate(tmp_path, steady_machine):
    rows = Compare(["dense", "scipy-csr", "scipy-bsr", "generic-csr", "sparsebench"], threads=2,
                   samples=3).run([Shape("odd", 37, 53, 5), Shape("n1", 64, 64, 1)], [0.0, 0.9], [(4, 1)])
    assert len(rows) == 2 * 2 * 5
    for r in rows:
        assert r["status"] in ("ok", "skipped"), r
    assert {r["method"] for r in rows if r["status"] == "skipped"} <= {"scipy-bsr"}  # 37 % 4 != 0


def test_rows_survive_interruption_and_resume_measures_only_missing(tmp_path, monkeypatch, steady_machine):
    out = str(tmp_path / "c.csv")
    shapes = [Shape("a", 16, 16, 4), Shape("b", 24, 16, 4)]
    cmp = Compare(["dense", "sparsebench"], threads=1, samples=3, out=out)
    real = cmp.run_case
    calls = []

    def interrupted(shape, block, sparsity):
        if shape.name == "b":
            raise KeyboardInterrupt
        calls.append(shape.name)
        return real(shape, block, sparsity)
    monkeypatch.setattr(cmp, "run_case", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cmp.run(shapes, [0.5], [(1, 1)])
    assert [r["shape"] for r in read_rows(out)] == ["a", "a"]
    # a kill -9 in the middle of a write leaves a cut-off line: it is ignored, then repaired
    with open(out, "a") as f:
        f.write("b,24,16,4,1x1,0.5,float32,1,warm,dense,o")
    again = Compare(["dense", "sparsebench"], threads=1, samples=3, out=out)
    measured = []
    monkeypatch.setattr(again, "run_case", lambda *a: measured.append(a[0].name) or real(*a))
    with pytest.warns(UserWarning, match="incomplete last line"):
        rows = again.run(shapes, [0.5], [(1, 1)])
    assert measured == ["b"]
    assert sorted(r["shape"] for r in rows) == ["a", "a", "b", "b"]
    assert sorted(r["shape"] for r in read_rows(out)) == ["a", "a", "b", "b"]


def test_resume_archives_another_builds_rows_and_keeps_other_machines(tmp_path, monkeypatch, steady_machine):
    """Rows of this machine from another build are not resumed: the case is measured again and
    its old rows move to the archive beside the CSV (nothing lost, one row per case and method
    left); a row of this build for a method not asked for stays; another machine's rows stay in
    the file, neither resumed nor shown."""
    import gzip
    from sparsebench.bench.compare import archive_path
    out = str(tmp_path / "c.csv")
    shapes = [Shape("a", 16, 16, 4), Shape("b", 24, 16, 4)]
    Compare(["dense", "sparsebench"], threads=1, samples=3, out=out, log=lambda *a: None).run(shapes, [0.5], [(1, 1)])
    rows = read_rows(out)
    for r in rows:
        if r["shape"] == "a":
            r["build_id"] = "oldbuild0000"
    other = [dict(r, hardware_id="otherhw00000", median_ms="9") for r in rows if r["shape"] == "b"]
    with open(out, "w") as f:
        f.write(",".join(FIELDS) + "\n" + "".join(_csv_line(r) + "\n" for r in rows + other))
    logged, measured = [], []
    again = Compare(["sparsebench"], threads=1, samples=3, out=out, log=logged.append)
    real = again.run_case
    monkeypatch.setattr(again, "run_case", lambda *a: measured.append(a[0].name) or real(*a))
    shown = again.run(shapes, [0.5], [(1, 1)])
    assert measured == ["a"]
    assert any("1 rows of this machine from another build" in line for line in logged)
    here, build = again.meta["hardware_id"], again.meta["build_id"]
    assert all(r["hardware_id"] == here for r in shown)
    assert sorted((r["shape"], r["method"]) for r in shown) == [
        ("a", "dense"), ("a", "sparsebench"), ("b", "dense"), ("b", "sparsebench")]
    kept = read_rows(out)
    assert sorted((r["shape"], r["method"], r["hardware_id"] == here, r["build_id"] == build) for r in kept) == [
        ("a", "dense", True, False),                     # not asked for: stays as it was
        ("a", "sparsebench", True, True),                # measured again
        ("b", "dense", False, True), ("b", "dense", True, True),
        ("b", "sparsebench", False, True), ("b", "sparsebench", True, True)]
    with gzip.open(archive_path(out), "rt") as f:
        archived = list(csv.DictReader(f))
    assert [(r["build_id"], r["method"]) for r in archived] == [("oldbuild0000", "sparsebench")]


def test_resume_measures_again_where_a_retune_changed_the_config(tmp_path, monkeypatch, steady_machine):
    """A case whose rows name another config than our method would now run (a re-tune since,
    same build) is measured again, its old rows archived; the other case resumes."""
    import gzip
    from sparsebench.bench.compare import archive_path
    import sparsebench as sb
    out = str(tmp_path / "c.csv")
    shapes = [Shape("a", 16, 16, 4), Shape("b", 24, 16, 4)]

    def tuned(pick):
        """a tuner's choice for shape a (the pick-th config), none for b"""
        def config_for(A, n, s, layout="features"):
            return sb.kernel_configs(A, n, threads=1)[pick] if A.shape[0] == 16 else None
        return config_for
    first = Compare(["dense", "sparsebench"], threads=1, samples=3, out=out, log=lambda *a: None,
                    config_for=tuned(0))
    first.run(shapes, [0.5], [(1, 1)])
    old = {r["shape"]: r for r in read_rows(out) if r["method"] == "sparsebench"}["a"]
    logged, measured = [], []
    again = Compare(["dense", "sparsebench"], threads=1, samples=3, out=out, log=logged.append, config_for=tuned(-1))
    real = again.run_case
    monkeypatch.setattr(again, "run_case", lambda *a: measured.append(a[0].name) or real(*a))
    again.run(shapes, [0.5], [(1, 1)])
    assert measured == ["a"]
    rows = read_rows(out)
    assert sorted((r["shape"], r["method"]) for r in rows) == [
        ("a", "dense"), ("a", "sparsebench"), ("b", "dense"), ("b", "sparsebench")]
    new = next(r for r in rows if r["shape"] == "a" and r["method"] == "sparsebench")
    assert old["status"] == new["status"] == "ok" and old["config"] != new["config"]
    assert any(f"sparsebench now runs {new['config']}" in line for line in logged)
    with gzip.open(archive_path(out), "rt") as f:
        archived = list(csv.DictReader(f))
    assert sorted((r["shape"], r["method"]) for r in archived) == [("a", "dense"), ("a", "sparsebench")]
    resumed = Compare(["dense", "sparsebench"], threads=1, samples=3, out=out, log=lambda *a: None,
                      config_for=tuned(-1))
    monkeypatch.setattr(resumed, "run_case", lambda *a: measured.append(a[0].name) or real(*a))
    resumed.run(shapes, [0.5], [(1, 1)])
    assert measured == ["a"]                      # nothing changed since: all resumed


def test_a_reason_with_commas_and_newlines_stays_one_row_and_archives_line_by_line(tmp_path, steady_machine):
    """A row's text (an error message) is written on one line, commas quoted: the archive step
    then moves exactly the chosen rows, whatever the rows around them say."""
    import gzip
    from sparsebench.bench.compare import archive_path
    out = str(tmp_path / "c.csv")
    cmp = Compare(["dense", "sparsebench"], threads=1, samples=3, out=out, log=lambda *a: None)
    cmp.run([Shape("a", 16, 16, 4), Shape("b", 24, 16, 4)], [0.5], [(1, 1)])
    rows = read_rows(out)
    rows[0]["reason"] = 'boom, "quoted"\nsecond line, more'
    rows[2]["build_id"] = "oldbuild0000"                     # b's dense row: another build
    with open(out, "w") as f:
        f.write(",".join(FIELDS) + "\n" + "".join(_csv_line(r) + "\n" for r in rows))
    assert len(open(out).read().splitlines()) == 1 + len(rows)
    assert read_rows(out)[0]["reason"] == 'boom, "quoted" second line, more'
    again = Compare(["dense"], threads=1, samples=3, out=out, log=lambda *a: None)
    again.run([Shape("a", 16, 16, 4), Shape("b", 24, 16, 4)], [0.5], [(1, 1)])
    with gzip.open(archive_path(out), "rt") as f:
        archived = list(csv.DictReader(f))
    assert [(r["shape"], r["method"], r["build_id"]) for r in archived] == [("b", "dense", "oldbuild0000")]
    assert sorted((r["shape"], r["method"]) for r in read_rows(out)) == [
        ("a", "dense"), ("a", "sparsebench"), ("b", "dense"), ("b", "sparsebench")]


def test_foreign_csv_is_refused_with_advice(tmp_path):
    out = tmp_path / "c.csv"
    out.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(store.StoreError, match="--rerun"):
        read_rows(str(out))


def test_rerun_sets_earlier_results_aside_without_overwriting_them(tmp_path, capsys, steady_machine):
    """--rerun moves the CSV to .bak, then .bak.2, ...: a second --rerun keeps the first's copy."""
    out = tmp_path / "c.csv"
    args = ["compare", "--shapes", "16x16x4", "--sparsity", "0.5", "--threads", "1", "--samples", "3",
            "--methods", "dense", "--out", str(out)]
    assert main(args) == 0
    first = out.read_text()
    assert main(args + ["--rerun"]) == 0 and (tmp_path / "c.csv.bak").read_text() == first
    second = out.read_text()
    assert main(args + ["--rerun"]) == 0
    assert (tmp_path / "c.csv.bak").read_text() == first and (tmp_path / "c.csv.bak.2").read_text() == second
    assert "previous results moved to " + str(out) + ".bak.2" in capsys.readouterr().out


def test_store_rewrite_lines_leaves_the_file_or_replaces_it_whole(tmp_path):
    path = str(tmp_path / "f.txt")
    store.append_lines(path, ["a", "b"])
    assert not store.rewrite_lines(path, lambda lines: None) and store.read_lines(path) == ["a", "b"]
    assert store.rewrite_lines(path, lambda lines: [x.upper() for x in lines]) and store.read_lines(path) == ["A", "B"]
    store.append_lines(path, ["c"])                       # appends go on to the new file
    assert store.read_lines(path) == ["A", "B", "c"]


def test_store_appends_concurrently_without_tearing(tmp_path):
    import multiprocessing as mp
    path = str(tmp_path / "s.jsonl")
    procs = [mp.Process(target=_writer, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    recs = store.read_json(path)
    assert len(recs) == 4 * 50
    assert sorted((r["w"], r["i"]) for r in recs) == [(w, i) for w in range(4) for i in range(50)]


def _writer(path, w):
    for i in range(50):
        store.append_json(path, [{"w": w, "i": i, "pad": "x" * 3000}])


def test_store_unwritable_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    with pytest.raises(store.StoreError, match="cannot write results"):
        store.append_lines(str(blocker / "x.csv"), ["a"])


def test_cli_compare_prints_table_and_writes_tidy_csv(tmp_path, capsys):
    out = tmp_path / "cmp.csv"
    assert main(["compare", "--shapes", "48x40x12", "--sparsity", "0.5,0.8", "--block", "4x1",
                 "--methods", "dense,generic-csr,sparsebench", "--threads", "1", "--samples", "3",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "speedup over numpy dense" in printed and "generic-csr" in printed
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == FIELDS
    assert len(rows) == 2 * 3
    assert {r["status"] for r in rows} == {"ok"}
    for r in rows:
        assert float(r["p20_ms"]) <= float(r["median_ms"]) <= float(r["p80_ms"])
        assert r["threads"] == "1" and r["cache"] == "warm" and r["hardware_id"]
        gflops = 2 * 48 * 40 * 12 / (float(r["median_ms"]) * 1e-3) / 1e9
        assert float(r["gflops"]) == pytest.approx(gflops, rel=1e-3)


def test_cli_compare_bad_arguments(tmp_path, capsys):
    assert main(["compare", "--shapes", "8x8x8", "--methods", "dense,nope", "--out", str(tmp_path / "x.csv")]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["compare", "--shapes", "no-such-set", "--out", str(tmp_path / "x.csv")]) == 2
    assert "no shape file or set named" in capsys.readouterr().err


def test_rows_report_pct_of_the_measured_peak(tmp_path):
    rows = Compare(["dense", "sparsebench"], threads=1, samples=3, out=str(tmp_path / "c.csv")).run(TINY, [0.5], [(4, 1)])
    for r in rows:
        assert 0 < float(r["pct_peak"]) <= 100 * 1.2, r
        assert float(r["peak_gflops"]) > 0 and float(r["probe_gflops"]) > 0 and r["degraded"] in ("True", "False")
    by = {r["method"]: r for r in rows}
    dense = by["dense"]
    assert float(dense["pct_peak"]) == pytest.approx(100 * float(dense["gflops"]) / float(dense["peak_gflops"]), rel=1e-3)
    ours = by["sparsebench"]
    assert float(ours["pct_peak"]) == pytest.approx(100 * float(ours["effective_gflops"]) / float(ours["peak_gflops"]), rel=1e-3)


def test_a_degraded_case_is_measured_again_until_a_clean_attempt(tmp_path, monkeypatch):
    """A case beside a slow probe is measured again (up to peak.ATTEMPTS times); the first clean
    attempt counts. Probes: start, after a (slow), again (slow), after a (clean, but the probe
    before it was slow), again, after a (clean), after b."""
    from sparsebench import peak
    monkeypatch.setattr(peak, "peak", lambda threads, max_age=None: peak.Peak(1, 100.0, None, 100.0, None, "test", 0.0))
    rates = iter([100.0, 50.0, 40.0, 100.0, 100.0, 100.0, 100.0])
    monkeypatch.setattr(peak, "_run", lambda *a: next(rates))
    monkeypatch.setattr(peak._CopyProbe, "rate", lambda self, repeats=1: 30.0)
    logged = []
    cmp = Compare(["dense"], threads=1, samples=3, log=logged.append)
    runs = []
    real = cmp.run_case
    monkeypatch.setattr(cmp, "run_case", lambda *a: runs.append(a[0].name) or real(*a))
    rows = cmp.run([Shape("a", 16, 16, 4), Shape("b", 16, 16, 4)], [0.5], [(1, 1)])
    assert runs == ["a", "a", "a", "b"]
    by = {r["shape"]: r for r in rows}
    assert by["a"]["degraded"] == "False" and by["a"]["probe_gflops"] == "100"
    assert by["b"]["degraded"] == "False"
    assert sum("measuring again" in line for line in logged) == 2


def test_a_case_degraded_at_every_attempt_keeps_the_least_degraded_and_is_marked(tmp_path, monkeypatch):
    from sparsebench import peak
    monkeypatch.setattr(peak, "peak", lambda threads, max_age=None: peak.Peak(1, 100.0, None, 100.0, None, "test", 0.0))
    # start, then per attempt: (again,) after. Attempt 2's slower probe (70) is the best.
    rates = iter([100.0, 50.0, 70.0, 80.0, 40.0, 60.0, 30.0, 60.0])
    monkeypatch.setattr(peak, "_run", lambda *a: next(rates))
    monkeypatch.setattr(peak._CopyProbe, "rate", lambda self, repeats=1: 30.0)
    cmp = Compare(["dense"], threads=1, samples=3, log=lambda *a: None)
    runs = []
    real = cmp.run_case
    monkeypatch.setattr(cmp, "run_case", lambda *a: runs.append(a[0].name) or real(*a))
    rows = cmp.run([Shape("a", 16, 16, 4)], [0.5], [(1, 1)])
    assert runs == ["a"] * peak.ATTEMPTS
    assert rows[0]["degraded"] == "True" and rows[0]["probe_gflops"] == "70"
    assert "!" in speedup_table(rows, ["dense"])


@pytest.mark.parametrize("earlier", [0, 1], ids=["before the peak columns", "before the ratio columns"])
def test_a_compare_csv_of_an_earlier_header_loads_and_resumes(tmp_path, steady_machine, earlier):
    from sparsebench.bench.compare import EARLIER_HEADERS
    header = EARLIER_HEADERS[earlier]
    out = tmp_path / "c.csv"
    Compare(["dense", "sparsebench"], threads=1, samples=3, out=str(out)).run(TINY, [0.5], [(4, 1)])
    rows = list(csv.DictReader(open(out)))
    with open(out, "w", newline="") as f:                  # as an earlier version wrote it
        w = csv.DictWriter(f, header, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    old = read_rows(str(out))
    assert len(old) == 2 and all(r[k] == "" for r in old for k in FIELDS if k not in header)
    with open(out, "a") as f:
        f.write("not,a,row\n")                             # kept as it is by the upgrade, not dropped
    rows = Compare(["dense", "sparsebench"], threads=1, samples=3, out=str(out)).run(
        TINY + [Shape("b", 16, 16, 4)], [0.5], [(4, 1)])
    assert open(out).readline().strip() == ",".join(FIELDS) and "not,a,row\n" in open(out).read()
    new = read_rows(str(out))
    assert [r["shape"] for r in new] == ["tiny", "tiny", "b", "b"]
    assert new[2]["pct_peak"] != "" and new[2]["vs_sparsebench"] != ""      # dense over ours, per round
    assert float(new[2]["vs_sparsebench_p20"]) <= float(new[2]["vs_sparsebench"]) <= float(new[2]["vs_sparsebench_p80"])
    assert new[3]["vs_sparsebench"] == ""


def test_the_layout_table_uses_the_per_round_ratio(tmp_path, steady_machine):
    """The token / feature table of a run with both methods shows the per-round ratio with its
    spread; rows written before the ratio columns fall back to the ratio of the medians."""
    rows = Compare(["sparsebench", "sparsebench-tokens"], threads=1, samples=5, log=lambda *a: None).run(
        TINY, [0.5], [(4, 1)])
    tokens = next(r for r in rows if r["method"] == "sparsebench-tokens")
    line = layout_table(rows).splitlines()[-1]
    assert f"{float(tokens['vs_sparsebench']):.2f} ({float(tokens['vs_sparsebench_p20']):.2f}-" in line
    for r in rows:
        r["vs_sparsebench"] = ""
    ours = next(r for r in rows if r["method"] == "sparsebench")
    assert layout_table(rows).splitlines()[-1].endswith(
        f"{float(tokens['median_ms']) / float(ours['median_ms']):.2f}")


def test_methods_take_x_with_rows_padded_apart(tmp_path, steady_machine):
    """N = 512: X's rows are padded apart (arrays.activations); every method still computes."""
    methods = ["dense", "generic-csr", "scipy-csr", "sparsebench", "sparsebench-dense", "sparsebench-tokens"]
    rows = Compare(methods, threads=1, samples=3, log=lambda *a: None).run([Shape("p", 16, 8, 512)], [0.5], [(4, 1)])
    assert {r["method"]: r["status"] for r in rows} == dict.fromkeys(methods, "ok")


def test_token_major_method_checks_its_result_as_m_by_n(steady_machine):
    """sparsebench-tokens runs the default token-major config (the sparsebench one, with panel
    tasks where they can run) on X tokens x features; its Y is verified against the same
    reference (odd shapes, 2 threads)."""
    rows = Compare(["sparsebench", "sparsebench-tokens"], threads=2, samples=3, log=lambda *a: None).run(
        [Shape("odd", 45, 67, 131)], [0.7], [(4, 1), (1, 4)])
    assert [r["status"] for r in rows] == ["ok"] * 4
    by = {(r["block"], r["method"]): r for r in rows}
    for block in ("4x1", "1x4"):
        tokens, features = by[block, "sparsebench-tokens"]["config"], by[block, "sparsebench"]["config"]
        assert re.sub(r"/np\d+/", "/np0/", tokens) == features and ("/np0/" in tokens) == (block == "1x4")
        assert float(by[block, "sparsebench-tokens"]["max_rel_error"]) < 1e-5


def test_the_int8_table_shows_fp32_over_int8_per_round():
    from sparsebench.bench.compare import int8_table
    case = dict(shape="s", M="8", K="8", N="4", block="4x1", sparsity="0.5", status="ok", max_rel_error="0.01")
    rows = [dict(case, method="sparsebench", median_ms="1.0", vs_sparsebench=""),
            dict(case, method="sparsebench-fp32", median_ms="2.4", vs_sparsebench="2.1",
                 vs_sparsebench_p20="1.9", vs_sparsebench_p80="2.3")]
    assert int8_table(rows).splitlines()[-1].split()[-3:] == ["2.10", "(1.90-2.30)", "1.00%"]
    rows[1]["vs_sparsebench"] = ""                        # a file of an earlier header
    assert int8_table(rows).splitlines()[-1].split()[-2:] == ["2.40", "1.00%"]
