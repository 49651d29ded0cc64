"""How good is a strategy? Its winner against another strategy's, re-timed side by side; or
the strategy replayed on the other's measurements.

For each task tuned by both strategies (in one database), both winners are measured again,
interleaved, on the same matrix, so the comparison is not biased by either run's noise.
As pyperf does, the measurement is repeated in several fresh processes: on this class of
machine the same kernel runs up to ~10% faster or slower from one process to the next
(placement of the arrays, the host's other tenants), and which of two near-equal configs
wins can flip with it. The slowdown reported is the median over the processes of each
process's median per-round ratio; the spread is the lowest and highest process.
"""
import concurrent.futures
import math
import multiprocessing

import numpy as np

from ..bench.problems import problem_arrays
from ..dtypes import sparse_matrix
from ..prune import prune
from ..bench.timing import interleaved, ratio
from . import strategies
from .records import candidate_of, nearby_winners
from .runners import dense_runner, in_layout, new_output, sparse_runner
from .space import SearchSpace


def check_strategy(db, tasks, strategy, against, samples=41, processes=3, top=1):
    """Rows: task, evals of each, winners, time ratio (strategy winner / reference). The
    reference is `against`'s winner, or with top > 1 the fastest, re-timed, of it and the next
    fastest configs of its run (`top` in all, as that run measured them): a check against the
    few best of a sweep, not against one of them that a noisy sample put first."""
    rows, jobs = [], []
    for task in tasks:
        mine = [r for r in db.results(task) if r["strategy"] == strategy]
        ref = [r for r in db.results(task) if r["strategy"] == against]
        if not mine or not ref:
            rows.append({"task": task, "missing": strategy if not mine else against})
            continue
        mine, ref = mine[-1], ref[-1]
        table = sweep_table(db, task, against)
        refs = list(dict.fromkeys([candidate_of(ref)] + sorted(table, key=table.get)))[:top]
        row = {"task": task, "evals": mine["evals"], "ref_evals": ref["evals"], "space": ref["space_size"],
               "mine": str(candidate_of(mine)), "ref": str(candidate_of(ref)), "refs": len(refs)}
        rows.append(row)
        jobs.append((row, (task, candidate_of(mine), refs)))
    runs = []
    context = multiprocessing.get_context("spawn")
    for _ in range(processes):
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
            runs.append(pool.submit(time_winners, [job for _, job in jobs], samples).result())
    for i, (row, _) in enumerate(jobs):
        per_process = [run[i] for run in runs]           # (mine s, ref s, slowdown, ref) each
        slowdowns = sorted(p[2] for p in per_process)
        row.update(mine_ms=float(np.median([p[0] for p in per_process])) * 1e3,
                   ref_ms=float(np.median([p[1] for p in per_process])) * 1e3,
                   slowdown=float(np.median(slowdowns)), slowdown_low=slowdowns[0],
                   slowdown_high=slowdowns[-1], fastest_refs=sorted({p[3] for p in per_process}))
    return rows


def time_winners(jobs, samples):
    """For each (task, mine, refs): mine and the refs interleaved (a config in both timed once);
    (mine median s, the fastest ref's median s, median per-round mine / that ref, that ref)."""
    out = []
    for task, mine, refs in jobs:
        W, X = problem_arrays(task_shape(task))
        Wp = prune(W, task.sparsity, task.block)
        A = sparse_matrix(Wp, task.block, task.dtype)
        X = in_layout(X, task.layout)
        fns = {}
        for cand in dict.fromkeys([mine] + list(refs)):
            out_buf = new_output(task)
            run = (dense_runner(Wp, X, task.threads, task.layout) if cand == "dense"
                   else sparse_runner(A, X, cand, task.layout))
            fns[str(cand)] = (lambda run=run, o=out_buf: run(o))
        st = interleaved(fns, samples=samples, warmup=2)
        best = min((str(c) for c in refs), key=lambda name: st[name].median)
        out.append((st[str(mine)].median, st[best].median, 1 / ratio(st[best], st[str(mine)]).median, best))
    return out


def sweep_table(db, task, against):
    """{config: seconds} of the task's sparse configs as `against`'s latest run saw them: the
    latest measurement of each config recorded before that run's result (inf if it failed)."""
    key, table, seen = task.key(), {}, {}
    for rec in db.records:
        if rec["task"] != key:
            continue
        if rec["kind"] == "measurement" and rec["method"] == "sparse":
            seen[candidate_of(rec)] = rec["median_s"] if rec["status"] == "ok" else math.inf
        elif rec["kind"] == "result" and rec["strategy"] == against:
            table = dict(seen)
    return table


def replay_strategy(db, tasks, strategy, against="exhaustive", seed=0):
    """Kernel Tuner's simulation mode: run `strategy` on the table of each task's whole space
    that `against` (an exhaustive run) measured and picked from (sweep_table), looking times up
    instead of timing, seeded as the tuner seeds it but with the strategy's own winners of other
    tasks only (never `against`'s optima). The strategy and the optimum then see the
    same landscape, so the result measures the search alone, free of the machine's drift between
    runs (on this shared host, large-N kernels that stream through L3 shift with the neighbours'
    load). Rows: task, evaluations, space size, best time found, optimum, winners."""
    rows = []
    for task in tasks:
        table = sweep_table(db, task, against)
        W, X = problem_arrays(task_shape(task))
        A = sparse_matrix(prune(W, task.sparsity, task.block), task.block, task.dtype)
        isas = sorted({c.isa for c in table})
        space = SearchSpace(A, task.N, task.threads, isas or None, task.layout)
        missing = [c for c in space.configs if c not in table]
        if not table or missing:
            rows.append({"task": task, "missing": f"{against} sweep of {len(missing) if table else 'all'} "
                         f"of {len(space)} configs"})
            continue
        seen = {}

        def evaluate(config):
            seen.setdefault(config, table[config])
            return seen[config]

        # seeded with the strategy's own winners of other tasks, never with `against`'s optima
        seeds = [space.default] + [space.closest(c) for c in nearby_winners(db, task, strategy=strategy)]
        strategies.get(strategy).search(space, evaluate, np.random.default_rng(seed), list(dict.fromkeys(seeds)))
        mine = min(seen, key=seen.get)
        ref = min(table, key=table.get)
        rows.append({"task": task, "evals": len(seen), "space": len(space), "mine": str(mine), "ref": str(ref),
                     "mine_ms": seen[mine] * 1e3, "ref_ms": table[ref] * 1e3,
                     "slowdown": seen[mine] / table[ref]})
    return rows


def task_shape(task):
    from ..bench.shapes import Shape
    return Shape(str(task), task.M, task.K, task.N)
