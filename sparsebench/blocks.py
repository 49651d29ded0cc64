"""Block shapes the kernels are compiled for, and helpers to view a matrix as blocks."""
import operator

import numpy as np

from ._buildinfo import BUILD

#: (rows, cols) of W per block that setup.py compiled kernels for
SUPPORTED_BLOCKS = tuple(tuple(b) for b in BUILD["blocks"])


def parse_block(text):
    """'4x1' -> (4, 1)."""
    try:
        r, c = (int(p) for p in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"block must look like 4x1 (rows x cols), got {text!r}") from None
    return check_block((r, c))


def check_block(block, supported=SUPPORTED_BLOCKS, refusal="unsupported block shape {}; supported: {}"):
    """block as (rows, cols) if `supported` has it, else ValueError(refusal with the block and the
    supported list)."""
    if (type(block) is tuple and len(block) == 2 and type(block[0]) is int and type(block[1]) is int
            and block in supported):
        return block                          # the common case, checked on every int8 call
    try:
        br, bc = (operator.index(b) for b in block)       # whole numbers only: 4.9 is not 4
    except (TypeError, ValueError):
        raise ValueError(f"block must be a pair of integers (rows, cols) such as (4, 1), got {block!r}") from None
    if (br, bc) not in supported:
        raise ValueError(refusal.format(f"{br}x{bc}", ", ".join(f"{r}x{c}" for r, c in supported)))
    return br, bc


def check_stackable(parts):
    """Matrices that stack by rows: at least one, the same block and number of columns, every one
    but the last a whole number of block rows (ValueError saying which rule fails)."""
    if not parts:
        raise ValueError("vstack needs at least one matrix")
    first = parts[0]
    if any(p.block != first.block or p.shape[1] != first.shape[1] for p in parts):
        raise ValueError("vstack needs matrices with the same block shape and number of columns")
    if any(p.shape[0] % first.block[0] for p in parts[:-1]):
        raise ValueError(f"vstack needs every matrix but the last to have whole block rows "
                         f"({first.block[0]} rows)")


class BlockGrid:
    """What a block-sparse matrix with `shape`, `block` and `nnz_blocks` says of its block grid."""

    __slots__ = ()

    @property
    def density(self):
        """Fraction of the (padded) block grid that is stored."""
        br, bc = self.block
        total = -(-self.shape[0] // br) * -(-self.shape[1] // bc)
        return self.nnz_blocks / total if total else 0.0

    @property
    def sparsity(self):
        return 1.0 - self.density


def padded_blocks(W, block):
    """View W, zero-padded to whole blocks, as an array of shape (Mb, br, Kb, bc)."""
    br, bc = block
    M, K = W.shape
    Mb, Kb = -(-M // br), -(-K // bc)
    if (Mb * br, Kb * bc) != (M, K):
        P = np.zeros((Mb * br, Kb * bc), dtype=W.dtype)
        P[:M, :K] = W
        W = P
    return W.reshape(Mb, br, Kb, bc)
