"""How our kernels get along with the rest of a process: the cost of one call, and numpy dense
and our kernel alternating (two runtimes' idle threads can slow each other down)."""
import time

import numpy as np
from threadpoolctl import threadpool_limits

from ..bsr import BSRMatrix
from ..dispatch import default_config
from ..prune import prune
from ..spmm import spmm
from .timing import measure


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
