"""Block magnitude pruning."""
import numpy as np

from .blocks import check_block, padded_blocks


def check_sparsity(sparsity):
    s = float(sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r} (0.9 means 90% of blocks are zero)")
    return s


def prune(W, sparsity, block=(1, 1)):
    """Zero the `sparsity` fraction of blocks of W with the smallest L2 norm.

    The count is exact to whole blocks: round(sparsity * number_of_blocks), counting the
    partial blocks at the bottom and right edges (as if W were zero-padded). Ties are
    broken by position, so the result is deterministic. Returns a new array of W's dtype.
    """
    W = np.asarray(W)
    if W.ndim != 2:
        raise ValueError(f"W must be a 2-D matrix, got shape {W.shape}")
    if not np.issubdtype(W.dtype, np.floating):
        raise TypeError(f"W must be a floating-point array, got dtype {W.dtype}")
    sparsity = check_sparsity(sparsity)
    br, bc = check_block(block)
    blocks = padded_blocks(W, (br, bc))                    # (Mb, br, Kb, bc), zero padded
    norms = np.sqrt(np.einsum("ibjc,ibjc->ij", blocks, blocks, dtype=np.float64)).ravel()
    n_prune = int(round(sparsity * norms.size))
    keep = np.ones(norms.size, dtype=bool)
    keep[np.argsort(norms, kind="stable")[:n_prune]] = False
    mask = np.repeat(np.repeat(keep.reshape(blocks.shape[0], blocks.shape[2]), br, 0), bc, 1)
    return np.where(mask[:W.shape[0], :W.shape[1]], W, W.dtype.type(0))
