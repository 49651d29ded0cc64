"""How good is a strategy? Its winner against another strategy's, re-timed side by side.

For each task tuned by both strategies (in one database), both winners are measured again,
interleaved, on the same matrix, so the comparison is not biased by either run's noise.
As pyperf does, the measurement is repeated in several fresh processes: on this class of
machine the same kernel runs up to ~10% faster or slower from one process to the next
(placement of the arrays, the host's other tenants), and which of two near-equal configs
wins can flip with it. The slowdown reported is the median over the processes of each
process's median per-round ratio; the spread is the lowest and highest process.
"""
import concurrent.futures
import multiprocessing

import numpy as np

from ..compare import problem_arrays
from ..dtypes import sparse_matrix
from ..prune import prune
from ..spmm import spmm
from ..timing import interleaved, ratio
from .db import candidate_of


def check_strategy(db, tasks, strategy, against, samples=41, processes=3):
    """Rows: task, evals of each, winners, time ratio (strategy winner / reference winner)."""
    rows, jobs = [], []
    for task in tasks:
        mine = [r for r in db.results(task) if r["strategy"] == strategy]
        ref = [r for r in db.results(task) if r["strategy"] == against]
        if not mine or not ref:
            rows.append({"task": task, "missing": strategy if not mine else against})
            continue
        mine, ref = mine[-1], ref[-1]
        row = {"task": task, "evals": mine["evals"], "ref_evals": ref["evals"], "space": ref["space_size"],
               "mine": str(candidate_of(mine)), "ref": str(candidate_of(ref))}
        rows.append(row)
        jobs.append((row, (task, candidate_of(mine), candidate_of(ref))))
    runs = []
    context = multiprocessing.get_context("spawn")
    for _ in range(processes):
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            runs.append(pool.submit(time_winners, [job for _, job in jobs], samples).result())
    for i, (row, _) in enumerate(jobs):
        per_process = [run[i] for run in runs]           # (mine s, ref s, slowdown) each
        slowdowns = sorted(p[2] for p in per_process)
        row.update(mine_ms=float(np.median([p[0] for p in per_process])) * 1e3,
                   ref_ms=float(np.median([p[1] for p in per_process])) * 1e3,
                   slowdown=float(np.median(slowdowns)), slowdown_low=slowdowns[0],
                   slowdown_high=slowdowns[-1])
    return rows


def time_winners(jobs, samples):
    """For each (task, mine, ref): (mine median s, ref median s, median per-round mine/ref ratio)."""
    out = []
    for task, mine, ref in jobs:
        W, X = problem_arrays(task_shape(task))
        Wp = prune(W, task.sparsity, task.block)
        A = sparse_matrix(Wp, task.block, task.dtype)
        fns = {}
        for name, cand in (("mine", mine), ("ref", ref)):
            out_buf = np.empty((task.M, task.N), dtype=np.float32)
            fns[name] = ((lambda o=out_buf: np.matmul(Wp, X, out=o)) if cand == "dense"
                         else (lambda cand=cand, o=out_buf: spmm(A, X, cand, out=o)))
        st = interleaved(fns, samples=samples, warmup=2)
        out.append((st["mine"].median, st["ref"].median, 1 / ratio(st["ref"], st["mine"]).median))
    return out


def task_shape(task):
    from ..shapes import Shape
    return Shape(str(task), task.M, task.K, task.N)
