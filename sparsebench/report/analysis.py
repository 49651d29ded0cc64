"""Derived views of the inputs shared by the figures and the tables."""
import dataclasses
import math
import re
import numbers

import numpy as np
import pandas as pd

TASK = ["M", "K", "N", "sparsity", "block", "dtype", "threads", "layout"]
#: a tuning run has "converged" once its best-so-far is within this factor of the task's best
CONVERGED = 1.05
#: order in which methods are listed (others follow alphabetically)
METHOD_ORDER = ("sparsebench", "sparsebench-int8", "sparsebench-int8-kernel", "sparsebench-default", "dense", "mkl",
                "mkl-bsr", "scipy-bsr", "scipy-csr", "generic-csr")


def is_true(v):
    """True for a true bool (numpy's included); False for False, None and NaN."""
    return isinstance(v, (bool, np.bool_)) and bool(v)


def finite(v):
    """True for a finite number (numpy's included)."""
    return isinstance(v, numbers.Real) and bool(np.isfinite(v))


UNKNOWN_MACHINE = "unknown machine"
#: the Inputs frames that hold rows of one machine each
MACHINE_FRAMES = ("compare", "tuning_results", "measurements", "tuned", "bert", "breakdown", "budget")


def _machine_column(df):
    return df["hardware_id"].fillna("").astype(str) if "hardware_id" in df else pd.Series("", index=df.index)


def machines(inputs):
    """[(hardware_id, label)] of the machines whose rows `inputs` hold, in order of appearance;
    hardware_id "" (label "unknown machine") for rows from files that do not say."""
    labels = {}
    for name in MACHINE_FRAMES:
        df = getattr(inputs, name)
        cpus = df["cpu"].fillna("").astype(str) if "cpu" in df else pd.Series("", index=df.index)
        for hw, cpu in zip(_machine_column(df), cpus):
            if not labels.get(hw):
                labels[hw] = cpu
    for h in inputs.tuned_headers:
        labels.setdefault(h["hardware_id"] or "", "")
    return [(hw, f"{cpu or 'CPU not recorded'}, hardware id {hw}" if hw else UNKNOWN_MACHINE)
            for hw, cpu in labels.items()]


def for_machine(inputs, hardware_id):
    """`inputs` with only the rows (and tuned-file headers) of the machine `hardware_id`."""
    frames = {name: getattr(inputs, name)[_machine_column(getattr(inputs, name)) == hardware_id]
              for name in MACHINE_FRAMES}
    headers = [h for h in inputs.tuned_headers if (h["hardware_id"] or "") == hardware_id]
    return dataclasses.replace(inputs, tuned_headers=headers, **frames)


