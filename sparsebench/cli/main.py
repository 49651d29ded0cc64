"""The `sparsebench` command line."""
import argparse
import json
import math
import os
import re
import sys

from ..bench.baselines import DEFAULT_METHODS, names as _method_names
from ..errors import SparsebenchError
from ..machine import results_folder
from ..peak import DEGRADED
from ..spmm import LAYOUTS_OF_X
from . import bert as bert_cli
from . import report as report_cli
from .args import blocks, duration, floats, positive, ray_address
from ..dtypes import DTYPES, check_dtype_blocks
from ..bench.shapes import ShapeFileError, load_shapes


def add_problem_args(q, threads_help="default: all cores", dtype=True):
    """--shapes, --sparsity, --block, --threads (and --dtype), as the measuring commands take them."""
    q.add_argument("--shapes", default="quick", help="shape set name (quick, bert-base, ...: sparsebench/shapes/NAME.csv), CSV path or MxKxN list")
    q.add_argument("--sparsity", type=floats, default=[0.7, 0.8, 0.9], help="e.g. 0.7,0.8,0.9")
    q.add_argument("--block", type=blocks, default=[(4, 1)], help="e.g. 4x1,1x1")
    q.add_argument("--threads", type=positive, default=None, help=threads_help)
    if dtype:
        q.add_argument("--dtype", choices=DTYPES, default="float32",
                       help="kernels: float32, or int8 (AVX512-VNNI; 4x1, 8x1, 16x1, 4x4, 1x4 blocks)")


def cmd_info(args):
    from .info import collect, format_info

    info = collect()
    if args.peak:
        from .info import collect_peak, format_peak
        info["peak"] = collect_peak(args.threads)
    text = format_info(info) + ("\n" + format_peak(info["peak"]) if args.peak else "")
    print(json.dumps(info, indent=2) if args.json else text)


def cmd_bench(args):
    """A view over run: the exhaustive tuner's winner, the default heuristic and numpy dense side by
    side (compare), then the cost of one call and how our pool gets along with numpy's."""
    from ..bench.interplay import call_overhead, thread_interplay
    from ..cpu import default_threads

    args.strategy, args.max_evals, args.dtype = "exhaustive", None, "float32"
    args.methods = args.methods or "dense,sparsebench,sparsebench-default"
    rc = cmd_run(args, report=False)
    if rc:
        return rc
    for name, st in call_overhead().items():
        print(f"call overhead {name}: {st.median * 1e6:.2f} us per call (median of {st.n})")
    inter = thread_interplay(args.threads or default_threads())
    print("thread pools, alternating numpy dense and spmm (768x768x128, 90%, 4x1): "
          f"dense {inter['dense_alone_ms']:.3f} -> {inter['dense_alternating_ms']:.3f} ms "
          f"({inter['dense_slowdown']:.2f}x), sparse {inter['sparse_alone_ms']:.3f} -> "
          f"{inter['sparse_alternating_ms']:.3f} ms ({inter['sparse_slowdown']:.2f}x)")


def _set_name(spec):
    """A file-name-friendly name for a --shapes argument (results/<cpu>/compare-<name>.csv)."""
    base = os.path.splitext(os.path.basename(str(spec).split(",")[0].strip()))[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base) or "shapes"


