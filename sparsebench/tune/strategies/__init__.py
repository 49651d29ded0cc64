"""Search strategies, one module each, behind one interface:

    strategy.search(space, evaluate, rng, seeds)

`evaluate(config)` returns the measured seconds (inf for a config that failed) and raises
BudgetExhausted when --max-evals or --time-limit is used up; results already in the
tuning database cost nothing. `seeds` are configs worth trying first (the default
heuristic, winners of nearby tuned shapes).
"""
from . import grid, local, random_search


class BudgetExhausted(Exception):
    """Raised by evaluate() once the evaluation or time budget is spent."""


STRATEGIES = {"exhaustive": grid, "random": random_search, "smart": local}


def get(name):
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}") from None
