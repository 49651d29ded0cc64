"""Block-sparse row (BSR) weight matrices, validated once and frozen."""
import operator

import numpy as np

from ._buildinfo import BUILD
from .blocks import BlockGrid, check_block, check_stackable, padded_blocks

PREFETCH_PAD = BUILD["prefetch_pad"]


class BSRMatrix(BlockGrid):
    """An M x K float32 matrix stored as nonzero br x bc blocks, row of blocks by row of blocks.

    Same arrays as scipy.sparse.bsr_matrix: ``data`` (nnz_blocks, br, bc), ``indices`` (block
    column of each block), ``indptr`` (nnz_blocks offsets of each block row). M and K need not
    be multiples of the block: the last block row / column is zero padded. The arrays are
    checked and copied here; the object is immutable and exposes read-only views, so the
    kernels can trust them.
    """

    __slots__ = ("_shape", "_block", "_data", "_indices_padded", "_indptr", "_row_nnz", "_dense",
                 "_tasks", "_slices", "_plans", "__weakref__")
    dtype = "float32"

    def __init__(self, data, indices, indptr, shape):
        data = np.asarray(data)
        if data.ndim != 3:
            raise ValueError(f"data must have shape (nnz_blocks, block_rows, block_cols), got {data.shape}")
        if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)):
            raise TypeError(f"data must be a real numeric array, got dtype {data.dtype}")
        block = check_block(data.shape[1:])
        try:
            M, K = (operator.index(s) for s in shape)      # whole numbers only
        except (TypeError, ValueError):
            raise ValueError(f"shape must be a pair of integers (M, K), got {shape!r}") from None
        if M < 0 or K < 0:
            raise ValueError(f"shape must be non-negative, got {shape!r}")
        br, bc = block
        Mb, Kb = -(-M // br), -(-K // bc)
        nnzb = data.shape[0]
        if nnzb >= 2**31 - PREFETCH_PAD:
            raise ValueError(f"too many blocks ({nnzb}) for 32-bit indices")
        indptr = _as_index_array(indptr, "indptr")
        indices = _as_index_array(indices, "indices")
        if indptr.shape != (Mb + 1,):
            raise ValueError(f"indptr must have M/block_rows + 1 = {Mb + 1} entries for shape {M}x{K} "
                             f"and block {br}x{bc}, got {indptr.shape[0]}")
        if indptr[0] != 0 or indptr[-1] != nnzb:
            raise ValueError(f"indptr must start at 0 and end at the number of blocks ({nnzb}); "
                             f"it runs from {indptr[0]} to {indptr[-1]}")
        if np.any(np.diff(indptr) < 0):
            row = int(np.argmax(np.diff(indptr) < 0))
            raise ValueError(f"indptr must be non-decreasing; it decreases after block row {row}")
        if indices.shape != (nnzb,):
            raise ValueError(f"indices must have one entry per block ({nnzb}), got {indices.shape[0]}")
        if nnzb and (indices.min() < 0 or indices.max() >= Kb):
            bad = int(np.flatnonzero((indices < 0) | (indices >= Kb))[0])
            raise ValueError(f"block column index {indices[bad]} at position {bad} is out of range "
                             f"[0, {Kb}) for K={K} and block {br}x{bc}")
        # blocks of a row in column order, so that a K slice of a row is a contiguous range
        rows = np.repeat(np.arange(Mb), np.diff(indptr))
        if nnzb and np.any((np.diff(indices) < 0) & (rows[1:] == rows[:-1])):
            order = np.lexsort((indices, rows))
            indices, data = indices[order], data[order]
        padded = np.zeros(nnzb + PREFETCH_PAD, dtype=np.int32)
        padded[:nnzb] = indices
        indptr = _frozen(indptr.astype(np.int32))
        init = object.__setattr__
        init(self, "_shape", (M, K))
        init(self, "_block", block)
        init(self, "_data", _frozen(np.array(data, dtype=np.float32, order="C", copy=True)))
        init(self, "_indices_padded", _frozen(padded))
        init(self, "_indptr", indptr)
        init(self, "_row_nnz", _frozen(np.diff(indptr)))
        init(self, "_dense", _every_block_stored(indptr, padded[:nnzb], Kb))
        init(self, "_tasks", {})     # (threads, m_tile) -> task bounds
        init(self, "_slices", {})    # k_slice -> blocks in slice order (see sliced)
        init(self, "_plans", {})     # KernelConfig -> (module, variant id, arrays, task bounds, token path); (N, layout) -> default

    def __setattr__(self, name, value):
        raise AttributeError("BSRMatrix is immutable; build a new one (e.g. BSRMatrix.from_dense)")

    def __reduce__(self):
        return (type(self), (self._data, self.indices, self._indptr, self._shape))

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def vstack(cls, parts):
        """The matrices `parts` (the same K and block; every M but the last a whole number of
        block rows) stacked by rows into one: each output row computes what it did in its part,
        from the same blocks in the same order."""
        check_stackable(parts)
        first = parts[0]
        offsets = np.cumsum([0] + [p.nnz_blocks for p in parts[:-1]])
        indptr = np.concatenate([[0]] + [p.indptr[1:] + o for p, o in zip(parts, offsets)])
        return cls(np.concatenate([p.data for p in parts]), np.concatenate([p.indices for p in parts]),
                   indptr, (sum(p.shape[0] for p in parts), first.shape[1]))

    def block_rows(self, i0, i1):
        """Block rows [i0, i1) as a BSRMatrix that shares this one's blocks and indices (no copy)."""
        br, bc = self._block
        M, K = self._shape
        if not 0 <= i0 <= i1 <= self._indptr.shape[0] - 1:
            raise ValueError(f"block rows {i0}..{i1} are outside 0..{self._indptr.shape[0] - 1}")
        b0, b1 = int(self._indptr[i0]), int(self._indptr[i1])
        view = object.__new__(type(self))
        init = object.__setattr__
        indptr = _frozen((self._indptr[i0:i1 + 1] - b0).astype(np.int32))
        init(view, "_shape", (min(i1 * br, M) - min(i0 * br, M), K))
        init(view, "_block", self._block)
        init(view, "_data", self._data[b0:b1])
        init(view, "_indices_padded", self._indices_padded[b0:])     # PREFETCH_PAD entries past b1 at least
        init(view, "_indptr", indptr)
        init(view, "_row_nnz", self._row_nnz[i0:i1])
        init(view, "_dense", _every_block_stored(indptr, self._indices_padded[b0:b1], -(-K // bc)))
        init(view, "_tasks", {})
        init(view, "_slices", {})
        init(view, "_plans", {})
        return view

    @classmethod
    def from_dense(cls, W, block=(1, 1), keep_zero_blocks=False):
        """Store every block of W that has a nonzero (or NaN) entry; W is converted to float32.

        keep_zero_blocks: store every block, zero or not (a dense matrix: `is_dense`, run by the
        kernels' dense variants, our dense GEMM)."""
        W = np.asarray(W)
        if W.ndim != 2:
            raise ValueError(f"W must be a 2-D matrix, got shape {W.shape}")
        if not (np.issubdtype(W.dtype, np.floating) or np.issubdtype(W.dtype, np.integer)):
            raise TypeError(f"W must be a real numeric array, got dtype {W.dtype}")
        br, bc = check_block(block)
        blocks = padded_blocks(W.astype(np.float32, copy=False), (br, bc))
        nonzero = np.any(blocks != 0, axis=(1, 3))            # (Mb, Kb)
        if keep_zero_blocks:
            nonzero[...] = True
        rows, cols = np.nonzero(nonzero)
        indptr = np.zeros(nonzero.shape[0] + 1, dtype=np.int64)
        np.cumsum(nonzero.sum(axis=1), out=indptr[1:])
        data = blocks[rows, :, cols, :]                       # (nnzb, br, bc)
        return cls(data, cols, indptr, W.shape)

    @classmethod
    def from_scipy(cls, S, block=None):
        """From a scipy.sparse matrix; `block` defaults to the block size of a BSR input."""
        if not hasattr(S, "format") or not hasattr(S, "tocsr"):
            raise TypeError(f"from_scipy takes a scipy.sparse matrix, got {type(S).__name__}; "
                            "for a dense array use BSRMatrix.from_dense")
        if block is None:
            if S.format != "bsr":
                raise ValueError(f"a scipy {S.format.upper()} matrix has no block shape: "
                                 "pass block=(rows, cols)")
            block = S.blocksize
        br, bc = check_block(block)
        M, K = S.shape
        padded = (-(-M // br) * br, -(-K // bc) * bc)
        if S.format != "bsr" or S.blocksize != (br, bc) or padded != (M, K):
            S = S.tocsr(copy=True)
            S.resize(padded)
            S = S.tobsr(blocksize=(br, bc))
        S = S.sorted_indices() if not S.has_sorted_indices else S
        return cls(S.data, S.indices, S.indptr, (M, K))

    # -- properties (read-only views) -------------------------------------------------------------
    @property
    def shape(self):
        return self._shape

    @property
    def block(self):
        return self._block

    @property
    def data(self):
        return self._data.view()

    @property
    def indices(self):
        return self._indices_padded[:self.nnz_blocks]

    @property
    def indptr(self):
        return self._indptr.view()

    @property
    def nnz_blocks(self):
        return self._data.shape[0]

    @property
    def is_dense(self):
        """Every block is stored (from_dense(..., keep_zero_blocks=True)): spmm runs the kernels'
        dense variants, which read X without index loads."""
        return self._dense

    @property
    def nnz(self):
        """Stored entries, zeros inside stored blocks included."""
        return self._data.size

    def to_dense(self):
        br, bc = self.block
        M, K = self.shape
        Mb, Kb = -(-M // br), -(-K // bc)
        out = np.zeros((Mb, br, Kb, bc), dtype=np.float32)
        rows = np.repeat(np.arange(Mb), self._row_nnz)
        np.add.at(out, (rows, slice(None), self.indices, slice(None)), self._data)
        return out.reshape(Mb * br, Kb * bc)[:M, :K]

    def to_scipy(self):
        """A scipy BSR matrix when M and K are multiples of the block, else CSR (scipy's BSR
        needs whole blocks); ``from_scipy(S, block=A.block)`` round-trips either."""
        import scipy.sparse as sp

        br, bc = self.block
        M, K = self.shape
        padded = (-(-M // br) * br, -(-K // bc) * bc)
        S = sp.bsr_matrix((self._data.copy(), self.indices.copy(), self._indptr.copy()), shape=padded)
        return S if padded == (M, K) else S.tocsr()[:M, :K]

    def __repr__(self):
        M, K = self.shape
        br, bc = self.block
        return (f"<BSRMatrix {M}x{K} float32, block {br}x{bc}, {self.nnz_blocks} blocks, "
                f"density {self.density:.3f}>")

    def sliced(self, k_slice):
        """The blocks as the kernels visit them with K slices of k_slice columns (0: no slicing).

        Returns (nslices, data, padded indices, ptr), read-only: the blocks of block row i in
        slice s are ptr[s * block_rows + i] .. ptr[s * block_rows + i + 1]. With more than one
        slice the blocks are a copy, regrouped slice by slice, built once per k_slice and kept:
        in row order, a slice's pass over the rows would read each row's few blocks from a
        different place in memory, which the hardware prefetchers cannot follow once W outgrows
        the L2 cache (1x1, 3072x768, 70%: 36 -> 82 GFLOP/s on one core).
        """
        return tuple(a.view() if isinstance(a, np.ndarray) else a for a in self._slice_plan(k_slice))

    def _slice_plan(self, k_slice):
        """sliced() without the views (the kernels' calls), cached per k_slice."""
        plan = self._slices.get(k_slice)
        if plan is not None:
            return plan
        bc = self.block[1]
        if k_slice < 0 or k_slice % bc:
            raise ValueError(f"k_slice must be 0 or a positive multiple of {bc}, got {k_slice}")
        nslices = max(1, -(-self.shape[1] // k_slice)) if k_slice else 1
        if nslices == 1:
            plan = (1, self._data, self._indices_padded, self._indptr)
        else:
            nbrows = self._indptr.shape[0] - 1
            nnzb = self.nnz_blocks
            rows = np.repeat(np.arange(nbrows), self._row_nnz)
            slice_of = self.indices // (k_slice // bc)
            # stable: the blocks of a (slice, row) pair keep their column order
            order = np.lexsort((rows, slice_of))
            counts = np.bincount(slice_of * nbrows + rows, minlength=nslices * nbrows)
            ptr = np.zeros(nslices * nbrows + 1, dtype=np.int64)
            np.cumsum(counts, out=ptr[1:])
            indices = np.zeros(nnzb + PREFETCH_PAD, dtype=np.int32)
            indices[:nnzb] = self.indices[order]
            plan = (nslices, _frozen(self._data[order]), _frozen(indices), _frozen(ptr.astype(np.int32)))
        self._slices[k_slice] = plan
        return plan

    # -- work partition for the threaded kernels ------------------------------------------------
    def task_bounds(self, threads, m_tile):
        """Block-row ranges, one per task: balanced by nonzeros (m_tile=0) or m_tile rows each."""
        key = (threads, m_tile)
        bounds = self._tasks.get(key)
        if bounds is None:
            # cost of a block row: its blocks' multiply-adds plus a fixed cost per row (stores)
            br, bc = self.block
            bounds = self._tasks[key] = task_bounds(self._row_nnz * (br * bc) + br, threads, m_tile)
        return bounds


def task_bounds(row_cost, threads, m_tile):
    """Read-only int32 block-row ranges, one per task: m_tile rows each, or (m_tile=0) one range
    per thread with about the same total `row_cost`."""
    nbrows = len(row_cost)
    if m_tile > 0:
        bounds = np.append(np.arange(0, nbrows, m_tile), nbrows)
    else:
        cost = np.cumsum(row_cost, dtype=np.float64)
        total = cost[-1] if nbrows else 0.0
        cuts = np.searchsorted(cost, total * np.arange(1, threads) / threads, side="left")
        bounds = np.concatenate(([0], np.minimum(cuts + 1, nbrows), [nbrows]))
        bounds = np.maximum.accumulate(bounds)
    return _frozen(bounds.astype(np.int32))


def _as_index_array(a, name):
    a = np.asarray(a)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, got shape {a.shape} dtype {a.dtype}")
    if a.dtype.kind == "u":          # as signed, so that differences and comparisons do not wrap
        if a.size and a.max() > np.iinfo(np.int64).max:
            raise ValueError(f"{name} has entries beyond the int64 range (largest {a.max()})")
        a = a.astype(np.int64)
    return a


def _every_block_stored(indptr, indices, Kb):
    """Every block of every row stored, each row's in column order: the kernels' dense variants apply."""
    Mb = indptr.shape[0] - 1
    return bool(np.all(np.diff(indptr) == Kb) and (indices.size == 0 or np.array_equal(
        indices.reshape(Mb, Kb), np.broadcast_to(np.arange(Kb, dtype=np.int32), (Mb, Kb)))))


def _frozen(a):
    a.flags.writeable = False
    return a
