"""The report's tables: (header, rows) of display strings built from the inputs."""
import numbers
import os

import numpy as np

from ..config import KernelConfig
from ..errors import ConfigError
from . import analysis


def ratio(v):
    return f"{v:.2f}×"


def ms(v):
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def config_text(config):
    """The compact KernelConfig string (avx512/b4x1/nt64/...) of a config dict."""
    try:
        return str(KernelConfig.from_dict(config))
    except (ConfigError, TypeError):
        return str(config)


def _dims(r):
    return analysis.dims(r["M"], r["K"], r["N"])


def _cases(rows):
    """Compare rows grouped by case (shape, M, K, N, block, sparsity), in order of appearance."""
    keys = ["shape", "M", "K", "N", "block", "sparsity"]
    return list(rows.groupby(keys, sort=False))


def _failed_cell(r):
    return "skipped" if r["status"] == "skipped" else r["status"].upper()


def _ran(rows):
    """Methods with at least one row not skipped (ones that never ran are listed apart)."""
    return analysis.ordered_methods(rows[rows["status"] != "skipped"]["method"])


def speedup_table(rows):
    """Per case: dense time, and each other method's speedup over dense as median (p20–p80)."""
    methods = [m for m in _ran(rows) if m != "dense"]
    header = ["shape", "M×K×N", "block", "sparsity", "dense ms (p20–p80)"] + methods
    out = []
    for (shape, M, K, N, block, sparsity), g in _cases(rows):
        by = {r["method"]: r for _, r in g.iterrows()}
        d = by.get("dense")
        if d is None:
            dense = "–"
        elif d["status"] != "ok":
            dense = _failed_cell(d)
        else:
            dense = f"{ms(d['median_ms'])} ({ms(d['p20_ms'])}–{ms(d['p80_ms'])})" + ("?" if d["unstable"] else "")
        cells = [shape, analysis.dims(M, K, N), block, f"{sparsity:g}", dense]
        for m in methods:
            r = by.get(m)
            if r is None:
                cells.append("–")
            elif r["status"] != "ok":
                cells.append(_failed_cell(r))
            elif np.isfinite(r["speedup"]):
                cells.append(f"{ratio(r['speedup'])} ({r['speedup_p20']:.2f}–{r['speedup_p80']:.2f})"
                             + ("?" if r["unstable"] else ""))
            else:
                cells.append(f"{ms(r['median_ms'])} ms" + ("?" if r["unstable"] else ""))
        out.append(cells)
    return header, out


def headline_table(rows):
    """Per method (not dense) and block: speedup at each sparsity, median over shapes (min–max)."""
    ok = rows[(rows["status"] == "ok") & (rows["method"] != "dense") & rows["speedup"].notna()]
    sparsities = sorted(set(ok["sparsity"]))
    header = ["method", "block"] + [f"{s * 100:g}% sparse" for s in sparsities]
    out = []
    for m in analysis.ordered_methods(ok["method"]):
        for block in dict.fromkeys(ok[ok["method"] == m]["block"]):
            d = ok[(ok["method"] == m) & (ok["block"] == block)]
            cells = [m, block]
            for s in sparsities:
                v = d[d["sparsity"] == s]["speedup"]
                cells.append("–" if not len(v) else ratio(v.median()) if len(v) == 1 else
                             f"{ratio(v.median())} ({v.min():.2f}–{v.max():.2f})")
            out.append(cells)
    return header, out


def gflops_table(rows, peak):
    """Per case and method: useful GFLOP/s and its share of the measured peak (the row's own
    pct_peak; of `peak` for rows measured before pct_peak existed)."""
    methods = _ran(rows)
    header = ["shape", "M×K×N", "block", "sparsity"] + methods
    out = []
    for (shape, M, K, N, block, sparsity), g in _cases(rows):
        by = {r["method"]: r for _, r in g.iterrows()}
        cells = [shape, analysis.dims(M, K, N), block, f"{sparsity:g}"]
        for m in methods:
            r = by.get(m)
            if r is None:
                cells.append("–")
            elif r["status"] != "ok":
                cells.append(_failed_cell(r))
            else:
                pct = r["pct_peak"] if analysis.finite(r["pct_peak"]) else (
                    r["effective_gflops"] / peak * 100 if peak else None)
                share = "" if pct is None else f" ({pct:.0f}%)"
                cells.append(f"{r['effective_gflops']:.4g}{share}" + ("?" if r["unstable"] else "")
                             + ("!" if r["degraded"] else ""))
        out.append(cells)
    return header, out


def failures_table(compare):
    """Methods that gave a wrong result or raised, with the reason."""
    bad = compare[compare["status"].isin(["wrong", "error"])]
    rows = [[r["method"], r["shape"], _dims(r), r["block"], f"{r['sparsity']:g}", f"{int(r['threads'])}",
             r["status"], r["reason"]] for _, r in bad.iterrows()]
    return ["method", "shape", "M×K×N", "block", "sparsity", "threads", "status", "reason"], rows


def skipped_methods(compare):
    """[(method, reason)] of methods skipped (could not run), once each."""
    sk = compare[compare["status"] == "skipped"]
    return list(dict.fromkeys(zip(sk["method"], sk["reason"])))


