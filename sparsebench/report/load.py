"""Finding, reading and validating the result files of a results folder.

Every CSV/JSON/JSON-lines file in the folder and in its subfolders two levels down (a results
root holds one folder per machine, results/<cpu>/, and the BERT runner writes to
results/<cpu>/bert/) is classified by content, and by name when the content is unusable:

* compare results: a CSV with the header of `sparsebench.bench.compare.FIELDS`, or the one before
  the peak columns (they come back empty), or named compare*.csv;
* BERT latencies: a CSV with columns model, runner (or method), p50_ms, p90_ms and optionally
  sparsity, block, batch, seq, threads, throughput (or throughput_seq_s), unstable: what
  `sparsebench bert` writes as *-latency.csv, or a hand-made bert*.csv;
* BERT per-op breakdowns: a CSV with columns model, category, ms (the runner's *-breakdown.csv);
* tuning databases: *.jsonl files of `sparsebench autotune` records;
* tuned-config files: JSON of `sparsebench export` (or named tuned*.json).

Every row says which machine measured it (hardware_id, cpu; empty when its file does not say:
BERT tables take them from the runner's <stem>.json beside them). A file that claims to be one of these but cannot be read becomes an entry of `Inputs.errors`
naming it and saying why; the other files are still read. Rows or records that are unusable
inside an otherwise good file are dropped with a note.
"""
import csv
import dataclasses
import json
import os
import warnings

import pandas as pd

from .. import store
from ..tune import apply as tuned
from ..bench.compare import EARLIER_HEADERS as EARLIER_COMPARE_HEADERS, FIELDS as COMPARE_FIELDS
from ..errors import SparsebenchError

#: columns a BERT latency CSV must have, and the optional ones the report uses
BERT_REQUIRED = ("model", "runner", "p50_ms", "p90_ms")
BERT_OPTIONAL = ("sparsity", "block", "batch", "seq", "threads", "throughput", "unstable", "pct_peak")
#: other names the BERT runner gives these columns
BERT_ALIASES = {"method": "runner", "throughput_seq_s": "throughput"}
#: the runners an int8 BERT run measures in int8, and their names in the report
INT8_RUNNERS = {"sparsebench": "sparsebench-int8", "whole-batch": "whole-batch-int8", "one-by-one": "one-by-one-int8",
                "torch-sparsify": "torch-sparsify-int8"}
BREAKDOWN_REQUIRED = ("model", "category", "ms")
BREAKDOWN_OPTIONAL = ("sparsity", "block", "batch", "seq", "threads")
COMPARE_NUMERIC = ("M", "K", "N", "sparsity", "threads", "median_ms", "p20_ms", "p80_ms", "min_ms",
                   "spread", "samples", "loops", "gflops", "effective_gflops", "speedup", "speedup_p20",
                   "speedup_p80", "max_rel_error", "pct_peak", "peak_gflops", "probe_gflops", "vs_sparsebench",
                   "vs_sparsebench_p20", "vs_sparsebench_p80")
STATUSES = ("ok", "wrong", "error", "skipped")
RESULT_KEYS = ("strategy", "evals", "space_size", "method", "config", "best_s", "dense_s", "default_s",
               "trajectory")
TASK_KEYS = ("M", "K", "N", "sparsity", "block", "dtype", "threads")


#: an int8 compare run's own methods, as the report names them
INT8_METHODS = {"sparsebench": "sparsebench-int8", "sparsebench-int8-kernel": "sparsebench-int8-kernel"}


class ReportError(SparsebenchError, ValueError):
    """The results folder cannot be used at all (missing, unreadable); says which and why."""


class InputError(ValueError):
    """One result file is malformed; the message names the file and what is wrong."""


@dataclasses.dataclass
class SourceFile:
    """A file the report read: its kind and what it held."""

    path: str
    kind: str
    count: int
    unit: str