def cmd_compare(args):
    from ..bench import baselines
    from .. import store
    from ..bench.compare import Compare, int8_table, layout_table, read_rows, speedup_table, tty_progress
    from ..config import KernelConfig
    from ..cpu import default_threads

    threads = args.threads or default_threads()
    shapes = load_shapes(args.shapes)
    check_dtype_blocks(args.dtype, args.block)
    methods = baselines.parse_methods(args.methods or ",".join(default_methods(args.dtype)))
    suffix = "" if args.dtype == "float32" else "-" + args.dtype
    out = args.out or os.path.join(results_folder(), f"compare-{_set_name(args.shapes)}{suffix}.csv")
    if args.rerun and os.path.exists(out):
        print(f"--rerun: previous results moved to {store.set_aside(out)}")
    config_for = None
    if args.config:
        fixed = KernelConfig.from_json(args.config)
        config_for = lambda A, n, s, layout="features": fixed if fixed.dtype == A.dtype else None  # noqa: E731
    elif args.tuned:
        from ..tune.apply import load_tuned
        tuned = load_tuned(args.tuned)

        def config_for(A, n, s, layout="features"):
            choice = tuned.lookup(A.shape[0], A.shape[1], n, s, A.block, dtype=A.dtype, threads=threads,
                                  layout=layout)
            return "dense" if choice.method == "dense" else choice.config
    store.check_writable(out)
    read_rows(out)      # an unwritable, foreign or corrupt file fails now, before any measuring
    cache = "cold (caches flushed before every call)" if args.cold else "warm (calibrated loops)"
    print(f"sparsebench compare: {len(shapes)} shapes x {len(args.block)} blocks x {len(args.sparsity)} "
          f"sparsities; {args.dtype}; methods {', '.join(methods)}; {threads} threads; {cache}; median of "
          f"{args.samples} interleaved samples; results appended to {out}", flush=True)
    cmp = Compare(methods, threads, samples=args.samples, cold=args.cold, out=out, config_for=config_for,
                  log=lambda line: print(line, flush=True), progress=tty_progress(sys.stderr),
                  dtype=args.dtype)
    rows = cmp.run(shapes, args.sparsity, args.block)
    wanted = {s.name for s in shapes}
    blocks = {"%dx%d" % b for b in args.block}
    sparsities = {f"{s:g}" for s in args.sparsity}
    rows = [r for r in rows if r["shape"] in wanted and r["block"] in blocks and r["sparsity"] in sparsities
            and r["cache"] == cmp.cache and r["threads"] == str(threads) and r["dtype"] == args.dtype]
    int8_peak = cmp.monitor.rate("int8")
    print(f"\nspeedup over numpy dense (median of per-round ratios) and, in brackets, % of the measured peak "
          f"({cmp.monitor.best:.0f} GFLOP/s fp32" + (f", {int8_peak:.0f} GOP/s int8" if int8_peak else "")
          + f", {threads} threads; useful work: 2*nnz*N, dense 2*M*K*N); ? = unstable, spread >= 10%; "
          f"! = degraded, {DEGRADED}:")
    print(speedup_table(rows, methods))
    if args.dtype == "int8" and {"sparsebench", "sparsebench-fp32"} <= set(methods):
        print("\nint8 against our float32 kernels (per-round time ratio, median and p20-p80; quantization of "
              "X included):")
        print(int8_table(rows))
    if {"sparsebench", "sparsebench-tokens"} <= set(methods):
        print("\ntoken-major X and Y (contiguous, as PyTorch holds them; from the same allocator) against "
              "feature-major (per-round time ratio, median and p20-p80):")
        print(layout_table(rows))
    bad = [r for r in rows if r["status"] in ("wrong", "error")]
    for r in bad:
        print(f"FAILED {r['method']} on {r['shape']} {r['block']} {r['sparsity']}: {r['reason']}")
    print(f"results: {out}")
    return 1 if bad else 0


METHOD_NAMES = _method_names()


def default_methods(dtype):
    """What compare runs when --methods is not given: int8 adds our float32 kernels as yardstick."""
    return list(DEFAULT_METHODS) + (["sparsebench-fp32"] if dtype == "int8" else [])


def cmd_run(args, report=True):
    """autotune -> export -> compare (tuned) -> report: the main job, all into one results folder."""
    folder = args.results
    common = ["--shapes", args.shapes, "--sparsity", ",".join(f"{s:g}" for s in args.sparsity),
              "--block", ",".join("%dx%d" % b for b in args.block), "--dtype", args.dtype]
    if args.threads:
        common += ["--threads", str(args.threads)]
    db, tuned = os.path.join(folder, "tuning.jsonl"), os.path.join(folder, "tuned.json")
    methods = args.methods or ",".join(default_methods(args.dtype))
    suffix = "" if args.dtype == "float32" else "-" + args.dtype
    compare_out = os.path.join(folder, f"compare-{_set_name(args.shapes)}{suffix}.csv")
    steps = [["autotune", *common, "--db", db, "--strategy", args.strategy]
             + (["--max-evals", str(args.max_evals)] if args.max_evals else []),
             ["export", "--db", db, "--out", tuned],
             ["compare", *common, "--tuned", tuned, "--methods", methods, "--out", compare_out]]
    if report:
        steps.append(["report", folder, "--out", os.path.join(folder, "report")])
    for step in steps:
        print(f"\n$ sparsebench {' '.join(step)}", flush=True)
        sub = build_parser().parse_args(step)
        rc = sub.func(sub)
        if rc:
            return rc


