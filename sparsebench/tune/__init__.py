"""The autotuner: search spaces from the kernels, strategies, the tuning database."""
from .autotune import Autotuner
from .records import Task, TuningDB
from .space import SearchSpace
from .strategies import STRATEGIES

__all__ = ["Autotuner", "SearchSpace", "STRATEGIES", "Task", "TuningDB"]