@dataclasses.dataclass
class Inputs:
    """Everything read from a results folder, as tidy DataFrames (empty when absent)."""

    results_dir: str
    compare: pd.DataFrame
    tuning_results: pd.DataFrame      # one row per finished tuning run ("result" records)
    measurements: pd.DataFrame        # one row per measured candidate: task, strategy, status
    tuned: pd.DataFrame               # entries of tuned-config files
    tuned_headers: list               # {"path", "hardware", "hardware_id", "build", "build_id", "created"}
    bert: pd.DataFrame
    breakdown: pd.DataFrame           # BERT per-op time: model, ..., category, ms
    budget: pd.DataFrame              # BERT throughput under a latency budget: streams x batch rows
    sources: list                     # SourceFile
    errors: list                      # (path, message)
    unreadable: dict                  # kind (a key of KINDS, or None) -> [path] of malformed files
    notes: list                       # str: rows or records dropped, cut-off lines
    ignored: list                     # (path, reason)


KINDS = {"compare": "compare results", "bert": "BERT latencies", "breakdown": "BERT per-op breakdown",
         "budget": "BERT latency budget", "tuning": "tuning database", "tuned": "tuned-config file"}


def _subfolders(folder):
    return sorted(os.path.join(folder, d) for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))


def _candidates(results_dir):
    """CSV/JSON/JSON-lines files in `results_dir` and its subfolders two levels down, sorted."""
    children = _subfolders(results_dir)
    roots = [results_dir] + [f for child in children for f in [child] + _subfolders(child)]
    return [os.path.join(root, n) for root in roots for n in sorted(os.listdir(root))
            if os.path.isfile(os.path.join(root, n)) and os.path.splitext(n)[1].lower() in (".csv", ".jsonl", ".json")]


def load_results(results_dir):
    """Read every result file of `results_dir` (see the module docstring)."""
    if not os.path.isdir(results_dir):
        raise ReportError(f"results folder {results_dir} not found (or not a folder); pass the folder "
                          "that holds compare-*.csv, tuning.jsonl, tuned.json or bert*.csv files")
    try:
        paths = _candidates(results_dir)
    except OSError as e:
        raise ReportError(f"cannot list results folder {e.filename or results_dir}: {e.strerror}") from None
    frames = {k: [] for k in ("compare", "tuning_results", "measurements", "tuned", "bert", "breakdown", "budget")}
    headers, sources, errors, notes, ignored, unreadable = [], [], [], [], [], {}
    for path in paths:
        if os.path.getsize(path) == 0:     # created by a run that had not measured anything yet
            notes.append(f"{path}: empty file, skipped")
            continue
        kind = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                kind, why = _classify(path)
                if kind is None:
                    ignored.append((path, why))
                    continue
                loaded, count, unit, dropped = READERS[kind](path)
            except (InputError, store.StoreError) as e:
                errors.append((path, str(e)))
                unreadable.setdefault(kind, []).append(path)
                continue
            finally:
                notes.extend(_collapse([str(w.message) for w in caught]))
        for key, value in loaded.items():
            (headers if key == "header" else frames[key]).append(value)
        sources.append(SourceFile(path, KINDS[kind], count, unit))
        notes.extend(dropped)
    return Inputs(results_dir, _concat(frames["compare"], list(COMPARE_FIELDS) + ["source"]),
                  _concat(frames["tuning_results"]), _concat(frames["measurements"]), _concat(frames["tuned"]),
                  headers, _concat(frames["bert"]), _concat(frames["breakdown"]), _concat(frames["budget"]),
                  sources, errors, unreadable,
                  notes, ignored)


def _collapse(messages, keep=3):
    """The first `keep` messages and a count of the rest."""
    if len(messages) <= keep + 1:
        return messages
    return messages[:keep] + [f"... and {len(messages) - keep} more like these"]


def _concat(frames, columns=None):
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)


def _first_line(path):
    try:
        with open(path, "rb") as f:
            return f.readline().decode("utf-8", "replace").strip()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None


NOT_READ = "not a kind of result the report reads: compare CSV, BERT CSV, tuning database or tuned-config file"


def _classify(path):
    """(kind, None) for a result file of a kind in KINDS, else (None, why it is not read)."""
    name = os.path.basename(path).lower()
    ext = os.path.splitext(name)[1]
    if ext == ".jsonl":
        return "tuning", None
    if ext == ".json":
        if name.startswith("tuned"):
            return "tuned", None
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError, UnicodeDecodeError):
            return None, NOT_READ
        if isinstance(data, dict) and data.get("format") == tuned.FORMAT:
            return "tuned", None
        return None, NOT_READ
    header = set(next(csv.reader([_first_line(path)]), []))
    if header in [set(h) for h in [COMPARE_FIELDS] + EARLIER_COMPARE_HEADERS] or name.startswith("compare"):
        return "compare", None
    if {"model", "p50_ms", "p90_ms"} <= header and header & {"runner", "method"}:
        return "bert", None
    if set(BREAKDOWN_REQUIRED) <= header:
        return "breakdown", None
    if {"budget_ms", "batch", "p90_ms", "fits"} <= header:
        return "budget", None
    if {"layer", "kernel"} <= header:
        return None, "a BERT runner table the report does not show: kernels per layer"
    if name.startswith("bert"):
        return "bert", None
    return None, NOT_READ


