"""Checks of the dense float32 operands the kernels read and write."""
import numpy as np
from numpy.lib.stride_tricks import as_strided


def operand(a, name):
    """`a` checked as a 2-D float32 array with contiguous rows (returned with canonical strides)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {a.dtype}; convert once with "
                        f"np.ascontiguousarray({name}, dtype=np.float32)")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (K x N), got shape {a.shape}")
    rows, cols = a.shape
    if a.strides[1] == 4 and a.strides[0] >= 4 * cols and a.strides[0] % 4 == 0:
        return a
    if a.flags.c_contiguous:
        # length-0 or length-1 axes may carry any stride; give them the canonical one
        return as_strided(a, strides=(4 * cols, 4))
    raise ValueError(f"{name} must have contiguous rows (C order), got strides {a.strides}; "
                     f"use np.ascontiguousarray({name})")
