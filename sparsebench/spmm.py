"""Y = W @ X for a block-sparse W: argument checks, then the compiled kernel."""
import numpy as np

from .bsr import BSRMatrix
from .config import KernelConfig, check_config, default_config, variant_id

_checked = {}   # (config, id(matrix)) -> (module, vid) once a config was validated for a matrix


def spmm(A, X, config=None, out=None, bias=None):
    """Return Y = A @ X (+ bias[:, None]) with A a BSRMatrix (M x K) and X a K x N float32 array.

    X must be float32 with contiguous rows (C order; a column slice of a C array is fine).
    float64 or Fortran-ordered X is refused rather than silently copied: convert it once
    with ``np.ascontiguousarray(X, dtype=np.float32)``. `out`, if given, must be an M x N
    float32 array with contiguous rows; it is overwritten. `config` None picks
    default_config(A, N). Structurally zero blocks are never multiplied, so NaN/inf in X
    reach only the outputs of stored blocks (as with scipy.sparse and MKL).
    """
    if not isinstance(A, BSRMatrix):
        raise TypeError(f"A must be a sparsebench.BSRMatrix, got {type(A).__name__}; "
                        "build one with BSRMatrix.from_dense(W, block=...)")
    _check_operand(X, "X")
    M, K = A.shape
    if X.shape[0] != K:
        raise ValueError(f"shape mismatch: A is {M}x{K} but X has {X.shape[0]} rows (needs {K})")
    N = X.shape[1]
    if out is None:
        out = np.empty((M, N), dtype=np.float32)
    else:
        _check_operand(out, "out")
        if out.shape != (M, N):
            raise ValueError(f"out has shape {out.shape}, needs ({M}, {N})")
        if np.shares_memory(out, X):
            raise ValueError("out must not overlap X")
    if bias is not None:
        if not (isinstance(bias, np.ndarray) and bias.dtype == np.float32 and bias.shape == (M,)
                and bias.flags.c_contiguous):
            raise ValueError(f"bias must be a contiguous float32 array of shape ({M},)")
    if config is None:
        config = default_config(A, N)
    key = (config, id(A))
    found = _checked.get(key)
    if found is None or found[2] is not A:
        check_config(config, A)
        module, vid = variant_id(config)
        found = _checked[key] = (module, vid, A)
        if len(_checked) > 4096:
            _checked.clear()
    module, vid, _ = found
    br, bc = A.block
    if K % bc:
        # the last block column would read past X's last row: give it zero rows to read
        Xp = np.zeros((K + bc - K % bc, N), dtype=np.float32)
        Xp[:K] = X
        X = Xp
    panel = config.n_panel or max(N, 1)
    slices = A.slice_ptr(config.k_slice) if config.k_slice else None
    module.run(vid, A.data, A._indices_padded, A.indptr, A.task_bounds(config.threads, config.m_tile),
               X, out, M, panel, config.prefetch, config.threads, config.m_tile > 0, bias, slices)
    return out


def _check_operand(a, name):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {a.dtype}; convert once with "
                        f"np.ascontiguousarray({name}, dtype=np.float32)")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (K x N), got shape {a.shape}")
    if a.strides[1] != 4 or a.strides[0] < 4 * a.shape[1] or a.strides[0] % 4:
        raise ValueError(f"{name} must have contiguous rows (C order), got strides {a.strides}; "
                         f"use np.ascontiguousarray({name})")