def cmd_autotune(args):
    from ..bench.compare import tty_progress
    from ..cpu import available_isas, default_threads
    from ..tune import Autotuner, TuningDB, strategies

    strategies.get(args.strategy)
    shapes = load_shapes(args.shapes)
    check_dtype_blocks(args.dtype, args.block)
    if args.ray is not None:
        return _autotune_on_ray(args, shapes)
    threads = args.threads or default_threads()
    db = TuningDB(args.db, foreign=args.use_foreign)
    isas = available_isas(args.dtype)
    isas = isas if args.isa == "all" else isas[:1]
    print(f"sparsebench autotune: {len(shapes)} shapes x {len(args.block)} blocks x {len(args.sparsity)} "
          f"sparsities; {args.dtype}; {args.layout}-major X; strategy {args.strategy}; {_budget(args)}; "
          f"{threads} threads; "
          f"ISAs {', '.join(isas)}; "
          f"database {args.db} ({len(db.records)} records of this machine and build)", flush=True)
    tuner = Autotuner(db, args.strategy, max_evals=args.max_evals, time_limit=args.time_limit,
                      retune=args.retune, samples=args.samples, isas=isas,
                      log=lambda line: print(line, flush=True), progress=tty_progress(sys.stderr))
    results = tuner.tune_all(shapes, args.sparsity, args.block, threads, args.dtype, args.layout)
    print("\nbest per task " + RESULTS_LEGEND)
    print(_results_table(results))
    degraded = [r for r in results if r.get("degraded")]
    if degraded:
        print(f"degraded: {len(degraded)} of {len(results)} tasks were re-timed while {DEGRADED} (another "
              "process or tenant on the cores or the memory); --retune them later")
    for threads_, monitor in tuner.monitors.items():
        print(f"peak at {threads_} threads: {monitor.best:.0f} GFLOP/s fp32"
              + (f", {monitor.rate('int8'):.0f} GOP/s int8" if monitor.rate("int8") else "")
              + "; probes " + ", ".join(f"{p['gflops']} ({p['copy_gbs']} GB/s)" for p in monitor.probes))
    print(f"database: {args.db}; next: sparsebench export --db {args.db} --out "
          f"{os.path.join(os.path.dirname(args.db), 'tuned.json')}")


RESULTS_LEGEND = ("(times re-measured side by side with dense and the default heuristic; ? = unstable; "
                  f"! = degraded, {DEGRADED}; % peak: useful GFLOP/s (2*nnz*N, "
                  "dense 2*M*K*N; int8 GOP/s) of the measured peak):")


def _budget(args):
    """The evaluation and time budget of an autotune run, in words."""
    budget = f"at most {args.max_evals} evaluations per task" if args.max_evals else "no evaluation limit"
    return budget + (f", {args.time_limit:.0f} s in all" if args.time_limit else "")


def _results_table(results):
    """The best-per-task table of autotune result records."""
    from ..bench.compare import format_table

    lines = []
    for r in results:
        t = r["task"]
        cfg = "dense" if r["method"] == "dense" else _short_config(r["config"])
        dims = f"{t['M']}x{t['K']}x{t['N']}" + (" " + t["layout"] if "layout" in t else "")
        lines.append([r["name"], dims, t["block"], f"{t['sparsity']:g}", cfg,
                      f"{r['best_s'] * 1e3:.3f}", f"{min(r['dense_s'], r.get('numpy_s') or math.inf) / r['best_s']:.2f}x",
                      "-" if r.get("numpy_s") is None else f"{r['numpy_s'] / r['best_s']:.2f}x",
                      f"{r['evals']}/{r['space_size']}", f"{r['default_s'] / r['best_s']:.2f}x"
                      + ("?" if r["unstable"] else "") + ("!" if r.get("degraded") else ""),
                      "-" if r.get("pct_peak") is None else f"{r['pct_peak']:.0f}%"])
    return format_table(["shape", "MxKxN", "block", "sparsity", "best config", "ms", "vs best dense",
                         "vs numpy", "evals", "default/best", "% peak"], lines)


