"""Tuning one task at a time: verify every candidate, time it, record it, confirm the winner.

Per task the dense candidate (our dense GEMM: what a model runs for a "dense" verdict) is
measured first (so the choice can be "use dense"), then
the strategy proposes configs; each is run once on a fresh NaN-filled output and checked
against the float64 reference before it is timed, and every outcome (time, invalid
config, wrong result, error) becomes one database record at once. Configs already in the
database are not measured again, so an interrupted run resumes where it stopped. At the
end the few best configs, the default heuristic and dense are re-timed interleaved with
more samples (again while a peak probe says the machine was busy: PeakMonitor.until_clean),
and the fastest of that side-by-side run is the task's result; numpy's dense
matmul runs beside them as the yardstick (numpy_s), never as a choice. Peak probes before
and after that run give the result its pct_peak (of the machine's measured peak, see
sparsebench.peak), the probes, and a degraded mark when one ran more than 15% under the peak (25% under the copy bandwidth).
A token-major task (Task.layout "tokens") runs every candidate on contiguous token-major X and Y,
as PyTorch holds them, and checks the result transposed back.
"""
import math
import time

import numpy as np

from ..bench.problems import problem_arrays
from ..dtypes import reference, sparse_matrix
from ..errors import ConfigError
from ..peak import PeakMonitor
from ..prune import prune
from ..bench.timing import interleaved, measure
from ..bench.verify import Reference
from . import strategies
from .check import task_shape
from .records import Task, nearby_winners
from .runners import dense_runner, in_layout, new_output, numpy_runner, out_shape, sparse_runner
from .space import SearchSpace

#: re-timed side by side at the end of each task: the best configs of the search, up to
#: FINALISTS of them, those within FINALIST_MARGIN of the best (at least 2). One search sample
#: of a few repetitions cannot rank configs closer than that: the same config's time moves by
#: up to 12% from one process to the next here (768x768x1024)
FINALISTS = 6
FINALIST_MARGIN = 0.10


