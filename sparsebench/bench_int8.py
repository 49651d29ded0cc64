"""INT8 (VNNI) against float32 sparse kernels on the same pruned matrices, side by side.

    python -m sparsebench.bench_int8 [--shapes bert-base] [--threads 1,2] [--samples 25]
                                     [--out results/bench-int8.csv]
    python -m sparsebench.bench_int8 --table results/bench-int8.csv     # the README table

For every shape (N = 128 rows of the shape set by default), block (4x1, 4x4) and sparsity,
times interleaved: float32 spmm with the faster of the tuned config in
results/bench-bert-spmm.csv and default_config (measured, per case); int8 spmm with its
default config on pre-quantized activations; int8 spmm from float32 X (quantize + pack
included); and quantize + pack alone. Speedups are medians of per-round ratios.
"""
import argparse
import csv
import os

import numpy as np

from .bsr import BSRMatrix
from .config import KernelConfig, default_config
from .prune import prune
from .quant import LAYOUTS, QuantizedBSRMatrix, pack, quantize_activations
from .shapes import load_shapes
from .spmm import spmm
from .timing import interleaved, ratio

HERE = os.path.dirname(os.path.abspath(__file__))
TUNED_CSV = os.path.join(HERE, os.pardir, "results", "bench-bert-spmm.csv")
FIELDS = ["shape", "M", "K", "N", "block", "sparsity", "threads", "fp32_config", "int8_config",
          "fp32_us", "int8_us", "int8_quant_us", "quant_us", "speedup", "speedup_p20", "speedup_p80",
          "speedup_with_quant", "speedup_with_quant_p20", "speedup_with_quant_p80",
          "int8_max_err_rel", "samples"]


def tuned_fp32_configs(path=TUNED_CSV):
    """(M, K, N, block, sparsity) -> the fastest float32 config `sparsebench bench` recorded."""
    out = {}
    if os.path.exists(path):
        for row in csv.DictReader(open(path)):
            isa, b, nt, np_, ks, mt, pf, _ = row["config"].split("/")
            cfg = KernelConfig(tuple(int(v) for v in b[1:].split("x")), isa, int(nt[2:]), int(np_[2:]),
                               int(ks[2:]), int(mt[2:]), int(pf[2:]))
            out[(int(row["M"]), int(row["K"]), int(row["N"]), row["block"], float(row["sparsity"]))] = cfg
    return out


def run(shapes, blocks, sparsities, threads_list, samples, log=print):
    tuned = tuned_fp32_configs()
    rows = []
    for shape in shapes:
        rng = np.random.default_rng(0)
        W = rng.standard_normal((shape.M, shape.K), dtype=np.float32)
        X = rng.standard_normal((shape.K, shape.N), dtype=np.float32)
        Y = np.empty((shape.M, shape.N), dtype=np.float32)
        for block in blocks:
            name = "%dx%d" % block
            layout = LAYOUTS[block]
            Xq = quantize_activations(X, block)
            for s in sparsities:
                Wp = prune(W, s, block)
                A = BSRMatrix.from_dense(Wp, block)
                Aq = QuantizedBSRMatrix.from_dense(Wp, block)
                ref = Wp.astype(np.float64) @ X.astype(np.float64)
                err = float(np.abs(spmm(Aq, X) - ref).max() / np.abs(ref).max())
                if err > 0.02:
                    raise AssertionError(f"{shape} {name} {s}: int8 error {err:.3g} of max |Y|")
                for threads in threads_list:
                    f32 = {"default": default_config(A, shape.N, threads)}
                    t = tuned.get((shape.M, shape.K, shape.N, name, s))
                    if t is not None:
                        f32["tuned"] = KernelConfig(t.block, t.isa, t.n_tile, t.n_panel, t.k_slice,
                                                    t.m_tile, t.prefetch, threads)
                    ci = default_config(Aq, shape.N, threads)
                    fns = {k: (lambda c=c: spmm(A, X, c, out=Y)) for k, c in f32.items()}
                    fns["int8"] = lambda: spmm(Aq, Xq, ci, out=Y)
                    fns["int8+quant"] = lambda: spmm(Aq, X, ci, out=Y)
                    fns["quant"] = lambda: pack(X, layout, 0.0, threads)
                    st = interleaved(fns, samples=samples)
                    best = min(f32, key=lambda k: st[k].median)
                    sp, spq = ratio(st[best], st["int8"]), ratio(st[best], st["int8+quant"])
                    row = {"shape": str(shape), "M": shape.M, "K": shape.K, "N": shape.N, "block": name,
                           "sparsity": s, "threads": threads, "fp32_config": str(f32[best]),
                           "int8_config": str(ci), "fp32_us": st[best].median * 1e6,
                           "int8_us": st["int8"].median * 1e6, "int8_quant_us": st["int8+quant"].median * 1e6,
                           "quant_us": st["quant"].median * 1e6, "speedup": sp.median,
                           "speedup_p20": sp.p20, "speedup_p80": sp.p80,
                           "speedup_with_quant": spq.median, "speedup_with_quant_p20": spq.p20,
                           "speedup_with_quant_p80": spq.p80, "int8_max_err_rel": err, "samples": sp.n}
                    rows.append(row)
                    log(f"{row['shape']:>16} {name} {s:.1f} t{threads}: fp32 {row['fp32_us']:7.1f} us "
                        f"int8 {row['int8_us']:6.1f} us (+quant {row['int8_quant_us']:6.1f}, quant alone "
                        f"{row['quant_us']:5.1f}) -> {sp.median:.2f}x [{sp.p20:.2f}-{sp.p80:.2f}], "
                        f"{spq.median:.2f}x with quant; err {err:.4f}")
    return rows


def markdown(rows):
    """README table: one line per shape, block and threads; per sparsity the speedup of the
    kernel alone / with quantize + pack."""
    sparsities = sorted({float(r["sparsity"]) for r in rows})
    lines = ["| shape | block | threads | " + " | ".join(f"{s:.0%} sparse" for s in sparsities) + " |",
             "|---" * (3 + len(sparsities)) + "|"]
    cells = {}
    for r in rows:
        key = (r["shape"], r["block"], int(r["threads"]))
        cells.setdefault(key, {})[float(r["sparsity"])] = \
            f"{float(r['speedup']):.2f}× / {float(r['speedup_with_quant']):.2f}×"
    for (shape, block, threads), by_s in cells.items():
        lines.append(f"| {shape} | {block.replace('x', '×')} | {threads} | "
                     + " | ".join(by_s.get(s, "") for s in sparsities) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m sparsebench.bench_int8", description=__doc__.split("\n")[0])
    p.add_argument("--shapes", default="bert-base", help="shape set (shapes/*.csv) or MxKxN list")
    p.add_argument("--n", type=int, default=128, help="keep shapes with this N (0: all)")
    p.add_argument("--block", default="4x1,4x4")
    p.add_argument("--sparsity", default="0.7,0.8,0.9")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--samples", type=int, default=25)
    p.add_argument("--out", help="CSV file to write")
    p.add_argument("--table", metavar="CSV", help="only print the markdown table of a results CSV")
    a = p.parse_args(argv)
    if a.table:
        print(markdown(list(csv.DictReader(open(a.table)))))
        return 0
    shapes = [s for s in load_shapes(a.shapes) if not a.n or s.N == a.n]
    blocks = [tuple(int(v) for v in b.split("x")) for b in a.block.split(",")]
    rows = run(shapes, blocks, [float(s) for s in a.sparsity.split(",")],
               [int(t) for t in a.threads.split(",")], a.samples)
    if a.out:
        with open(a.out, "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            w.writerows(rows)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