def _csv_frame(path, header_ok):
    """DataFrame of a CSV read through the store (a cut-off last line is skipped), indexed by line
    number; `header_ok(header)` raises InputError for a header of the wrong kind. Rows with a
    wrong number of fields are dropped with a note."""
    lines = store.read_lines(path)
    if not lines:
        raise InputError(f"{path}: empty file (no header line)")
    rows = list(csv.reader(lines))
    header = rows[0]
    header_ok(header)
    good = {i: r for i, r in enumerate(rows[1:], 2) if len(r) == len(header)}
    bad = [i for i, r in enumerate(rows[1:], 2) if len(r) != len(header) and r]
    dropped = [f"{path}: {len(bad)} rows with a wrong number of fields skipped (lines "
               f"{', '.join(map(str, bad[:5]))}{', ...' if len(bad) > 5 else ''})"] if bad else []
    df = pd.DataFrame(list(good.values()), columns=header, index=list(good))
    return df, dropped


def _numeric(df, columns, path):
    """Convert `columns` to numbers in place; a non-empty value that is not a number is an error."""
    for col in columns:
        if col not in df:
            continue
        text = df[col].astype(str).str.strip()
        num = pd.to_numeric(text.where(text != ""), errors="coerce")
        bad = num.isna() & (text != "") & (text.str.lower() != "nan")
        if bad.any():
            line = bad.idxmax()
            raise InputError(f"{path}: line {line}: column {col!r} is {df.at[line, col]!r}, not a number")
        df[col] = num


def _compare_header(path):
    def check(header):
        if header == COMPARE_FIELDS or header in EARLIER_COMPARE_HEADERS:
            return
        missing = [f for f in COMPARE_FIELDS if f not in header]
        extra = [f for f in header if f not in COMPARE_FIELDS]
        if len(missing) > 5:
            detail = f"{len(missing)} of the {len(COMPARE_FIELDS)} compare columns missing, first line {header[:4]}"
        else:
            detail = "; ".join(p for p in (f"missing columns {missing}" if missing else "",
                                           f"unexpected columns {extra}" if extra else "") if p)
        raise InputError(f"{path}: not a compare results file of this sparsebench version (header differs: "
                         f"{detail or 'columns in another order'}); re-run `sparsebench compare --rerun "
                         "--out ...` to measure it afresh")
    return check


def _read_compare(path):
    df, dropped = _csv_frame(path, _compare_header(path))
    for col in COMPARE_FIELDS:
        if col not in df:                  # a file of an earlier header: its later columns empty
            df[col] = ""
    _numeric(df, COMPARE_NUMERIC, path)
    bad_status = ~df["status"].isin(STATUSES)
    if bad_status.any():
        line = bad_status.idxmax()
        raise InputError(f"{path}: line {line}: status {df.at[line, 'status']!r} is not one of "
                         f"{', '.join(STATUSES)}")
    ok_without_time = (df["status"] == "ok") & df["median_ms"].isna()
    if ok_without_time.any():
        raise InputError(f"{path}: line {ok_without_time.idxmax()}: status ok but no median_ms")
    df["unstable"] = df["unstable"] == "True"
    df["degraded"] = df["degraded"] == "True"
    df["source"] = os.path.basename(path)
    # an int8 run's own rows become methods sparsebench-int8 (quantization of X included) and
    # sparsebench-int8-kernel; its float32 methods repeat what the float32 runs measure (each
    # speedup is still against the dense of its own run)
    int8 = df["dtype"] == "int8"
    df = df[~int8 | df["method"].isin(list(INT8_METHODS))].copy()
    df.loc[df["dtype"] == "int8", "method"] = df.loc[df["dtype"] == "int8", "method"].map(INT8_METHODS)
    return {"compare": df.reset_index(drop=True)}, len(df), "rows", dropped


