"""The operands every measurement uses: seeded random W and X of a shape."""
import numpy as np

from ..arrays import activations


def problem_arrays(shape, seed=0):
    """Seeded random W (M x K) and X (K x N), float32, the same for every method and for the tuner;
    X is laid out as the models' activations are (arrays.activations)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((shape.M, shape.K), dtype=np.float32)
    X = activations(shape.K, shape.N)
    X[...] = rng.standard_normal((shape.K, shape.N), dtype=np.float32)
    return W, X