def machine_slug(label):
    """A folder-name-friendly form of a machine label."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def pruning(sparsity, block):
    return f"{sparsity * 100:g}% sparse" + (f" {block}" if block else "")


def dims(M, K, N):
    return f"{int(M)}×{int(K)}×{int(N)}"


def shape_label(name, M, K, N):
    """'name (M×K×N)', or just the dimensions when the name is them."""
    d = dims(M, K, N)
    return d if not name or name.replace("x", "×") == d else f"{name} ({d})"


def ordered_methods(methods):
    methods = list(dict.fromkeys(methods))
    known = [m for m in METHOD_ORDER if m in methods]
    return known + sorted(m for m in methods if m not in METHOD_ORDER)


def conditions(compare):
    """[(suffix, label, rows)] per (threads, cache) of the compare rows; suffix '' if only one."""
    groups = list(compare.groupby(["threads", "cache"], sort=True))
    out = []
    for (threads, cache), rows in groups:
        suffix = f"-t{int(threads)}-{cache}" if len(groups) > 1 else ""
        out.append((suffix, f"{int(threads)} thread{'s' if threads != 1 else ''}, {cache} cache", rows))
    return out


def shapes_in_order(rows):
    """[(shape, M, K, N)] in order of first appearance."""
    return list(dict.fromkeys(zip(rows["shape"], rows["M"], rows["K"], rows["N"])))


def roofline_peak(rows):
    """(GFLOP/s, what it is) of the roof `rows` (compare rows) are drawn against: the machine's
    measured fp32 peak their float32 rows carry (peak_gflops), else the highest dense rate
    measured in them (older results); (None, why) with neither."""
    fp32 = rows[(rows["dtype"] == "float32") & (rows["status"] == "ok")]
    measured = fp32["peak_gflops"].dropna() if "peak_gflops" in fp32 else fp32["gflops"].iloc[:0]
    if len(measured):
        return float(measured.max()), "the machine's measured fp32 peak (FMA probe)"
    dense = fp32[fp32["method"] == "dense"]["gflops"].dropna()
    if len(dense):
        return float(dense.max()), "the fastest dense run (these results carry no machine peak)"
    return None, "no machine peak in these results and no dense run"


def _task_names(results):
    """Task key -> a readable name: a shape-set name in preference to bare dimensions."""
    names = {}
    for key, rows in results.groupby(TASK, sort=False):
        candidates = [n for n in rows["name"] if n]
        named = [n for n in candidates if n.replace("x", "×") != dims(*key[:3])]
        names[key] = (named or candidates or [""])[0]
    return names


def tuned_choices(inputs):
    """Best choice per tuned task, as `sparsebench export` picks it, and where it comes from.

    From the tuning database's result records when there are any (they carry the default
    config, the spread and the unstable flag), else from the tuned-config files. Columns:
    name, M, K, N, sparsity, block, dtype, threads, layout, method, config, default_config, time_s,
    p20_s, p80_s, default_s, dense_s, unstable, strategy, evals, space_size."""
    res = inputs.tuning_results
    if len(res):
        names = _task_names(res)
        best = res.loc[res.groupby(TASK, sort=False)["best_s"].idxmin()].copy()
        best["name"] = [names[tuple(k)] for k in best[TASK].itertuples(index=False)]
        best = best.rename(columns={"best_s": "time_s", "best_p20_s": "p20_s", "best_p80_s": "p80_s"})
        return best.reset_index(drop=True), "tuning database"
    tuned = inputs.tuned
    if len(tuned):
        best = tuned.loc[tuned.groupby(TASK, sort=False)["time_s"].idxmin()].copy()
        for col in ("default_config", "p20_s", "p80_s", "unstable", "space_size"):
            best[col] = None
        return best.reset_index(drop=True), "tuned-config file"
    return pd.DataFrame(), None


def best_so_far(trajectory):
    """Running minimum of a trajectory (None = failed candidate, counted but never best)."""
    t = np.array([math.inf if v is None else float(v) for v in trajectory])
    return np.minimum.accumulate(t) if len(t) else t


def convergence(inputs):
    """One row per tuning run with its best-so-far curve relative to the task's best time.

    The task's best is the fastest time any strategy measured for it during the search, so
    the strategies are judged against the same yardstick. Columns: strategy, block, task,
    evals, space_size, curve (numpy array, >= 1; inf before the first success),
    to_converge (evaluations until within CONVERGED of the best; NaN if never)."""
    res = inputs.tuning_results
    if not len(res):
        return pd.DataFrame()
    res = res[res["trajectory"].map(len) > 0]
    rows = []
    best_of_task = {}
    for key, runs in res.groupby(TASK, sort=False):
        best_of_task[key] = min((best_so_far(t)[-1] for t in runs["trajectory"]), default=math.inf)
    names = _task_names(res) if len(res) else {}
    for _, r in res.iterrows():
        key = tuple(r[k] for k in TASK)
        best = best_of_task[key]
        if not math.isfinite(best):
            continue
        curve = best_so_far(r["trajectory"]) / best
        reached = np.flatnonzero(curve <= CONVERGED)
        rows.append({"strategy": r["strategy"], "block": r["block"], "threads": r["threads"],
                     "task": f"{shape_label(names[key], r['M'], r['K'], r['N'])} {r['block']} "
                             f"{r['sparsity']:g}" + ("" if r["layout"] == "features" else f" {r['layout']}"),
                     "evals": len(curve), "space_size": r["space_size"], "curve": curve,
                     "final": curve[-1], "to_converge": reached[0] + 1 if len(reached) else math.nan})
    return pd.DataFrame(rows)


def curve_band(curves, lo=20, hi=80):
    """Median and p20/p80 over runs at each evaluation; a finished run keeps its final value."""
    n = max(len(c) for c in curves)
    mat = np.array([np.concatenate([c, np.full(n - len(c), c[-1])]) for c in curves])
    with np.errstate(invalid="ignore"):
        return (np.percentile(mat, 50, axis=0), np.percentile(mat, lo, axis=0),
                np.percentile(mat, hi, axis=0))


def breakdown(df):
    """BERT per-op rows with a `config` label (model, pruning, batch × seq); a configuration
    measured in several files keeps the last file's rows."""
    labels = []
    for r in df.itertuples():
        parts = [str(r.model)]
        if finite(r.sparsity):
            parts.append(pruning(r.sparsity, r.block))
        if finite(r.batch) and finite(r.seq):
            parts.append(f"batch {r.batch:.0f} × seq {r.seq:.0f}")
        labels.append(", ".join(parts))
    return df.assign(config=labels).drop_duplicates(["config", "category"], keep="last")
