"""How good is a strategy? Its winner against another strategy's, re-timed side by side.

For each task tuned by both strategies (in one database), both winners are measured again,
interleaved, on the same matrix, so the comparison is not biased by either run's noise;
the report gives the time ratio and the share of evaluations the strategy used.
"""
import numpy as np

from ..bsr import BSRMatrix
from ..compare import problem_arrays
from ..prune import prune
from ..spmm import spmm
from ..timing import interleaved, ratio
from .db import candidate_of


def check_strategy(db, tasks, strategy, against, samples=41):
    """Rows: task, evals of each, winners, time ratio (strategy winner / reference winner)."""
    rows = []
    for task in tasks:
        mine = [r for r in db.results(task) if r["strategy"] == strategy]
        ref = [r for r in db.results(task) if r["strategy"] == against]
        if not mine or not ref:
            rows.append({"task": task, "missing": strategy if not mine else against})
            continue
        mine, ref = mine[-1], ref[-1]
        W, X = problem_arrays(task_shape(task))
        Wp = prune(W, task.sparsity, task.block)
        A = BSRMatrix.from_dense(Wp, task.block)
        fns = {}
        for name, rec in (("mine", mine), ("ref", ref)):
            cand = candidate_of(rec)
            out = np.empty((task.M, task.N), dtype=np.float32)
            fns[name] = ((lambda out=out: np.matmul(Wp, X, out=out)) if cand == "dense"
                         else (lambda cand=cand, out=out: spmm(A, X, cand, out=out)))
        st = interleaved(fns, samples=samples, warmup=2)
        r = ratio(st["ref"], st["mine"])      # > 1: mine is faster
        rows.append({"task": task, "evals": mine["evals"], "ref_evals": ref["evals"],
                     "space": ref["space_size"], "mine": str(candidate_of(mine)),
                     "ref": str(candidate_of(ref)), "mine_ms": st["mine"].median * 1e3,
                     "ref_ms": st["ref"].median * 1e3, "slowdown": 1 / r.median,
                     "slowdown_p20": 1 / r.p80, "slowdown_p80": 1 / r.p20})
    return rows


def task_shape(task):
    from ..shapes import Shape
    return Shape(str(task), task.M, task.K, task.N)
