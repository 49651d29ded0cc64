"""`sparsebench bert`: a BERT encoder on the sparse kernels, timed end to end against dense runners.

Hook into the main CLI with ``bert_cli.add_parser(subparsers)``; the parser's ``func`` is ``run``.
"""
import argparse
import collections
import os
import time

from ..machine import results_folder
from ..models.bert import DEFAULT_TOKENS_PER_PASS
from ..prune import check_sparsity
from .args import block, duration, positive


def _sparsity(text):
    if text.lower() in ("keep", "none"):
        return None
    try:
        return check_sparsity(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}, or 'keep' for the checkpoint's weights as they are") from None


def _methods(text):
    from ..models.runner import BASELINES

    names = [x.strip() for x in text.split(",") if x.strip() and x.strip() != "none"]
    bad = [n for n in names if n not in BASELINES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown method {bad[0]!r}; choose from {', '.join(BASELINES)}")
    return names


def _tokens_per_pass(text):
    return None if text.strip().lower() == "all" else positive(text)


def _stream_counts(text):
    counts = [positive(x) for x in text.split(",") if x.strip()]
    if not counts:
        raise argparse.ArgumentTypeError("expected stream counts such as 1,2")
    return counts


def add_parser(subparsers):
    """Register the `bert` subcommand on an argparse subparsers object."""
    from ..models.config import MODELS

    q = subparsers.add_parser("bert", help="BERT encoder on the sparse kernels vs dense runners, end to end")
    q.add_argument("--model", default="bert-base", choices=list(MODELS), help="named model size (random weights)")
    q.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="Hugging Face BERT, DistilBERT or RoBERTa directory (config.json + model.safetensors) "
                   "instead of --model")
    q.add_argument("--sparsity", type=_sparsity, default=0.9,
                   help="prune linear weights to this block sparsity, or 'keep' (default 0.9)")
    q.add_argument("--block", type=block, default=None,
                   help="block shape, e.g. 4x1 (default 4x1; detected with --sparsity keep)")
    q.add_argument("--seq", type=positive, default=128, help="sequence length (default 128)")
    q.add_argument("--batch", type=positive, default=1, help="sequences per forward pass (default 1)")
    q.add_argument("--tokens-per-pass", type=_tokens_per_pass, default=DEFAULT_TOKENS_PER_PASS, metavar="T",
                   help="run a batch as passes of whole sequences of at most T tokens each (at least one), so "
                   f"that a pass's activations stay in the caches (default {DEFAULT_TOKENS_PER_PASS}); 'all': the "
                   "whole batch in one pass")
    q.add_argument("--dtype", choices=("float32", "int8"), default="float32",
                   help="linear-layer kernels: float32, or int8 (AVX512-VNNI; 4x1, 8x1, 16x1, 4x4, 1x4 blocks)")
    q.add_argument("--attention", choices=("float32", "int8"), default=None,
                   help="self-attention kernel (default: as --dtype; int8 needs AVX512-VNNI)")
    q.add_argument("--tuned", default=None, metavar="FILE", help="tuned kernel configs (from the tuner)")
    q.add_argument("--compare", type=_methods, default=None,
                   help="baselines, comma-separated: dense,fp32,torch,torch-sparsify,torch-sparsify-fp32,"
                   "onnxruntime,whole-batch,one-by-one, or none (default dense; dense,fp32 with --dtype int8; fp32 = "
                   "our runner on the float32 sparse kernels; torch-sparsify = the transformers model after "
                   "sparsebench.torch.sparsify (in --dtype), torch-sparsify-fp32 = the same on the float32 "
                   "kernels; whole-batch = ours with the batch in one pass; one-by-one = ours called on one "
                   "sequence at a time)")
    q.add_argument("--latency-budget", type=duration, default=None, metavar="TIME",
                   help="also find the most sequences/s whose p90 latency fits, e.g. 10ms: searches the "
                   "batch size and the number of streams (engines serving at once, each on threads/streams "
                   "threads)")
    q.add_argument("--streams", type=_stream_counts, default=None, metavar="N[,N...]",
                   help="stream counts --latency-budget tries (default: every one that divides --threads)")
    q.add_argument("--threads", type=positive, default=None, help="default: sparsebench's thread count")
    q.add_argument("--samples", type=positive, default=30, help="latency samples per method (default 30)")
    q.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    q.add_argument("--out", default=os.path.join(results_folder(), "bert"),
                   help="results folder (default results/<cpu>/bert: this machine's)")
    q.set_defaults(func=run)
    return q