class Autotuner:
    def __init__(self, db, strategy="smart", max_evals=None, time_limit=None, retune=False, samples=7,
                 confirm_samples=21, isas=None, seed=0, log=print, progress=None):
        self.db = db
        self.strategy_name = strategy
        self.strategy = strategies.get(strategy)
        self.max_evals = max_evals
        self.deadline = time.monotonic() + time_limit if time_limit else None
        self.retune = retune
        self.samples = samples
        self.confirm_samples = confirm_samples
        self.isas = isas
        self.seed = seed
        self.log = log
        self.progress = progress or (lambda *a: None)
        self.monitors = {}                  # threads -> PeakMonitor

    def monitor(self, threads):
        """The peak probes of this run at `threads` threads."""
        if threads not in self.monitors:
            self.monitors[threads] = PeakMonitor(threads)
        return self.monitors[threads]

    def tune_all(self, shapes, sparsities, blocks, threads, dtype="float32", layout="features"):
        tasks = [(sh, Task(sh.M, sh.K, sh.N, s, b, dtype, threads, layout))
                 for sh in shapes for b in blocks for s in sparsities]
        results = []
        for i, (shape, task) in enumerate(tasks):
            time_share = None
            if self.deadline:
                left = self.deadline - time.monotonic()
                if left <= 0:
                    self.log(f"time limit reached: {len(tasks) - i} tasks not tuned")
                    break
                time_share = left / (len(tasks) - i)
            results.append(self.tune(task, shape.name, time_share))
        return results

    def tune(self, task, name="", time_share=None):
        done = [r for r in self.db.results(task) if r["strategy"] == self.strategy_name]
        if done and not self.retune:
            self.log(f"{name or task}: already tuned ({self.strategy_name}); --retune to measure again")
            return done[-1]
        W, X = problem_arrays(task_shape(task))
        Wp = prune(W, task.sparsity, task.block)
        A = sparse_matrix(Wp, task.block, task.dtype)
        # dense computes in float32; int8 candidates are checked exactly against their operands
        refs = {"dense": Reference(Wp, X), "sparse": reference(A, Wp, X, task.threads)}
        X = in_layout(X, task.layout)
        space = SearchSpace(A, task.N, task.threads, self.isas, task.layout)
        cache = {} if self.retune else self.db.measurements(task)
        runners = {"dense": dense_runner(Wp, X, task.threads, task.layout)}
        times, order = {}, []
        deadline = time.monotonic() + time_share if time_share else None
        budget = self.max_evals
        tag = name or str(task)

        def evaluate(candidate):
            if candidate in times:
                return times[candidate]
            if candidate != "dense" and budget is not None and len(order) >= budget + 1:
                raise strategies.BudgetExhausted
            if candidate != "dense" and deadline and time.monotonic() > deadline and candidate not in cache:
                raise strategies.BudgetExhausted
            rec = cache.get(candidate)
            if rec is None:
                rec = self._measure(task, candidate, A, X, refs, runners)
            t = rec["median_s"] if rec["status"] == "ok" else math.inf
            times[candidate] = t
            order.append(candidate)
            best = min(times.values())
            self.progress(len(order) - 1, budget or len(space), f"{tag}: best {best * 1e3:.3f} ms")
            return t

        evaluate("dense")
        seeds = [space.default] + [space.closest(c) for c in nearby_winners(self.db, task)]
        rng = np.random.default_rng(self.seed)
        try:
            self.strategy.search(space, evaluate, rng, list(dict.fromkeys(seeds)))
        except strategies.BudgetExhausted:
            pass
        self.progress(0, 0, "")
        return self._confirm(task, space, times, order, A, Wp, X, runners, tag)

    def _measure(self, task, candidate, A, X, refs, runners):
        method = "dense" if candidate == "dense" else "sparse"
        rec = {"kind": "measurement", "task": task.key(), "strategy": self.strategy_name, "method": method,
               "config": None if candidate == "dense" else candidate.to_dict()}
        try:
            if candidate != "dense":
                runners[candidate] = sparse_runner(A, X, candidate, task.layout)
            fresh = np.full(out_shape(task), np.nan, dtype=np.float32)
            result = runners[candidate](fresh)
            ok, err = refs[method].check(result.T if task.layout == "tokens" else result)
            if not ok:
                rec.update(status="wrong", reason=f"result differs from the float64 reference of its "
                           f"{task.dtype} operands (max rel. error {err:.2e})")
            else:
                out = new_output(task)
                fn = runners[candidate]
                st = measure(lambda: fn(out), samples=self.samples, warmup=1, sample_time=1e-3)
                rec.update(status="ok", median_s=st.median, p20_s=st.p20, p80_s=st.p80, min_s=st.min,
                           samples=st.n, unstable=st.unstable)
        except ConfigError as e:
            rec.update(status="invalid", reason=str(e))
        except Exception as e:       # recorded, never fatal: the search goes on
            rec.update(status="error", reason=f"{type(e).__name__}: {e}")
        self.db.add(rec)
        return rec

    def _confirm(self, task, space, times, order, A, W, X, runners, tag):
        ok = sorted((c for c in times if c != "dense" and math.isfinite(times[c])), key=times.get)
        close = [c for c in ok[:FINALISTS] if times[c] <= times[ok[0]] * (1 + FINALIST_MARGIN)]
        finalists = list(dict.fromkeys(ok[:2] + close + [space.default]))
        fns = {}
        runners["numpy"] = numpy_runner(W, X, task.layout)
        for c in ["dense", "numpy"] + finalists:
            run = runners.get(c) or runners.setdefault(c, sparse_runner(A, X, c, task.layout))
            out = new_output(task)
            fns[c] = (lambda run=run, out=out: run(out))
        monitor = self.monitor(task.threads)
        st, degraded, probes = monitor.until_clean(tag, lambda: interleaved(fns, samples=self.confirm_samples,
                                                                             warmup=1, sample_time=2e-3))
        best = min((c for c in st if c != "numpy"), key=lambda c: st[c].median)
        dense = best == "dense"
        ops = 2 * (A.shape[0] * A.shape[1] if dense else A.nnz) * task.N
        peak_dtype = "float32" if dense else task.dtype
        rec = {"kind": "result", "task": task.key(), "strategy": self.strategy_name,
               "name": tag, "max_evals": self.max_evals, "evals": len(order) - 1,
               "space_size": len(space), "finalists": len(finalists),
               "method": "dense" if best == "dense" else "sparse",
               "config": None if best == "dense" else best.to_dict(),
               "best_s": st[best].median, "best_p20_s": st[best].p20, "best_p80_s": st[best].p80,
               "dense_s": st["dense"].median, "numpy_s": st["numpy"].median,
               "default_s": st[space.default].median,
               "default_config": space.default.to_dict(), "unstable": st[best].unstable,
               "trajectory": [times[c] if math.isfinite(times[c]) else None for c in order[1:]],
               "pct_peak": monitor.pct(ops, st[best].median, peak_dtype),
               "peak_gflops": monitor.rate(peak_dtype), "degraded": degraded,
               "peak_probes": probes}
        self.db.add(rec)
        return rec