def _autotune_on_ray(args, shapes):
    """autotune --ray: every task on every CPU kind of a Ray cluster, into one database."""
    from .. import store
    from ..bench.compare import format_table
    from ..tune import Task
    from ..tune.ray_runner import LOCAL, FleetProgress, FleetTuner

    tuner = FleetTuner(args.db, args.ray, args.strategy, max_evals=args.max_evals, samples=args.samples,
                       isa=args.isa, retune=args.retune, time_limit=args.time_limit, foreign=args.use_foreign,
                       log=lambda line: print(line, flush=True))
    store.check_writable(args.db)
    where = "a local Ray cluster" if tuner.address == LOCAL else f"the Ray cluster at {tuner.address}"
    try:
        tuner.connect()
        kinds = tuner.group(tuner.probe_nodes(), args.dtype)
        for kind in kinds:
            threads = args.threads or kind.threads
            kind.tasks = [(sh.name, Task(sh.M, sh.K, sh.N, s, b, args.dtype, threads, args.layout))
                          for sh in shapes for b in args.block for s in args.sparsity]
        print(f"sparsebench autotune on {where}: {sum(len(k.nodes) for k in kinds)} node(s), {len(kinds)} CPU "
              f"kind(s); {len(shapes)} shapes x {len(args.block)} blocks x {len(args.sparsity)} sparsities per "
              f"kind; {args.dtype}; strategy {args.strategy}; {_budget(args)}; one actor per node holding all "
              f"its CPUs; database {args.db}", flush=True)
        tuner.run(kinds, FleetProgress())
    finally:
        tuner.close()
    summary = []
    for kind in kinds:
        print(f"\n{kind.cpu} (hardware {kind.hardware_id}), best per task " + RESULTS_LEGEND)
        print(_results_table(kind.results + kind.skipped))
        for label, why in kind.failed:
            print(f"not tuned: {label}: {why}")
        if kind.out_of_time:
            print(f"time limit reached: {kind.out_of_time} tasks not tuned")
        summary.append([kind.cpu, kind.hardware_id, str(sum(bool(r.get("degraded")) for r in kind.results)),
                        str(len(kind.nodes)), str(len(kind.tasks)), str(len(kind.results)), str(len(kind.skipped)),
                        str(kind.reruns), str(len(kind.failed) + kind.out_of_time)])
    print(f"\nper CPU kind (degraded: tuned while {DEGRADED}, --retune them later; "
          "re-run: tasks run again after their worker or node died):")
    print(format_table(["cpu", "hardware", "degraded", "nodes", "tasks", "tuned", "already tuned", "re-run",
                        "not tuned"], summary))
    print(f"database: {args.db}; next: sparsebench export --db {args.db} --out "
          f"{os.path.join(os.path.dirname(args.db), 'tuned.json')} (a section per CPU kind)")
    return 1 if any(kind.failed for kind in kinds) else 0


def cmd_check_strategy(args):
    from ..cpu import default_threads
    from ..tune import Task, TuningDB
    from ..tune.check import check_strategy, replay_strategy

    threads = args.threads or default_threads()
    db = TuningDB(args.db, foreign=args.use_foreign, writable=False)
    tasks = [Task(sh.M, sh.K, sh.N, s, b, args.dtype, threads, args.layout)
             for sh in load_shapes(args.shapes) for b in args.block for s in args.sparsity]
    if args.replay and args.top != 1:
        raise ValueError("check-strategy: --top re-times configs and --replay times nothing; drop one")
    if args.replay:
        print(f"{args.strategy} replayed on the whole-space table {args.against}'s run measured (no timing): "
              f"slowdown = time of the best config {args.strategy} found / the best of the space, both as "
              "measured there")
        rows = replay_strategy(db, tasks, args.strategy, args.against)
        return _strategy_table(args, rows, "optimum ms", "space", "no ", "the space",
                               lambda r: f"{r['slowdown']:.3f}")
    ref = (f"{args.against} winner time" if args.top == 1 else
           f"the fastest of {args.against}'s {args.top} best configs (its winner and the next by its times)")
    print(f"{args.strategy} vs {args.against}: re-timed side by side, {args.samples} interleaved "
          f"samples in each of {args.processes} fresh processes; slowdown = {args.strategy} winner time / "
          f"{ref}, median over the processes [lowest-highest process]")
    rows = check_strategy(db, tasks, args.strategy, args.against, samples=args.samples, processes=args.processes,
                          top=args.top)
    _strategy_table(args, rows, f"{args.against} ms", "ref_evals", "not tuned with ", f"{args.against}'s",
                    lambda r: f"{r['slowdown']:.3f} [{r['slowdown_low']:.3f}-{r['slowdown_high']:.3f}]")


