"""The `sparsebench` command line."""
import argparse
import json
import sys

from .blocks import parse_block
from .errors import SparsebenchError
from .prune import check_sparsity
from .shapes import ShapeFileError, load_shapes


def _floats(text):
    try:
        return [check_sparsity(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _blocks(text):
    try:
        return [parse_block(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text):
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def cmd_info(args):
    from .info import collect, format_info

    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def cmd_bench(args):
    from .bench import call_overhead, run_bench, thread_interplay
    from .cpu import default_threads

    threads = args.threads or default_threads()
    shapes = load_shapes(args.shapes)
    print(f"sparsebench bench: {len(shapes)} shapes x {len(args.block)} blocks x {len(args.sparsity)} "
          f"sparsities, {threads} threads; speedup = numpy dense time / sparse time, median of "
          f"{args.samples} interleaved samples [p20-p80]", flush=True)
    run_bench(shapes, args.sparsity, args.block, threads, samples=args.samples, out=args.out,
              log=lambda line: print(line, flush=True))
    if args.out:
        print(f"results written to {args.out}")
    for name, st in call_overhead().items():
        print(f"call overhead {name}: {st.median * 1e6:.2f} us per call (median of {st.n})")
    inter = thread_interplay(threads)
    print("thread pools, alternating numpy dense and spmm (768x768x128, 90%, 4x1): "
          f"dense {inter['dense_alone_ms']:.3f} -> {inter['dense_alternating_ms']:.3f} ms "
          f"({inter['dense_slowdown']:.2f}x), sparse {inter['sparse_alone_ms']:.3f} -> "
          f"{inter['sparse_alternating_ms']:.3f} ms ({inter['sparse_slowdown']:.2f}x)")


def build_parser():
    p = argparse.ArgumentParser(prog="sparsebench", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("info", help="CPU, instruction sets, build flags, OpenMP threads, kernel variants")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_info)
    q = sub.add_parser("bench", help="best kernel config vs numpy dense, side by side")
    q.add_argument("--shapes", default="quick", help="shape set name (shapes/NAME.csv), CSV path or MxKxN list")
    q.add_argument("--sparsity", type=_floats, default=[0.7, 0.8, 0.9], help="e.g. 0.7,0.8,0.9")
    q.add_argument("--block", type=_blocks, default=[(4, 1)], help="e.g. 4x1,1x1")
    q.add_argument("--threads", type=_positive, default=None, help="default: OpenMP's thread count")
    q.add_argument("--samples", type=_positive, default=40)
    q.add_argument("--out", default=None, help="CSV file for the results")
    q.set_defaults(func=cmd_bench)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (SparsebenchError, ShapeFileError, OSError) as e:
        print(f"sparsebench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparsebench: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