def run(args):
    from ..cpu import default_threads
    from ..models import BertEncoder
    from ..models import runner, serving
    from ..peak import DEGRADED, PeakMonitor

    threads = args.threads or default_threads()
    try:
        serving.check_stream_counts(args.streams or (), threads)
    except ValueError as e:
        raise SystemExit(f"sparsebench bert: error: --streams: {e}") from None
    t0 = time.perf_counter()
    options = dict(sparsity=args.sparsity, block=args.block, tuned=args.tuned, threads=threads,
                   dtype=args.dtype, attention=args.attention, tokens_per_pass=args.tokens_per_pass)
    baselines = args.compare if args.compare is not None else (
        ["dense", "fp32"] if args.dtype == "int8" else ["dense"])
    if args.checkpoint:
        enc = BertEncoder.from_pretrained(args.checkpoint, **options)
    else:
        if args.sparsity is not None and args.block is None:
            options["block"] = (4, 1)
        enc = BertEncoder.random(args.model, seed=args.seed, **options)
    print(f"sparsebench bert: {enc.describe()} (built in {time.perf_counter() - t0:.1f} s)", flush=True)
    if not args.tuned:
        print("no --tuned file: every linear layer runs the default kernel heuristic", flush=True)
    tokens = enc.sequences_per_pass(args.batch, args.seq) * args.seq      # the kernels' N
    kernels = enc.kernel_report(tokens)
    _print_kernels(kernels, tokens)

    monitor = PeakMonitor(threads)
    rows = runner.compare(enc, args.batch, args.seq, baselines, threads=threads, samples=args.samples,
                          log=lambda line: print(line, flush=True), monitor=monitor)
    print(f"\nbatch {args.batch} x seq {args.seq}, {threads} threads; p50/p90 latency of one forward pass; "
          f"% peak: useful GFLOP/s (2*nnz per token, dense 2*M*K; attention) of the measured "
          f"{monitor.best:.0f} GFLOP/s fp32 peak"
          + (f" (our int8 runner: useful GOP/s of the {monitor.rate('int8'):.0f} GOP/s VNNI peak)"
             if args.dtype == "int8" and monitor.rate("int8") else "") + ":")
    print(f"  {'method':<12} {'p50 ms':>9} {'p90 ms':>9} {'seq/s':>9} {'ours faster':>12} {'max rel diff':>13} "
          f"{'% peak':>7}")
    for r in rows:
        flag = "  (unstable)" if r["unstable"] else ""
        pct = "-" if r["pct_peak"] is None else f"{r['pct_peak']:.0f}%"
        print(f"  {r['method']:<12} {r['p50_ms']:9.2f} {r['p90_ms']:9.2f} {r['throughput_seq_s']:9.1f} "
              f"{r['ours_speedup']:11.2f}x {r['max_rel_diff_vs_ours']:13.1e} {pct:>7}{flag}")
    if rows[0]["degraded"]:
        print(f"degraded: before or after the sampling, {DEGRADED} (another process or tenant on the cores "
              "or the memory)")

    parts = runner.breakdown(enc, args.batch, args.seq)
    print("\nwhere our forward pass spends its time (profiling mode):")
    for p in parts:
        print(f"  {p['category']:<18} {p['ms']:8.2f} ms {p['share']:6.1%}")

    budget_rows, best = [], None
    if args.latency_budget:
        budget_rows, best = _latency_budget(args, options, threads, enc, monitor)

    name = enc.config.name
    sparsity = "keep" if args.sparsity is None else f"{args.sparsity:g}"
    block = "auto" if enc.block is None else "%dx%d" % enc.block
    dtype = "" if args.dtype == "float32" else f"-{args.dtype}"
    per_pass = "" if args.tokens_per_pass == DEFAULT_TOKENS_PER_PASS else f"-p{args.tokens_per_pass or 'all'}"
    stem = f"{name}-s{sparsity}-{block}{dtype}-b{args.batch}{per_pass}-seq{args.seq}-t{threads}"
    common = {"model": name, "sparsity": args.sparsity, "block": block, "dtype": args.dtype,
              "tokens_per_pass": args.tokens_per_pass or "all"}
    meta = {**runner.machine_info(), **monitor.meta(), **common, "description": enc.describe(), "batch": args.batch,
            "seq": args.seq, "threads": threads, "tokens_per_pass": args.tokens_per_pass, "tuned": args.tuned, "checkpoint": args.checkpoint,
            "latency_budget_ms": None if args.latency_budget is None else args.latency_budget * 1e3,
            "budget_best": best}
    tables = {"latency": [{**common, **r} for r in rows],
              "breakdown": [{**common, "batch": args.batch, "seq": args.seq, **p} for p in parts],
              "kernels": kernels,
              "budget": [{**common, "budget_ms": meta["latency_budget_ms"], **r} for r in budget_rows]}
    paths = runner.write_results(args.out, stem, tables, meta)
    print("\nresults written to " + ", ".join(paths))


def _latency_budget(args, options, threads, enc, monitor):
    """Throughput under the latency budget, streams x batch searched in worker processes; each
    row with its fraction of the peak (useful operations of the sequences served per second)."""
    from ..models import serving
    from ..models.runner import forward_ops

    print(f"\nmost sequences/s whose p90 latency fits {args.latency_budget * 1e3:g} ms (seq {args.seq}; "
          f"streams: engines serving at once in their own processes, each on threads/streams threads):",
          flush=True)
    recipe = serving.Recipe.of(args.model, args.checkpoint, args.seed, **options)
    best, rows = serving.latency_budget(recipe, threads, args.seq, args.latency_budget, streams=args.streams,
                                        log=lambda line: print(line, flush=True))
    per_sequence = forward_ops(enc, 1, args.seq)
    for row in rows:
        row["pct_peak"] = monitor.pct(per_sequence * row["throughput_seq_s"], 1.0, enc.dtype)
    if best is None:
        print("  none: batch 1 is over the budget with every stream count")
    else:
        print(f"  best: {best['streams']} stream(s) x batch {best['batch']}: {best['throughput_seq_s']:.1f} "
              f"sequences/s at p90 {best['p90_ms']:.2f} ms ({best['pct_peak']:.0f}% of the peak)")
    return rows, best


def _print_kernels(kernels, tokens):
    """One line per linear role: the kernels it runs across layers and why."""
    by_role = collections.defaultdict(collections.Counter)
    for k in kernels:
        why = k["source"] + (f": {k['note']}" if k["note"] else "")
        by_role[(k["linear"], k["M"], k["K"])][(k["kernel"], why)] += 1
    print(f"kernels for N = {tokens} tokens (each layer in the -kernels.csv result):")
    for (role, M, K), counts in by_role.items():
        for (kernel, why), n in counts.items():
            print(f"  {role:<9} {M}x{K}  {n:>2} layers  {kernel}  [{why}]")