def _strategy_table(args, rows, ref_title, evals_of, missing, evals_what, slowdown):
    """Print check-strategy's table and summary; 0 if any task was compared, else 1."""
    from ..bench.compare import format_table

    lines, fractions, slowdowns = [], [], []
    for r in rows:
        t = r["task"]
        head = [f"{t.M}x{t.K}x{t.N}", "%dx%d" % t.block, f"{t.sparsity:g}"]
        if "missing" in r:
            lines.append(head + [missing + r["missing"]] + [""] * 4)
            continue
        fractions.append(r["evals"] / max(r[evals_of], 1))
        slowdowns.append(r["slowdown"])
        lines.append(head + [f"{r['evals']}/{r[evals_of]}", f"{r['mine_ms']:.4f}", f"{r['ref_ms']:.4f}",
                             slowdown(r), r["mine"]])
    print(format_table(["MxKxN", "block", "sparsity", "evals", f"{args.strategy} ms", ref_title,
                        "slowdown", f"{args.strategy} winner"], lines))
    if slowdowns:
        print(f"worst slowdown {max(slowdowns):.3f}, median {sorted(slowdowns)[len(slowdowns) // 2]:.3f}; "
              f"evaluations used: {min(fractions):.0%}-{max(fractions):.0%} of {evals_what}")
    return 0 if slowdowns else 1


def _short_config(d):
    from ..config import KernelConfig
    return str(KernelConfig.from_dict(d))


def cmd_export(args):
    from ..tune.apply import export
    from ..tune import TuningDB
    from ..tune.records import newest_builds

    db = TuningDB(args.db, foreign=args.use_foreign, writable=False, hardware_ids=newest_builds(args.db))
    if not db.results():
        print(f"sparsebench: error: {args.db} holds no finished tuning results of any machine and its build; "
              "run `sparsebench autotune --db ...` first", file=sys.stderr)
        return 2
    data = export(db, args.out)
    print(f"wrote {len(data['entries'])} tuned tasks of this machine to {args.out}")
    for hardware_id, section in data["machines"].items():
        print(f"  {len(section['entries'])} tuned tasks of {section['cpu']} (hardware {hardware_id})")


def cmd_archive(args):
    from ..tune.records import archive, archive_path

    moved, kept = archive(args.db)
    if moved:
        print(f"{args.db}: moved {moved} records of older builds (or without CPU identity) to "
              f"{archive_path(args.db)}; kept {kept}")
    else:
        print(f"{args.db}: nothing to archive ({kept} lines kept: this build's records and each machine's newest)")


def add_layout_arg(q):
    q.add_argument("--layout", choices=LAYOUTS_OF_X, default="features",
                   help="of X and Y: features (X is K x N, as our models compute) or tokens (X is N x K and Y "
                   "N x M, PyTorch's layout: what sparsebench.torch's SparseLinear runs); tuned separately")


