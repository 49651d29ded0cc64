"""`sparsebench bench`: our best kernel config against numpy dense, side by side in one process."""
import csv
import os
import time

import numpy as np
from threadpoolctl import threadpool_limits

from ..bsr import BSRMatrix
from .problems import problem_arrays
from ..dispatch import default_config
from ..tune.space import kernel_configs
from ..cpu import available_isas
from ..prune import prune
from ..spmm import spmm
from .timing import interleaved, measure, ratio
from .verify import Reference

FIELDS = ["shape", "M", "K", "N", "block", "sparsity", "threads", "config", "dense_ms", "sparse_ms",
          "speedup_median", "speedup_p20", "speedup_p80", "default_speedup", "dense_gflops",
          "sparse_effective_gflops", "max_rel_error", "unstable", "samples"]


#: configs re-timed side by side after the quick pass over the whole space
FINALISTS = 5


def sweep(A, X, threads, isas=None, samples=5):
    """The fastest config for A @ X among kernel_configs (a brute-force stand-in for the autotuner):
    a quick pass over every config, then the FINALISTS fastest re-timed side by side."""
    Y = np.empty((A.shape[0], X.shape[1]), dtype=np.float32)
    timed = []
    for cfg in kernel_configs(A, X.shape[1], threads=threads, isas=isas):
        t = measure(lambda: spmm(A, X, cfg, out=Y), samples=samples, warmup=1, sample_time=5e-4).median
        timed.append((t, cfg))
    finalists = [cfg for _, cfg in sorted(timed, key=lambda tc: tc[0])[:FINALISTS]]
    stats = interleaved({i: (lambda cfg=cfg: spmm(A, X, cfg, out=Y)) for i, cfg in enumerate(finalists)},
                        samples=3 * samples, warmup=1)
    return finalists[min(stats, key=lambda i: stats[i].median)]


def run_bench(shapes, sparsities, blocks, threads, samples=40, isas=None, out=None, log=print):
    """Measure every shape x block x sparsity; return result rows (and write CSV to `out`)."""
    isas = isas or available_isas()[:1]
    rows = []
    with threadpool_limits(threads):
        for shape in shapes:
            W, X = problem_arrays(shape)
            Yd = np.empty((shape.M, shape.N), dtype=np.float32)
            Ys = np.empty_like(Yd)
            for block in blocks:
                for s in sparsities:
                    A = BSRMatrix.from_dense(prune(W, s, block), block)
                    cfg = sweep(A, X, threads, isas)
                    ok, err = Reference(A.to_dense(), X).check(spmm(A, X, cfg))
                    if not ok:
                        raise AssertionError(f"{shape} {block} {s}: config {cfg} is wrong (rel. error {err:.2e})")
                    dflt = default_config(A, shape.N, threads)
                    st = interleaved({"dense": lambda: np.matmul(W, X, out=Yd),
                                      "sparse": lambda: spmm(A, X, cfg, out=Ys),
                                      "default": lambda: spmm(A, X, dflt, out=Ys)}, samples=samples)
                    sp = ratio(st["dense"], st["sparse"])
                    row = {"shape": str(shape), "M": shape.M, "K": shape.K, "N": shape.N,
                           "block": "%dx%d" % block, "sparsity": s, "threads": threads, "config": str(cfg),
                           "dense_ms": st["dense"].median * 1e3, "sparse_ms": st["sparse"].median * 1e3,
                           "speedup_median": sp.median, "speedup_p20": sp.p20, "speedup_p80": sp.p80,
                           "default_speedup": ratio(st["dense"], st["default"]).median,
                           "dense_gflops": shape.flops / st["dense"].median / 1e9,
                           "sparse_effective_gflops": 2 * A.nnz * shape.N / st["sparse"].median / 1e9,
                           "max_rel_error": err,
                           "unstable": st["dense"].unstable or st["sparse"].unstable,
                           "samples": sp.n}
                    rows.append(row)
                    log(format_row(row))
    if out:
        write_csv(rows, out)
    return rows


def format_row(r):
    flag = "  (unstable)" if r["unstable"] else ""
    return (f"{r['shape']:>16} {r['block']:>5} {r['sparsity']:5.2f}  dense {r['dense_ms']:7.3f} ms  "
            f"sparse {r['sparse_ms']:7.3f} ms  speedup {r['speedup_median']:6.2f}x "
            f"[{r['speedup_p20']:.2f}-{r['speedup_p80']:.2f}]  default {r['default_speedup']:5.2f}x  "
            f"{r['sparse_effective_gflops']:5.0f} GFLOP/s useful  {r['config']}{flag}")


def write_csv(rows, path):
    """Write atomically: a partial file never replaces a complete one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def call_overhead(samples=30):
    """Seconds per spmm call on a tiny 16x16 (1x1 blocks, 50% dense) times 16x1 problem."""
    rng = np.random.default_rng(0)
    W = prune(rng.standard_normal((16, 16), dtype=np.float32), 0.5, (1, 1))
    A = BSRMatrix.from_dense(W, (1, 1))
    X = rng.standard_normal((16, 1), dtype=np.float32)
    Y = np.empty((16, 1), dtype=np.float32)
    cfg = default_config(A, 1)
    return {"spmm(A, X, cfg, out=Y)": measure(lambda: spmm(A, X, cfg, out=Y), samples=samples),
            "spmm(A, X)": measure(lambda: spmm(A, X), samples=samples)}


def thread_interplay(threads, shape_mkn=(768, 768, 128), sparsity=0.9, block=(4, 1), rounds=300):
    """Per-call time of numpy dense and our kernel, each run alone and then alternating.

    Two runtimes' thread pools (OpenBLAS, OpenMP) that spin while idle can slow each
    other down badly on a small machine; this measures whether ours do.
    """
    M, K, N = shape_mkn
    rng = np.random.default_rng(0)
    W = rng.standard_normal((M, K), dtype=np.float32)
    X = rng.standard_normal((K, N), dtype=np.float32)
    A = BSRMatrix.from_dense(prune(W, sparsity, block), block)
    cfg = default_config(A, N, threads)
    Yd, Ys = np.empty((M, N), np.float32), np.empty((M, N), np.float32)
    ops = {"dense": lambda: np.matmul(W, X, out=Yd), "sparse": lambda: spmm(A, X, cfg, out=Ys)}
    result = {}
    with threadpool_limits(threads):
        for name, op in ops.items():
            for _ in range(20):
                op()
            ts = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                op()
                ts.append(time.perf_counter() - t0)
            result[name + "_alone_ms"] = float(np.median(ts)) * 1e3
        ts = {"dense": [], "sparse": []}
        for _ in range(rounds):
            for name, op in ops.items():
                t0 = time.perf_counter()
                op()
                ts[name].append(time.perf_counter() - t0)
        for name in ops:
            result[name + "_alternating_ms"] = float(np.median(ts[name])) * 1e3
            result[name + "_slowdown"] = result[name + "_alternating_ms"] / result[name + "_alone_ms"]
    return result