def _bert_header(path):
    def check(header):
        have = {BERT_ALIASES.get(c, c) for c in header}
        missing = [c for c in BERT_REQUIRED if c not in have]
        if missing:
            raise InputError(f"{path}: not a BERT results CSV: missing columns {missing} (expected "
                             f"{', '.join(BERT_REQUIRED + BERT_OPTIONAL)})")
    return check


def _read_bert(path):
    df, dropped = _csv_frame(path, _bert_header(path))
    df = df.rename(columns={a: c for a, c in BERT_ALIASES.items() if a in df and c not in df})
    _numeric(df, ("sparsity", "batch", "seq", "threads", "p50_ms", "p90_ms", "throughput", "pct_peak"), path)
    if df["p50_ms"].isna().any():
        raise InputError(f"{path}: line {df['p50_ms'].isna().idxmax()}: no p50_ms")
    for col in BERT_OPTIONAL:
        if col not in df:
            df[col] = "" if col in ("block", "unstable") else float("nan")
    df["unstable"] = df["unstable"].astype(str) == "True"
    if "dtype" in df:
        # an int8 run adds its own runners (ours, ours with the batch in one pass or one sequence
        # at a time, the transformers model after int8 sparsify); its other runners repeat the
        # float32 run's
        int8 = df["dtype"] == "int8"
        own = df["runner"].isin(INT8_RUNNERS)
        df = df[~int8 | own].copy()
        mine = (df["dtype"] == "int8") & df["runner"].isin(INT8_RUNNERS)
        df.loc[mine, "runner"] = df.loc[mine, "runner"].map(INT8_RUNNERS)
    if df["throughput"].isna().any():
        df["throughput"] = df["throughput"].fillna(df["batch"] / df["p50_ms"] * 1e3)
    df["source"] = os.path.basename(path)
    _runner_machine(df, path, "-latency.csv")
    return {"bert": df.reset_index(drop=True)}, len(df), "rows", dropped


def _read_breakdown(path):
    df, dropped = _csv_frame(path, lambda header: None)
    _numeric(df, ("sparsity", "batch", "seq", "threads", "ms"), path)
    for col in BREAKDOWN_OPTIONAL:
        if col not in df:
            df[col] = "" if col == "block" else float("nan")
    if "dtype" in df:               # the int8 encoder is a configuration of its own
        df.loc[df["dtype"] == "int8", "model"] = df["model"].astype(str) + " int8"
    df["source"] = os.path.basename(path)
    _runner_machine(df, path, "-breakdown.csv")
    return {"breakdown": df.reset_index(drop=True)}, len(df), "rows", dropped


def _read_budget(path):
    df, dropped = _csv_frame(path, lambda header: None)
    if "streams" not in df:             # written before the search tried several streams
        df["streams"], df["threads_per_stream"] = "1", ""
    if "pct_peak" not in df:            # written before the rows had it
        df["pct_peak"] = ""
    _numeric(df, ("sparsity", "budget_ms", "streams", "threads_per_stream", "batch", "seq", "p50_ms", "p90_ms",
                  "throughput_seq_s", "pct_peak"), path)
    df["fits"] = df["fits"].astype(str) == "True"
    for col in ("block", "dtype"):
        if col not in df:
            df[col] = ""
    df["source"] = os.path.basename(path)
    _runner_machine(df, path, "-budget.csv")
    return {"budget": df.reset_index(drop=True)}, len(df), "rows", dropped


def _runner_machine(df, path, suffix):
    """hardware_id and cpu columns of a BERT runner table, from the meta of the <stem>.json the
    runner writes beside it ("" when there is none)."""
    meta = {}
    if path.endswith(suffix):
        try:
            with open(path[:-len(suffix)] + ".json", encoding="utf-8") as f:
                meta = json.load(f).get("meta", {})
        except (OSError, ValueError, AttributeError):
            meta = {}
    for key in ("hardware_id", "cpu"):
        if key not in df:
            df[key] = str(meta.get(key) or "") if isinstance(meta, dict) else ""


