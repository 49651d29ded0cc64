"""Smart: coordinate descent seeded by the heuristic and by winners of nearby shapes.

From the best seed, sweep one parameter at a time over all its valid values and move to
the best point; repeat until a full round over the parameters improves nothing by more
than the noise margin. Then restart from the best measured config not yet used as a
start (another basin); stop when a restart no longer improves on the best so far. Parameters are swept in order of measured impact
on these kernels: tile width first, then K slicing, prefetch, scheduling, panels, ISA.
"""
import math

from ..space import TUNABLE

ORDER = ("n_tile", "k_slice", "prefetch", "m_tile", "n_panel", "isa")
#: an improvement smaller than this fraction is treated as noise (no move)
MARGIN = 0.02
assert set(ORDER) == set(TUNABLE)


def search(space, evaluate, rng, seeds):
    times = {}

    def ev(config):
        if config not in times:
            times[config] = evaluate(config)
        return times[config]

    for s in seeds:
        ev(s)
    starts = set()
    best_before = math.inf
    while True:
        finite = [c for c in sorted(times, key=times.get) if math.isfinite(times[c])]
        if finite and times[finite[0]] >= best_before * (1 - MARGIN):
            return          # the last restart found nothing better: converged
        best_before = times[finite[0]] if finite else math.inf
        candidates = [c for c in finite if c not in starts]
        if not candidates:
            fresh = [c for c in space.configs if c not in times]
            if not fresh:
                return
            ev(fresh[rng.integers(len(fresh))])     # every start failed or was used: explore
            continue
        current = candidates[0]
        starts.add(current)
        improved = True
        while improved:
            improved = False
            for param in ORDER:
                options = [current] + space.neighbours(current, param)
                for c in options:
                    ev(c)
                best = min(options, key=lambda c: times[c])
                if times[best] < times[current] * (1 - MARGIN):
                    current, improved = best, True