def build_parser():
    p = argparse.ArgumentParser(prog="sparsebench", description=__doc__)
    here = results_folder()         # this machine's results: results/<cpu>
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("info", help="CPU, instruction sets, build flags, threads, kernel variants")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--peak", action="store_true", help="also the measured fp32 and int8 peaks, per core "
                   "and for --threads (cached per machine; see sparsebench.peak)")
    q.add_argument("--threads", type=positive, default=None, help="threads of the --peak (default: all cores)")
    q.set_defaults(func=cmd_info)
    q = sub.add_parser("bench", help="run with the exhaustive tuner: its winner, the default heuristic "
                       "and numpy dense side by side; then call overhead and thread interplay")
    add_problem_args(q, dtype=False)
    q.add_argument("--methods", default=None, help="default: dense,sparsebench,sparsebench-default")
    q.add_argument("--results", default=here, help=f"folder for the database, tuned file and CSV (default {here}: "
                   "this machine's)")
    q.set_defaults(func=cmd_bench)
    q = sub.add_parser("compare", help="every method (dense, scipy, MKL, torch, ours) side by side")
    add_problem_args(q, "for every method (default: all cores)")
    q.add_argument("--methods", default=None,
                   help="comma-separated, or 'all' (default: " + ",".join(DEFAULT_METHODS)
                   + ", and sparsebench-fp32 with --dtype int8); known: " + ", ".join(METHOD_NAMES))
    q.add_argument("--samples", type=positive, default=30, help="interleaved samples per method")
    q.add_argument("--cold", action="store_true", help="flush the caches before every timed call")
    q.add_argument("--config", default=None, help="KernelConfig JSON for the sparsebench method")
    q.add_argument("--tuned", default=None, help="tuned-config file (sparsebench export) for the "
                   "sparsebench method; default: the default heuristic")
    q.add_argument("--out", default=None, help="CSV (default results/<cpu>/compare-<shapes>.csv); "
                   "an existing file is resumed")
    q.add_argument("--rerun", action="store_true", help="move existing results aside and measure all")
    q.set_defaults(func=cmd_compare)
    q = sub.add_parser("autotune", help="search the best kernel config per shape, sparsity and block")
    add_problem_args(q)
    add_layout_arg(q)
    q.add_argument("--strategy", default="smart", help="smart (local search), exhaustive or random")
    q.add_argument("--max-evals", type=positive, default=None, help="sparse configs measured per task")
    q.add_argument("--time-limit", type=duration, default=None, help="for the whole run, e.g. 10m")
    q.add_argument("--samples", type=positive, default=7, help="timing samples per candidate")
    q.add_argument("--isa", choices=("best", "all"), default="best",
                   help="search the best instruction set only, or every one this CPU runs")
    q.add_argument("--db", default=os.path.join(here, "tuning.jsonl"), help="tuning database (JSON lines)")
    q.add_argument("--retune", action="store_true", help="measure again what the database already has")
    q.add_argument("--use-foreign", action="store_true",
                   help="use records from another machine or build too")
    q.add_argument("--ray", nargs="?", const="local", default=None, type=ray_address, metavar="ADDRESS",
                   help="tune on every CPU kind of a Ray cluster: 'auto', its address (10.0.0.1:6379), or "
                   "none to start a local one; needs pip install \"sparsebench[ray]\"")
    q.set_defaults(func=cmd_autotune)
    q = sub.add_parser("run", help="the main job: autotune, export, compare with the tuned configs, report")
    add_problem_args(q)
    q.add_argument("--strategy", default="smart", help="autotune strategy: smart, exhaustive or random")
    q.add_argument("--max-evals", type=positive, default=None, help="sparse configs measured per task")
    q.add_argument("--methods", default=None, help="methods to compare (default: as compare)")
    q.add_argument("--results", default=here, help=f"folder for the database, tuned file, CSV, report (default "
                   f"{here}: this machine's)")
    q.set_defaults(func=cmd_run)
    q = sub.add_parser("check-strategy", help="re-time one strategy's winners against another's")
    add_problem_args(q)
    add_layout_arg(q)
    q.add_argument("--strategy", default="smart")
    q.add_argument("--against", default="exhaustive")
    q.add_argument("--samples", type=positive, default=41, help="interleaved samples per process")
    q.add_argument("--processes", type=positive, default=3, help="fresh processes to time in (pyperf style)")
    q.add_argument("--top", type=positive, default=1,
                   help="compare with the fastest of --against's winner and its next best configs, this many "
                   "in all, re-timed side by side (5: against a sweep's best five)")
    q.add_argument("--replay", action="store_true",
                   help="no timing: run --strategy on the whole-space table --against's run measured "
                   "(Kernel Tuner's simulation mode; --against must be exhaustive)")
    q.add_argument("--db", default=os.path.join(here, "tuning.jsonl"))
    q.add_argument("--use-foreign", action="store_true", help="use records of another machine or build")
    q.set_defaults(func=cmd_check_strategy)
    report_cli.add_parser(sub)
    bert_cli.add_parser(sub)
    q = sub.add_parser("export", help="write the tuned winners as a JSON file models import")
    q.add_argument("--db", default=os.path.join(here, "tuning.jsonl"))
    q.add_argument("--out", default=os.path.join(here, "tuned.json"))
    q.add_argument("--use-foreign", action="store_true", help="export records of another machine or build")
    q.set_defaults(func=cmd_export)
    q = sub.add_parser("archive", help="move the tuning records no tuner reads any more (older builds) to a "
                       "gzipped archive beside the database (a local disk; not while a tuner on NFS appends)")
    q.add_argument("--db", default=os.path.join(here, "tuning.jsonl"))
    q.set_defaults(func=cmd_archive)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (SparsebenchError, ShapeFileError, OSError, ValueError) as e:
        print(f"sparsebench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsebench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
