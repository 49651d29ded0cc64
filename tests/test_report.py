"""`sparsebench report`: reports built from small synthetic result files, checked by content."""
import argparse
import csv
import json
import os

import pandas as pd
import pytest

from sparsebench.tune import apply as tuned
from sparsebench.bench.compare import FIELDS
from sparsebench.cli import report as cli
from sparsebench.report import ReportError, build_report
from sparsebench.report import analysis, tables
from sparsebench.report.load import load_results

SHAPES = [("attn", 64, 48, 16), ("ffn", 128, 48, 16)]
ALL_FIGURES = ("speedup", "gflops", "tuned_parameters", "tuned_vs_default", "convergence", "bert", "bert_breakdown")


# -- synthetic inputs --------------------------------------------------------------------------

def compare_row(shape, sparsity, method, status="ok", **values):
    name, M, K, N = shape
    row = {f: "" for f in FIELDS}
    row.update(shape=name, M=M, K=K, N=N, block="4x1", sparsity=f"{sparsity:g}", dtype="float32", threads=2,
               cache="warm", method=method, status=status, cpu="Test CPU 9000", hardware_id="hw0123456789",
               build_id="build0123456", sparsebench="0.1.0", timestamp="2026-01-02T03:04:05",
               library={"dense": "numpy 9.9, openblas 0.3.99", "sparsebench": "sparsebench 0.1.0"}.get(method,
                                                                                                      "scipy 1.99"))
    if status == "ok":
        dense_ms = 1.0
        sp = values.pop("speedup", 1.0)
        t = dense_ms / sp
        flops = 2 * M * K * N
        row.update(median_ms=t, p20_ms=t * 0.97, p80_ms=t * 1.03, min_ms=t * 0.95, spread=0.06, unstable=False,
                   samples=9, loops=3, gflops=flops / (t * 1e-3) / 1e9,
                   effective_gflops=flops * (1 - sparsity) / (t * 1e-3) / 1e9, speedup=sp,
                   speedup_p20=sp * 0.96, speedup_p80=sp * 1.03, max_rel_error=1e-7)
    row.update(values)
    return row


def compare_rows():
    rows = []
    for i, shape in enumerate(SHAPES):
        for j, s in enumerate((0.8, 0.9)):
            rows.append(compare_row(shape, s, "dense"))
            rows.append(compare_row(shape, s, "sparsebench", speedup=3.21 + i + 2 * j,
                                    config="avx512/b4x1/nt32/np0/ks0/mt0/pf0/t2"))
            rows.append(compare_row(shape, s, "scipy-csr", speedup=0.45 + 0.1 * j,
                                    unstable=(i, j) == (1, 1)))
            rows.append(compare_row(shape, s, "mkl", "skipped", reason="needs the mkl package (pip install mkl)"))
    rows[-3] = compare_row(SHAPES[1], 0.9, "sparsebench", "wrong", reason="result differs (max rel. error 3.0e-01)")
    return rows