def tuned_table(choices):
    header = ["shape", "M×K×N", "block", "X layout", "sparsity", "threads", "winner", "tuned ms (p20–p80)",
              "default ms", "dense ms", "tuned vs default", "tuned vs dense", "strategy", "evals"]
    out = []
    for _, r in choices.iterrows():
        t = r["time_s"] * 1e3
        spread = ""
        if r.get("p20_s") is not None and np.isfinite(r["p20_s"]):
            spread = f" ({ms(r['p20_s'] * 1e3)}–{ms(r['p80_s'] * 1e3)})"
        flag = "?" if analysis.is_true(r.get("unstable")) else ""
        winner = "dense" if r["method"] == "dense" else config_text(r["config"])
        evals = f"{int(r['evals'])}" if r["evals"] is not None and np.isfinite(r["evals"]) else "–"
        if r.get("space_size") is not None and np.isfinite(r["space_size"]):
            evals += f"/{int(r['space_size'])}"
        out.append([r["name"], _dims(r), r["block"], r["layout"], f"{r['sparsity']:g}", f"{int(r['threads'])}", winner,
                    f"{ms(t)}{spread}{flag}", ms(r["default_s"] * 1e3), ms(r["dense_s"] * 1e3),
                    ratio(r["default_s"] / r["time_s"]), ratio(r["dense_s"] / r["time_s"]),
                    r["strategy"], evals])
    return header, out


def convergence_table(conv):
    header = ["strategy", "runs", "median evaluations", f"runs within {analysis.CONVERGED:.2f}× of the best",
              f"median evaluations to {analysis.CONVERGED:.2f}×", "median final / best"]
    out = []
    for s, g in conv.groupby("strategy"):
        reached = g["to_converge"].dropna()
        out.append([s, str(len(g)), f"{g['evals'].median():g}", f"{len(reached)} of {len(g)}",
                    f"{reached.median():g}" if len(reached) else "–", ratio(g["final"].median())])
    return header, out


def measurement_counts(measurements):
    """'N candidates measured: ok a, invalid b, ...' per strategy, or ''."""
    if not len(measurements):
        return ""
    parts = []
    for s, g in measurements.groupby("strategy"):
        counts = g["status"].value_counts()
        parts.append(f"{s}: {len(g)} (" + ", ".join(f"{k} {v}" for k, v in counts.items()) + ")")
    return "Candidates measured during the searches, by strategy and outcome: " + "; ".join(parts) + "."


def _ours_p50(bert, r):
    """p50 of our runner measured with row r: the one of r's own file (a run of `sparsebench
    bert` writes one), else the sparsebench row of the same model, batch, seq, threads and, when
    r has one, sparsity and block; None when there is not exactly one."""
    ours = bert[bert["runner"].isin(("sparsebench", "sparsebench-int8"))]
    mine = ours[ours["source"] == r["source"]]
    if len(mine) == 1:
        return mine["p50_ms"].iloc[0]
    same = bert[(bert["runner"] == "sparsebench") & (bert["model"] == r["model"])]
    for col in ("batch", "seq", "threads", "sparsity"):
        if _num(r[col], "{:g}") != "–":
            same = same[same[col] == r[col]]
    if r["block"]:
        same = same[same["block"] == r["block"]]
    return same["p50_ms"].iloc[0] if len(same) == 1 else None


def bert_table(bert):
    header = ["model", "runner", "sparsity", "block", "batch", "seq", "threads", "p50 ms", "p90 ms",
              "throughput (seq/s)", "sparsebench speedup", "% peak"]
    out = []
    for _, r in bert.iterrows():
        ours = _ours_p50(bert, r)
        out.append([r["model"], r["runner"], _num(r["sparsity"], "{:g}"), r["block"] or "–",
                    _num(r["batch"], "{:.0f}"), _num(r["seq"], "{:.0f}"), _num(r["threads"], "{:.0f}"),
                    ms(r["p50_ms"]) + ("?" if r["unstable"] else ""), ms(r["p90_ms"]),
                    _num(r["throughput"], "{:.1f}"), ratio(r["p50_ms"] / ours) if ours else "–",
                    _num(r["pct_peak"], "{:.0f}%")])
    return header, out


def budget_table(budget):
    """One row per (configuration, streams, batch) a latency-budget search measured; the most
    sequences/s that fit each budget marked best."""
    header = ["model", "dtype", "sparsity", "seq", "budget ms", "streams x threads", "batch", "p90 ms", "seq/s",
              "% peak", "fits"]
    out = []
    groups = ["model", "dtype", "sparsity", "block", "seq", "budget_ms", "source"]
    for _, g in budget.groupby(groups, sort=False, dropna=False):
        fit = g[g["fits"]]
        best = fit["throughput_seq_s"].idxmax() if len(fit) else None
        for i, r in g.iterrows():
            threads = "–" if np.isnan(r["threads_per_stream"]) else f"{r['threads_per_stream']:.0f}"
            out.append([r["model"], r["dtype"] or "float32", _num(r["sparsity"], "{:g}"), _num(r["seq"], "{:.0f}"),
                        _num(r["budget_ms"], "{:g}"),
                        f"{r['streams']:.0f} x {threads}", _num(r["batch"], "{:.0f}"), ms(r["p90_ms"]),
                        _num(r["throughput_seq_s"], "{:.1f}"), _num(r["pct_peak"], "{:.0f}%"),
                        ("best" if i == best else "yes") if r["fits"] else "no"])
    return header, out