def _task(rec):
    t = rec["task"]
    if not isinstance(t, dict) or any(k not in t for k in TASK_KEYS):
        raise KeyError("task")
    br, bc = (int(x) for x in str(t["block"]).split("x"))
    return {"M": int(t["M"]), "K": int(t["K"]), "N": int(t["N"]), "sparsity": float(t["sparsity"]),
            "block": f"{br}x{bc}", "dtype": str(t["dtype"]), "threads": int(t["threads"]),
            "layout": str(t.get("layout", "features"))}


def _result_row(rec, source):
    if any(k not in rec for k in RESULT_KEYS):
        raise KeyError("result fields")
    traj = rec["trajectory"]
    if not isinstance(traj, list) or not all(v is None or isinstance(v, (int, float)) for v in traj):
        raise TypeError("trajectory")
    best_s, dense_s, default_s = (float(rec[k]) for k in ("best_s", "dense_s", "default_s"))
    if rec["method"] not in ("sparse", "dense") or (rec["method"] == "sparse" and not isinstance(rec["config"], dict)):
        raise TypeError("config")
    return {**_task(rec), "name": rec.get("name", ""), "strategy": str(rec["strategy"]),
            "evals": int(rec["evals"]), "space_size": int(rec["space_size"]), "max_evals": rec.get("max_evals"),
            "method": rec["method"], "config": rec["config"], "default_config": rec.get("default_config"),
            "best_s": best_s, "best_p20_s": float(rec.get("best_p20_s", best_s)),
            "best_p80_s": float(rec.get("best_p80_s", best_s)), "dense_s": dense_s, "default_s": default_s,
            "unstable": bool(rec.get("unstable", False)), "trajectory": traj,
            "hardware_id": rec.get("hardware_id", ""), "cpu": rec.get("cpu", ""), "build_id": rec.get("build_id", ""),
            "timestamp": rec.get("timestamp", ""), "source": source}


def _read_tuning(path):
    records = store.read_json(path)
    source = os.path.basename(path)
    results, measurements, bad = [], [], 0
    for rec in records:
        try:
            if rec.get("kind") == "result":
                results.append(_result_row(rec, source))
            elif rec.get("kind") == "measurement":
                measurements.append({**_task(rec), "strategy": str(rec.get("strategy", "")),
                                     "status": str(rec["status"]), "hardware_id": rec.get("hardware_id", ""),
                                     "cpu": rec.get("cpu", ""),
                                     "build_id": rec.get("build_id", "")})
            else:
                bad += 1
        except (KeyError, TypeError, ValueError):
            bad += 1
    if not results and not measurements:
        raise InputError(f"{path}: no sparsebench tuning records in it (a tuning database holds the JSON "
                         "lines that `sparsebench autotune --db PATH` writes)")
    dropped = [f"{path}: {bad} records that are not sparsebench tuning records skipped"] if bad else []
    return ({"tuning_results": pd.DataFrame(results), "measurements": pd.DataFrame(measurements)},
            len(results) + len(measurements), "records", dropped)


def _read_tuned(path):
    try:
        with warnings.catch_warnings():      # a report shows whose results they are in its metadata
            warnings.simplefilter("ignore", tuned.ForeignTunedWarning)
            data = tuned.load_tuned(path).data
    except SparsebenchError as e:
        raise InputError(str(e)) from None
    rows = []
    for e in data["entries"]:
        rows.append({"name": e.get("name", ""), "M": int(e["M"]), "K": int(e["K"]), "N": int(e["N"]),
                     "sparsity": float(e["sparsity"]), "block": "%dx%d" % tuple(e["block"]), "dtype": e["dtype"],
                     "threads": int(e["threads"]), "layout": e.get("layout", "features"),
                     "method": e["method"], "config": e["config"],
                     "time_s": e.get("time_s"), "dense_s": e.get("dense_s"), "default_s": e.get("default_s"),
                     "strategy": e.get("strategy", ""), "evals": e.get("evals"),
                     "hardware_id": data.get("hardware_id", ""), "source": os.path.basename(path)})
    header = {"path": path, "hardware": data.get("hardware", {}), "hardware_id": data.get("hardware_id", ""),
              "build": data.get("build", {}), "build_id": data.get("build_id", ""),
              "created": data.get("created", "")}
    return {"tuned": pd.DataFrame(rows), "header": header}, len(rows), "entries", []


READERS = {"compare": _read_compare, "bert": _read_bert, "breakdown": _read_breakdown, "budget": _read_budget,
           "tuning": _read_tuning, "tuned": _read_tuned}