def write_compare(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def config(n_tile=32, prefetch=0, k_slice=0, m_tile=0):
    return {"block": [4, 1], "isa": "avx512", "n_tile": n_tile, "n_panel": 0, "k_slice": k_slice,
            "m_tile": m_tile, "prefetch": prefetch, "threads": 2}


def task(shape, sparsity):
    _, M, K, N = shape
    return {"M": M, "K": K, "N": N, "sparsity": sparsity, "block": "4x1", "dtype": "float32", "threads": 2}


def tuning_records():
    """Two strategies on three tasks; (ffn, 0.9) is won by dense."""
    recs = []
    base = {"format": 1, "hardware_id": "hw0123456789", "build_id": "build0123456",
            "timestamp": "2026-01-02T04:00:00"}
    cases = [(SHAPES[0], 0.8, config(32, prefetch=4), 1.0e-4, 1.25e-4),
             (SHAPES[0], 0.9, config(64, k_slice=64), 0.5e-4, 0.55e-4),
             (SHAPES[1], 0.9, None, 2.0e-4, 2.4e-4)]
    for shape, s, cfg, best, default in cases:
        for strategy, traj in (("smart", [2 * best, None, 1.5 * best, best]),
                               ("random", [2 * best, 1.8 * best, 1.2 * best])):
            recs.append({**base, "kind": "measurement", "task": task(shape, s), "strategy": strategy,
                         "method": "sparse", "config": config(), "status": "ok", "median_s": best,
                         "p20_s": best, "p80_s": best, "min_s": best, "samples": 7, "unstable": False})
            recs.append({**base, "kind": "result", "task": task(shape, s), "strategy": strategy, "name": shape[0],
                         "max_evals": 4, "evals": len(traj), "space_size": 40,
                         "method": "dense" if cfg is None else "sparse", "config": cfg,
                         "best_s": best if strategy == "smart" else best * 1.1, "best_p20_s": best * 0.98,
                         "best_p80_s": best * 1.02, "dense_s": 10 * best, "default_s": default,
                         "default_config": config(32), "unstable": s == 0.9 and cfg is not None,
                         "trajectory": traj})
    return recs


def tuned_file():
    entries = [{"name": "attn", "M": 64, "K": 48, "N": 16, "sparsity": 0.8, "block": [4, 1], "dtype": "float32",
                "threads": 2, "method": "sparse", "config": config(16), "time_s": 1e-4, "dense_s": 1e-3,
                "default_s": 2e-4, "speedup": 10.0, "strategy": "smart", "evals": 4}]
    return {"format": tuned.FORMAT, "version": tuned.VERSION, "created": "2026-01-02T05:00:00",
            "database": "tuning.jsonl", "hardware": {"cpu": "Test CPU 9000", "isa": ["avx2", "avx512f"], "cores": 2},
            "hardware_id": "hw0123456789", "build": {"version": "0.1.0", "kernel_hashes": {"float32": "abc"},
                                                     "compiler": "cc 12", "flags": {"avx512": ["-O3", "-mavx512f"]}},
            "build_id": "build0123456", "entries": entries}


BERT_CSV = """model,runner,sparsity,block,batch,seq,threads,p50_ms,p90_ms,throughput,hardware_id,cpu
bert-mini,sparsebench,0.9,4x1,1,128,2,1.9,2.4,526,hw0123456789,Test CPU 9000
bert-mini,onnxruntime,,,1,128,2,4.2,4.6,238,hw0123456789,Test CPU 9000
bert-base,sparsebench,0.9,4x1,1,128,2,21.5,23.9,,hw0123456789,Test CPU 9000
"""


# what `sparsebench bert` writes into results/bert/ (latency, per-op breakdown, kernels per layer)
RUNNER_LATENCY = """model,sparsity,block,method,description,version,batch,seq,threads,p50_ms,p90_ms,p20_ms,p80_ms,\
throughput_seq_s,samples,unstable,max_rel_diff_vs_ours,ours_speedup
distilbert,0.9,4x1,sparsebench,ours,v,1,128,2,10.0,11.0,9.9,10.5,100.0,30,False,0.0,1.0
distilbert,0.9,4x1,dense,numpy dense,v,1,128,2,45.0,50.0,44.0,49.0,22.2,30,True,1e-7,4.5
"""
RUNNER_BREAKDOWN = """model,sparsity,block,batch,seq,category,ms,share
distilbert,0.9,4x1,1,128,sparse GEMMs,4.0,0.8
distilbert,0.9,4x1,1,128,softmax,1.0,0.2
distilbert,0.9,4x1,1,128,GELU,0.0,0.0
"""
RUNNER_KERNELS = """layer,linear,M,K,N,block,sparsity,method,kernel,source,note
0,query,768,768,128,4x1,0.9,sparse,avx512/b4x1/nt64/np0/ks0/mt0/pf4/t2,default heuristic,no tuned file
"""


def write_results(folder, compare=True, tuning=True, tuned_json=True, bert=True, broken=True):
    os.makedirs(folder, exist_ok=True)
    if compare:
        write_compare(os.path.join(folder, "compare-quick.csv"), compare_rows())
    if tuning:
        with open(os.path.join(folder, "tuning.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in tuning_records())
    if tuned_json:
        with open(os.path.join(folder, "tuned.json"), "w") as f:
            json.dump(tuned_file(), f)
    if bert:
        with open(os.path.join(folder, "bert-quick.csv"), "w") as f:
            f.write(BERT_CSV)
        os.makedirs(os.path.join(folder, "bert"), exist_ok=True)
        stem = os.path.join(folder, "bert", "distilbert-s0.9-4x1-b1-seq128-t2")
        for suffix, text in (("latency", RUNNER_LATENCY), ("breakdown", RUNNER_BREAKDOWN),
                             ("kernels", RUNNER_KERNELS)):
            with open(f"{stem}-{suffix}.csv", "w") as f:
                f.write(text)
        with open(f"{stem}.json", "w") as f:             # the runner's meta: which machine
            json.dump({"meta": {"hardware_id": "hw0123456789", "cpu": "Test CPU 9000"}}, f)
    if broken:
        with open(os.path.join(folder, "compare-broken.csv"), "w") as f:
            f.write("this,is,not,a,compare,file\n1,2,3,4,5,6\n")
    return folder


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """One report from every kind of input plus a malformed compare file."""
    root = tmp_path_factory.mktemp("report")
    results = write_results(str(root / "results"))
    out = str(root / "out")
    log = []
    summary = build_report(results, out, log=log.append)
    return summary, _read(summary.markdown), _read(summary.html), out, log


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# -- the full report ---------------------------------------------------------------------------

def test_full_report_makes_every_figure_as_png_and_svg(full):
    summary, md, html, out, _ = full
    assert summary.skipped == {}
    assert [os.path.basename(p) for p in summary.figures] == [f + ".png" for f in ALL_FIGURES]
    for name in ALL_FIGURES:
        with open(os.path.join(out, "figures", name + ".png"), "rb") as f:
            png = f.read()
        assert png.startswith(b"\x89PNG") and len(png) > 5000
        with open(os.path.join(out, "figures", name + ".svg"), encoding="utf-8") as f:
            assert "<svg" in f.read(2000)
        assert f"](figures/{name}.png)" in md and f"(figures/{name}.svg)" in md


def test_html_is_self_contained(full):
    _, _, html, _, _ = full
    assert html.count('src="data:image/png;base64,') == len(ALL_FIGURES)
    assert 'src="figures/' not in html and 'href="figures/' not in html
    assert "3.21× (3.08–3.31)" in html and "<table>" in html


def test_speedup_table_matches_the_input_numbers(full):
    _, md, _, _, _ = full
    # sparsebench 3.21x with p20/p80 = 0.96/1.03 of it; dense 1.000 ms (0.970-1.030)
    assert "| attn | 64×48×16 | 4x1 | 0.8 | 1.000 (0.970–1.030) | 3.21× (3.08–3.31) | 0.45× (0.43–0.46) |" in md
    assert "| ffn | 128×48×16 | 4x1 | 0.9 | 1.000 (0.970–1.030) | WRONG | 0.55× (0.53–0.57)? |" in md
    # headline: median over the two shapes with the range
    assert "| sparsebench | 4x1 | 3.71× (3.21–4.21) | 5.21× |" in md
    assert "result differs (max rel. error 3.0e-01)" in md             # the failure and its reason
    assert "mkl (needs the mkl package (pip install mkl))" in md


def test_gflops_table_falls_back_to_the_fastest_dense_run(full):
    _, md, _, _, _ = full
    rows = compare_rows()
    peak = max(float(r["gflops"]) for r in rows if r["method"] == "dense")
    eff = float(rows[1]["effective_gflops"])                # sparsebench, attn, 0.8
    assert f"the fastest dense run (these results carry no machine peak), {peak:.4g} GFLOP/s" in md
    assert f"| {eff:.4g} ({eff / peak * 100:.0f}%) |" in md


def test_roofline_and_tables_use_the_measured_machine_peak(tmp_path):
    rows = [dict(r, peak_gflops=50.0, pct_peak=float(r["effective_gflops"]) / 50.0 * 100 if r["status"] == "ok" else "",
                 degraded=str(r["method"] == "scipy-csr") if r["status"] == "ok" else "")
            for r in compare_rows()]
    os.makedirs(tmp_path / "results")
    write_compare(str(tmp_path / "results" / "compare-x.csv"), rows)
    summary = build_report(str(tmp_path / "results"), str(tmp_path / "out"), log=lambda line: None)
    md = _read(summary.markdown)
    assert "the machine's measured fp32 peak (FMA probe), 50 GFLOP/s" in md
    eff = float(rows[1]["effective_gflops"])
    assert f"| {eff:.4g} ({eff / 50 * 100:.0f}%) |" in md
    assert "!" in md.split("Effective GFLOP/s against the measured peak")[1]


def test_tuning_tables_match_the_database(full):
    _, md, _, _, _ = full
    # the smart run is the faster of the two per task (as `sparsebench export` picks)
    assert ("| attn | 64×48×16 | 4x1 | features | 0.8 | 2 | avx512/b4x1/nt32/np0/ks0/mt0/pf4/t2 | 0.100 (0.098–0.102) | "
            "0.125 | 1.000 | 1.25× | 10.00× | smart | 4/40 |") in md
    assert "| ffn | 128×48×16 | 4x1 | features | 0.9 | 2 | dense |" in md
    assert "0.050 (0.049–0.051)? |" in md                       # unstable tuned time marked
    # convergence: smart reaches the best at its 4th evaluation, random ends 1.2x off
    assert "| random | 3 | 3 | 0 of 3 | – | 1.20× |" in md
    assert "| smart | 3 | 4 | 3 of 3 | 4 | 1.00× |" in md
    assert "smart: 3 (ok 3)" in md


def test_bert_tables_from_both_formats(full):
    _, md, _, _, _ = full
    assert "| bert-mini | sparsebench | 0.9 | 4x1 | 1 | 128 | 2 | 1.900 | 2.400 | 526.0 | 1.00× |" in md
    assert "| bert-mini | onnxruntime | – | – | 1 | 128 | 2 | 4.200 | 4.600 | 238.0 | 2.21× |" in md
    assert "| bert-base | sparsebench | 0.9 | 4x1 | 1 | 128 | 2 | 21.50 | 23.90 | 46.5 | 1.00× |" in md  # batch/p50
    # the runner's own files in results/bert/: method -> runner, throughput_seq_s -> throughput
    assert "| distilbert | dense | 0.9 | 4x1 | 1 | 128 | 2 | 45.00? | 50.00 | 22.2 | 4.50× |" in md
    assert "| category | distilbert, 90% sparse 4x1, batch 1 × seq 128 |" in md
    assert "| sparse GEMMs | 4 (80%) |" in md and "| total | 5 |" in md
    assert "| bert/distilbert-s0.9-4x1-b1-seq128-t2-latency.csv | BERT latencies | 2 rows |" in md
    assert "`bert/distilbert-s0.9-4x1-b1-seq128-t2-kernels.csv`: a BERT runner table" in md


def test_metadata(full):
    _, md, _, _, _ = full
    assert "| CPU | Test CPU 9000 |" in md
    assert "| hardware id | hw0123456789 |" in md
    assert "| library: dense | numpy 9.9, openblas 0.3.99 |" in md
    assert "| compiler | cc 12 |" in md
    assert "Machine that built this report" in md and "| numpy |" in md


def test_malformed_file_is_named_and_the_rest_still_builds(full):
    summary, md, _, _, log = full
    assert not summary.ok
    [(path, message)] = summary.errors
    assert path.endswith("compare-broken.csv") and "not a compare results file" in message
    assert "### Problems" in md and "compare-broken.csv: not a compare results file" in md
    assert any(line.startswith("error:") and "compare-broken.csv" in line for line in log)
    assert "| compare-quick.csv | compare results | 16 rows |" in md


# -- partial folders and malformed inputs ------------------------------------------------------

def test_partial_folder_says_which_figures_it_skipped_and_why(tmp_path):
    results = write_results(str(tmp_path / "results"), tuning=False, tuned_json=False, bert=False, broken=False)
    summary = build_report(results, str(tmp_path / "out"), log=lambda line: None)
    assert summary.ok
    assert [os.path.basename(p) for p in summary.figures] == ["speedup.png", "gflops.png"]
    assert set(summary.skipped) == {"Tuned kernel parameters", "Tuned vs default heuristic",
                                    "Autotuning convergence", "BERT end-to-end latency and throughput",
                                    "BERT per-op breakdown"}
    md = _read(summary.markdown)
    assert ("Figure skipped — Autotuning convergence: no tuning database (tuning.jsonl from "
            "`sparsebench autotune`) with finished runs in the folder.") in md
    # file patterns are escaped so Markdown does not turn the text between them italic
    assert ("Figure skipped: no BERT latencies (\\*-latency.csv from `sparsebench bert`, or bert\\*.csv) "
            "in the folder.") in md
    assert sorted(os.listdir(tmp_path / "out" / "figures")) == ["gflops.png", "gflops.svg", "speedup.png",
                                                                 "speedup.svg"]


def test_each_thread_count_gets_its_own_figures_and_tables(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    rows = compare_rows()
    write_compare(results / "compare-quick.csv", rows + [dict(r, threads=1) for r in rows])
    summary = build_report(str(results), str(tmp_path / "out"), log=lambda line: None)
    assert [os.path.basename(p) for p in summary.figures] == [
        "speedup-t1-warm.png", "speedup-t2-warm.png", "gflops-t1-warm.png", "gflops-t2-warm.png"]
    md = _read(summary.markdown)
    assert "### 1 thread, warm cache" in md and "### 2 threads, warm cache" in md
    assert md.count("| attn | 64×48×16 | 4x1 | 0.8 | 1.000 (0.970–1.030) | 3.21× (3.08–3.31) |") == 2


def test_tuned_json_alone_gives_the_parameter_heatmap(tmp_path):
    results = write_results(str(tmp_path / "results"), compare=False, tuning=False, bert=False, broken=False)
    summary = build_report(results, str(tmp_path / "out"), log=lambda line: None)
    assert [os.path.basename(p) for p in summary.figures] == ["tuned_parameters.png", "tuned_vs_default.png"]
    assert "Speedup over dense vs sparsity" in summary.skipped
    md = _read(summary.markdown)
    assert "avx512/b4x1/nt16/np0/ks0/mt0/pf0/t2" in md and "source: tuned-config file" in md


def test_malformed_files_of_each_kind_are_named(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    rows = compare_rows()
    rows[5]["median_ms"] = "fast"
    write_compare(results / "compare-bad.csv", rows)
    (results / "tuned.json").write_text("{not json")
    (results / "tuning.jsonl").write_text("hello\n[1, 2]\n")
    (results / "bert.csv").write_text("model,p50_ms\nbert-base,3\n")
    (results / "bench-other.csv").write_text("a,b\n1,2\n")
    summary = build_report(str(results), str(tmp_path / "out"), log=lambda line: None)
    errors = {os.path.basename(p): m for p, m in summary.errors}
    assert set(errors) == {"compare-bad.csv", "tuned.json", "tuning.jsonl", "bert.csv"}
    assert "line 7: column 'median_ms' is 'fast', not a number" in errors["compare-bad.csv"]
    assert "not valid JSON" in errors["tuned.json"]
    assert "no sparsebench tuning records" in errors["tuning.jsonl"]
    assert "missing columns ['runner', 'p90_ms']" in errors["bert.csv"]
    assert summary.figures == [] and len(summary.skipped) == len(ALL_FIGURES)
    md = _read(summary.markdown)
    assert "(compare-bad.csv could not be read, see Problems)" in md
    assert "`bench-other.csv`: not a kind of result the report reads" in md


def test_cut_off_last_line_and_short_rows_are_noted(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    path = results / "compare-quick.csv"
    write_compare(path, compare_rows())
    with open(path, "a") as f:
        f.write("attn,64,48\n" + "attn,64,48,16,4x1")           # a short row and a cut-off last line
    inputs = load_results(str(results))
    assert not inputs.errors and len(inputs.compare) == 16
    assert any("1 rows with a wrong number of fields skipped (lines 18)" in n for n in inputs.notes)
    assert any("incomplete last line" in n for n in inputs.notes)


def test_stale_figures_are_removed_on_rebuild(tmp_path):
    out = str(tmp_path / "out")
    results = write_results(str(tmp_path / "results"), compare=False, tuning=False, bert=False, broken=False)
    build_report(results, out, log=lambda line: None)
    assert os.path.exists(os.path.join(out, "figures", "tuned_parameters.png"))
    os.remove(os.path.join(results, "tuned.json"))
    summary = build_report(results, out, log=lambda line: None)
    assert summary.figures == [] and os.listdir(os.path.join(out, "figures")) == []


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="results folder .*nowhere not found"):
        build_report(str(tmp_path / "nowhere"), str(tmp_path / "out"))


def test_convergence_curves():
    class Inputs:
        tuning_results = pd.DataFrame([
            {"M": 8, "K": 8, "N": 8, "sparsity": 0.9, "block": "4x1", "dtype": "float32", "threads": 1, "layout": "features",
             "name": "t", "strategy": s, "space_size": 10, "trajectory": traj}
            for s, traj in (("smart", [4.0, None, 2.0, 1.0]), ("random", [None, 3.0, 2.5]))])
    conv = analysis.convergence(Inputs).set_index("strategy")
    assert list(conv.loc["smart", "curve"]) == [4.0, 4.0, 2.0, 1.0]
    assert list(conv.loc["random", "curve"]) == [float("inf"), 3.0, 2.5]
    assert conv.loc["smart", "to_converge"] == 4 and conv.loc["random", "final"] == 2.5


# -- command line ------------------------------------------------------------------------------

def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="sparsebench")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_exit_status_and_default_out(tmp_path, capsys):
    results = write_results(str(tmp_path / "results"), tuning=False, tuned_json=False, bert=False)
    assert _run_cli(["report", results]) == 1                         # the broken compare file
    captured = capsys.readouterr()
    assert "compare-broken.csv" in captured.err
    assert os.path.exists(os.path.join(results, "report", "report.html"))
    os.remove(os.path.join(results, "compare-broken.csv"))
    assert _run_cli(["report", results, "--out", str(tmp_path / "elsewhere")]) == 0
    assert "2 figures, 5 skipped" in capsys.readouterr().out


def test_int8_compare_runs_add_one_method_and_no_duplicates(tmp_path):
    write_compare(tmp_path / "compare-x.csv", compare_rows())
    int8 = []
    for s in (0.8, 0.9):
        for method, sp in (("dense", 1.0), ("sparsebench-fp32", 3.0), ("sparsebench", 7.5)):
            int8.append(compare_row(SHAPES[0], s, method, speedup=sp, dtype="int8"))
    write_compare(tmp_path / "compare-x-int8.csv", int8)
    inputs = load_results(str(tmp_path))
    c = inputs.compare
    assert set(c[c["dtype"] == "int8"]["method"]) == {"sparsebench-int8"}
    assert len(c[(c["method"] == "dense") & (c["shape"] == "attn")]) == 2      # only the float32 run's
    build_report(str(tmp_path), str(tmp_path / "report"))
    assert "sparsebench-int8" in open(tmp_path / "report" / "report.md").read()


def test_int8_bert_runs_add_one_runner_and_their_own_breakdown(tmp_path):
    head = "model,sparsity,block,dtype,runner,batch,seq,threads,p50_ms,p90_ms\n"
    (tmp_path / "a-latency.csv").write_text(head + "bert-base,0.9,4x1,float32,sparsebench,1,128,2,20,21\n"
                                            "bert-base,0.9,4x1,float32,onnxruntime,1,128,2,120,125\n")
    (tmp_path / "b-latency.csv").write_text(head + "bert-base,0.9,4x1,int8,sparsebench,1,128,2,12,13\n"
                                            "bert-base,0.9,4x1,int8,fp32,1,128,2,19,20\n")
    (tmp_path / "b-breakdown.csv").write_text("model,sparsity,block,dtype,batch,seq,category,ms,share\n"
                                              "bert-base,0.9,4x1,int8,1,128,sparse GEMMs,7,0.6\n")
    inputs = load_results(str(tmp_path))
    assert sorted(inputs.bert["runner"]) == ["onnxruntime", "sparsebench", "sparsebench-int8"]
    assert set(inputs.breakdown["model"]) == {"bert-base int8"}


def test_a_root_of_two_machines_reports_each_apart(tmp_path):
    root = tmp_path / "results"
    write_results(str(root / "test-cpu-9000"), tuning=False, tuned_json=False, broken=False)
    other = [dict(r, hardware_id="hwOTHER00000", cpu="Other CPU 1") for r in compare_rows()]
    os.makedirs(root / "other-cpu-1")
    write_compare(str(root / "other-cpu-1" / "compare-quick.csv"), other)
    with open(root / "other-cpu-1" / "bert-old.csv", "w") as f:       # no identity anywhere
        f.write("model,runner,p50_ms,p90_ms\nbert-mini,sparsebench,2.0,2.5\n")
    summary = build_report(str(root), str(tmp_path / "out"), log=lambda line: None)
    md = _read(summary.markdown)
    test, other_, unknown = ("Test CPU 9000, hardware id hw0123456789", "Other CPU 1, hardware id hwOTHER00000",
                             "unknown machine")
    for label in (test, other_, unknown):
        assert md.count(f"# Machine: {label}") == 1
    folders = {os.path.basename(os.path.dirname(p)) for p in summary.figures}
    assert folders == {analysis.machine_slug(test), analysis.machine_slug(other_), analysis.machine_slug(unknown)}
    by_folder = {}
    for p in summary.figures:
        by_folder.setdefault(os.path.basename(os.path.dirname(p)), set()).add(os.path.basename(p))
    assert {"speedup.png", "gflops.png", "bert.png"} <= by_folder[analysis.machine_slug(test)]
    assert by_folder[analysis.machine_slug(unknown)] == {"bert.png"}
    # every figure and table title names its own machine's CPU, never another's
    parts = md.split("# Machine: ")[1:]
    for part in parts:
        label = part.splitlines()[0]
        images = [line for line in part.splitlines() if line.startswith("![")]
        tables_ = [line for line in part.splitlines() if "CPU:" in line]
        assert images and tables_ and all(label in t for t in images)
        assert all(f"CPU: {label}." in t for t in tables_)
        assert not any(other in part for other in (test, other_, unknown) if other != label
                       and other not in label)


def test_latency_budget_tables_of_both_formats(tmp_path):
    """The streams x batch search (and the single-engine search before it) becomes a table with
    the most sequences/s that fit marked best."""
    (tmp_path / "a-budget.csv").write_text(
        "model,sparsity,block,dtype,budget_ms,streams,threads_per_stream,batch,seq,p50_ms,p90_ms,"
        "throughput_seq_s,requests,fits\n"
        "bert-base,0.9,4x1,int8,10,1,2,1,128,8.4,8.6,118,200,True\n"
        "bert-base,0.9,4x1,int8,10,1,2,2,128,16.1,16.5,124,100,False\n"
        "bert-base,0.9,4x1,int8,10,2,1,1,128,9.0,9.5,220,400,True\n")
    (tmp_path / "b-budget.csv").write_text(
        "model,sparsity,block,dtype,budget_ms,batch,seq,p50_ms,p90_ms,p20_ms,p80_ms,throughput_seq_s,samples,"
        "unstable,fits\nbert-base,0.9,4x1,float32,40.0,1,128,17.4,18.2,17.2,18.1,57.4,12,False,True\n")
    inputs = load_results(str(tmp_path))
    assert len(inputs.budget) == 4 and not inputs.errors
    header, rows = tables.budget_table(inputs.budget)
    marks = {(r[1], r[5], r[6]): r[-1] for r in rows}
    assert marks == {("int8", "1 x 2", "1"): "yes", ("int8", "1 x 2", "2"): "no", ("int8", "2 x 1", "1"): "best",
                     ("float32", "1 x –", "1"): "best"}
    summary = build_report(str(tmp_path), str(tmp_path / "out"), log=lambda line: None)
    assert "| bert-base | int8 | 0.9 | 128 | 10 | 2 x 1 | 1 | 9.500 | 220.0 | – | best |" in _read(summary.markdown)


def test_int8_runs_keep_their_batching_runners(tmp_path):
    head = "model,sparsity,block,dtype,runner,batch,seq,threads,p50_ms,p90_ms\n"
    (tmp_path / "b-latency.csv").write_text(head + "bert-base,0.9,4x1,int8,sparsebench,8,128,2,90,95\n"
                                            "bert-base,0.9,4x1,int8,whole-batch,8,128,2,119,125\n"
                                            "bert-base,0.9,4x1,int8,one-by-one,8,128,2,91,99\n"
                                            "bert-base,0.9,4x1,int8,fp32,8,128,2,170,180\n")
    inputs = load_results(str(tmp_path))
    assert sorted(inputs.bert["runner"]) == ["one-by-one-int8", "sparsebench-int8", "whole-batch-int8"]