def breakdown_table(breakdown):
    """Rows = op categories, columns = configurations: ms per forward pass (share)."""
    df = analysis.breakdown(breakdown)
    configs = list(dict.fromkeys(df["config"]))
    out = []
    for cat in dict.fromkeys(df["category"]):
        cells = [cat]
        for k in configs:
            d = df[(df["config"] == k) & (df["category"] == cat)]
            total = df[df["config"] == k]["ms"].sum()
            ms_ = d["ms"].sum()
            cells.append(f"{ms_:.3g} ({ms_ / total:.0%})" if len(d) and total else "–")
        out.append(cells)
    out.append(["total"] + [f"{df[df['config'] == k]['ms'].sum():.3g}" for k in configs])
    return ["category"] + configs, out


def _num(v, fmt):
    return fmt.format(v) if isinstance(v, numbers.Real) and np.isfinite(v) else "–"


def inputs_table(inputs):
    header = ["file", "kind", "contents"]
    rel = lambda p: os.path.relpath(p, inputs.results_dir)      # noqa: E731
    rows = [[rel(s.path), s.kind, f"{s.count} {s.unit}"] for s in inputs.sources]
    rows += [[rel(p), "not read", "malformed (see Problems)"] for p, _ in inputs.errors]
    return header, rows


def _unique(values):
    return ", ".join(dict.fromkeys(str(v) for v in values if v is not None and str(v) not in ("", "nan")))


def measured_metadata(inputs):
    """(key, value) facts about the machines and software that produced the results."""
    c, t, res = inputs.compare, inputs.tuned_headers, inputs.tuning_results
    facts = []
    cpus = list(c["cpu"]) + [h["hardware"].get("cpu") for h in t]
    facts.append(("CPU", _unique(cpus) or "not recorded"))
    cores = _unique(h["hardware"].get("cores") for h in t)
    if cores:
        facts.append(("cores", cores))
    isas = _unique(" ".join(h["hardware"].get("isa", [])) for h in t)
    if isas:
        facts.append(("CPU features", isas))
    hw = list(dict.fromkeys(v for v in list(c["hardware_id"]) + list(res.get("hardware_id", []))
                            + [h["hardware_id"] for h in t] if v))
    facts.append(("hardware id", ", ".join(hw) + (" — results of several machines are mixed" if len(hw) > 1 else "")
                  if hw else "not recorded"))
    builds = _unique(list(c["build_id"]) + list(res.get("build_id", [])) + [h["build_id"] for h in t])
    facts.append(("build id", builds or "not recorded"))
    versions = _unique(list(c["sparsebench"]) + [h["build"].get("version") for h in t])
    facts.append(("sparsebench version", versions or "not recorded"))
    for key, name in (("compiler", "compiler"), ("kernel_hashes", "kernel source hashes")):
        v = _unique(_text(h["build"].get(key)) for h in t)
        if v:
            facts.append((name, v))
    for isa in dict.fromkeys(i for h in t for i in h["build"].get("flags", {})):
        flags = _unique(" ".join(h["build"]["flags"][isa]) for h in t if isa in h["build"].get("flags", {}))
        facts.append((f"{isa} flags", flags))
    for method in analysis.ordered_methods(c["method"]):
        libs = _unique(c[c["method"] == method]["library"])
        if libs:
            facts.append((f"library: {method}", libs))
    stamps = sorted(v for v in list(c["timestamp"]) + list(res.get("timestamp", [])) if v)
    if stamps:
        facts.append(("measured", f"{stamps[0]} to {stamps[-1]}"))
    threads = _unique(sorted(set(c["threads"].dropna().astype(int))))
    if threads:
        facts.append(("compare threads", threads))
    return facts


def _text(value):
    """A build fact as text ({dtype: hash} as 'float32 ..., int8 ...')."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    return value


def this_machine(info, data_hardware_ids, this_hardware_id):
    """(key, value) facts of `sparsebench info` on the machine that built the report."""
    same = this_hardware_id in data_hardware_ids
    facts = [("sparsebench", info["sparsebench"]), ("Python", info["python"]), ("numpy", info["numpy"]),
             ("BLAS (numpy)", info["blas"]), ("CPU", f"{info['cpu']} ({info['machine']})"),
             ("CPU features", " ".join(info["cpu_features"]) or "none of avx2/avx512"),
             ("kernels usable", ", ".join(info["isas_available"])), ("default threads", str(info["default_threads"])),
             ("build target", info["build"]["target"]), ("compiler", info["build"]["compiler"]),
             ("hardware id", this_hardware_id + (" (same machine as the results)" if same else
                                                 " (not the machine of the results)"))]
    return facts
