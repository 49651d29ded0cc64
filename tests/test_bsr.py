"""BSRMatrix construction and conversion, block pruning, and the threads' work partition."""
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsebench as sb
from sparsebench.tune.space import M_TILES
from conftest import (SUPPORTED_BLOCKS, blocks, examples, random_dense, random_pruned, seeds,
                      sparsities)

REMAINDER_SHAPES = [(1, 1), (5, 7), (16, 16), (17, 9), (33, 65), (3, 70)]
block_ids = lambda b: "%dx%d" % b          # noqa: E731
shape_ids = lambda s: "x".join(map(str, s))  # noqa: E731


def block_norms(W, block):
    """(Mb, Kb) L2 norms of the zero-padded blocks of W, in float64."""
    br, bc = block
    M, K = W.shape
    P = np.zeros((-(-M // br) * br, -(-K // bc) * bc))
    P[:M, :K] = W
    return np.sqrt((P.reshape(P.shape[0] // br, br, P.shape[1] // bc, bc) ** 2).sum(axis=(1, 3)))


def n_blocks(shape, block):
    return -(-shape[0] // block[0]) * -(-shape[1] // block[1])


# -- from_dense / to_dense ----------------------------------------------------------------------

@pytest.mark.parametrize("shape", REMAINDER_SHAPES, ids=shape_ids)
@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=block_ids)
def test_dense_round_trip(block, shape):
    W, A = random_pruned(*shape, block, 0.5, seed=sum(shape))
    assert A.shape == shape and A.block == block
    D = A.to_dense()
    assert D.dtype == np.float32 and D.shape == shape
    assert np.array_equal(D, W)
    # storage matches scipy's BSR layout conventions
    assert A.data.shape == (A.nnz_blocks,) + block and A.data.dtype == np.float32
    assert A.indices.shape == (A.nnz_blocks,) and A.indptr.shape == (-(-shape[0] // block[0]) + 1,)
    assert A.nnz == A.nnz_blocks * block[0] * block[1]
    assert np.all(np.diff(A.indptr) >= 0) and A.indptr[0] == 0 and A.indptr[-1] == A.nnz_blocks


@settings(max_examples=examples(100), deadline=None)
@given(M=st.integers(0, 40), K=st.integers(0, 40), block=blocks, seed=seeds,
       density=st.floats(0, 1))
def test_dense_round_trip_any_pattern(M, K, block, seed, density):
    """Arbitrary (not block-structured) sparsity patterns, empty matrices included: to_dense
    gives back W exactly and exactly the blocks holding a nonzero are stored."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((M, K)) * (rng.random((M, K)) < density)).astype(np.float32)
    A = sb.BSRMatrix.from_dense(W, block=block)
    assert np.array_equal(A.to_dense(), W)
    assert A.nnz_blocks == int((block_norms(W, block) > 0).sum())
    assert 0.0 <= A.density <= 1.0


def test_from_dense_converts_float64_and_int_to_float32():
    W = np.arange(20, dtype=np.float64).reshape(4, 5) / 3
    A = sb.BSRMatrix.from_dense(W, block=(4, 1))
    assert A.data.dtype == np.float32
    assert np.array_equal(A.to_dense(), W.astype(np.float32))
    Ai = sb.BSRMatrix.from_dense(np.eye(6, dtype=np.int64), block=(1, 1))
    assert np.array_equal(Ai.to_dense(), np.eye(6, dtype=np.float32))


def test_from_dense_stores_blocks_holding_nan():
    W = np.zeros((8, 8), np.float32)
    W[5, 2] = np.nan
    A = sb.BSRMatrix.from_dense(W, block=(4, 1))
    assert A.nnz_blocks == 1
    assert np.isnan(A.to_dense()[5, 2])


# -- density / nnz_blocks -----------------------------------------------------------------------

@pytest.mark.parametrize("shape", REMAINDER_SHAPES, ids=shape_ids)
@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=block_ids)
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_density_counts_padded_blocks(block, shape, sparsity):
    W, A = random_pruned(*shape, block, sparsity, seed=1)
    total = n_blocks(shape, block)
    zero = int(round(sparsity * total))
    assert A.nnz_blocks == total - zero
    assert A.density == pytest.approx((total - zero) / total)
    assert A.sparsity == pytest.approx(zero / total)


def test_density_of_empty_shapes():
    for shape in [(0, 0), (0, 5), (5, 0)]:
        A = sb.BSRMatrix.from_dense(np.zeros(shape, np.float32), block=(4, 1))
        assert A.nnz_blocks == 0 and A.density == 0.0
        assert A.to_dense().shape == shape


def test_repr_mentions_shape_block_and_density():
    _, A = random_pruned(37, 29, (4, 1), 0.5)
    r = repr(A)
    assert "37x29" in r and "4x1" in r and "density" in r


# -- scipy interoperability ---------------------------------------------------------------------

@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=block_ids)
def test_to_scipy_multiple_of_block_is_bsr_with_same_arrays(block):
    M, K = 4 * 16, 4 * 12
    W, A = random_pruned(M, K, block, 0.6, seed=2)
    S = A.to_scipy()
    assert S.format == "bsr" and S.blocksize == block and S.shape == (M, K)
    assert np.array_equal(S.toarray(), W)
    x = np.random.default_rng(0).standard_normal(K).astype(np.float32)
    assert np.allclose(S @ x, W.astype(np.float64) @ x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", REMAINDER_SHAPES, ids=shape_ids)
@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=block_ids)
def test_to_scipy_with_remainders_agrees_with_dense(block, shape):
    W, A = random_pruned(*shape, block, 0.5, seed=3)
    S = A.to_scipy()
    assert sp.issparse(S) and S.shape == shape
    assert np.array_equal(S.toarray(), W)


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=block_ids)
def test_from_scipy_bsr_matches_from_dense(block):
    M, K = 32, 48
    W, A = random_pruned(M, K, block, 0.7, seed=4)
    S = sp.bsr_matrix(W.astype(np.float64), blocksize=block)
    S.eliminate_zeros()
    B = sb.BSRMatrix.from_scipy(S)
    assert B.block == block and B.shape == (M, K)
    assert np.array_equal(B.to_dense(), W)
    assert np.array_equal(B.indptr, A.indptr) and np.array_equal(B.indices, A.indices)
    assert np.array_equal(B.data, A.data)
    # and back again
    C = sb.BSRMatrix.from_scipy(A.to_scipy())
    assert C.block == block and np.array_equal(C.to_dense(), W)


def test_from_scipy_sorts_unsorted_block_indices():
    data = np.arange(1, 9, dtype=np.float32).reshape(2, 4, 1)
    S = sp.bsr_matrix((data, np.array([3, 0]), np.array([0, 2])), shape=(4, 4))
    S.has_sorted_indices = False
    A = sb.BSRMatrix.from_scipy(S)
    assert list(A.indices) == [0, 3]
    assert np.array_equal(A.to_dense(), S.toarray())


def test_from_scipy_csr_is_converted():
    rng = np.random.default_rng(5)
    D = (rng.standard_normal((12, 20)) * (rng.random((12, 20)) < 0.2)).astype(np.float32)
    A = sb.BSRMatrix.from_scipy(sp.csr_matrix(D).tobsr(blocksize=(1, 1)))
    assert np.array_equal(A.to_dense(), D)
    A = sb.BSRMatrix.from_scipy(sp.coo_matrix(D).tobsr(blocksize=(4, 1)))
    assert A.block == (4, 1) and np.array_equal(A.to_dense(), D)


def test_scipy_round_trip_keeps_block_with_remainders():
    W, A = random_pruned(10, 7, (4, 1), 0.5)
    B = sb.BSRMatrix.from_scipy(A.to_scipy(), block=A.block)
    assert B.block == (4, 1)
    assert np.array_equal(B.to_dense(), W)


def test_from_scipy_csr_needs_a_block():
    _, A = random_pruned(10, 7, (4, 1), 0.5)
    with pytest.raises(ValueError, match=r"has no block shape: pass block=\(rows, cols\)"):
        sb.BSRMatrix.from_scipy(A.to_scipy())


def test_constructor_does_not_freeze_the_callers_arrays():
    data = np.ones((2, 4, 1), np.float32)
    sb.BSRMatrix(data, np.array([0, 1]), np.array([0, 2]), (4, 2))
    assert data.flags.writeable
    S = sp.bsr_matrix(np.ones((4, 4), np.float32), blocksize=(4, 1))
    sb.BSRMatrix.from_scipy(S)
    assert S.data.flags.writeable


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=lambda b: "%dx%d" % b)
def test_vstack_and_block_rows_compute_each_part_as_it_was(block):
    """Stacked matrices (the last with a partial block row, one with empty rows) give each part's
    rows bit for bit; block_rows views share the stacked arrays and give the parts back."""
    br = block[0]
    parts = [random_pruned(M, 70, block, s, seed=M, empty_block_rows=e)[1]
             for M, s, e in ((4 * br, 0.7, 0.0), (3 * br, 0.5, 0.5), (2 * br + (br > 1), 0.9, 0.0))]
    stacked = sb.BSRMatrix.vstack(parts)
    X = random_dense(70, 37, np.random.default_rng(1))
    Y = sb.spmm(stacked, X)
    r = i = 0
    for A in parts:
        rows = -(-A.shape[0] // br)
        view = stacked.block_rows(i, i + rows)
        assert view.shape == A.shape and view.nnz_blocks == A.nnz_blocks and view.is_dense == A.is_dense
        assert np.array_equal(view.to_dense(), A.to_dense()) and np.array_equal(view.indptr, A.indptr)
        assert view.nnz_blocks == 0 or np.shares_memory(view.data, stacked.data)
        for cfg in sb.kernel_configs(A, 37, threads=2)[::9]:
            assert np.array_equal(sb.spmm(view, X, cfg), sb.spmm(A, X, cfg)), str(cfg)
        assert np.array_equal(Y[r:r + A.shape[0]], sb.spmm(A, X))
        r, i = r + A.shape[0], i + rows
    assert stacked.block_rows(2, 2).shape == (0, 70)
    end = stacked.indptr.shape[0] - 1                    # past a partial last block row: empty
    assert stacked.block_rows(end, end).shape == (0, 70) and stacked.block_rows(end, end).nnz_blocks == 0


def test_vstack_and_block_rows_refuse_what_does_not_fit():
    a, b = random_pruned(6, 8, (4, 1), 0.5)[1], random_pruned(8, 8, (4, 1), 0.5)[1]
    with pytest.raises(ValueError, match="at least one matrix"):
        sb.BSRMatrix.vstack([])
    with pytest.raises(ValueError, match="whole block rows"):
        sb.BSRMatrix.vstack([a, b])                 # 6 rows are not whole 4x1 block rows
    with pytest.raises(ValueError, match="same block shape and number of columns"):
        sb.BSRMatrix.vstack([b, random_pruned(8, 9, (4, 1), 0.5)[1]])
    with pytest.raises(ValueError, match="same block shape"):
        sb.BSRMatrix.vstack([b, random_pruned(8, 8, (1, 1), 0.5)[1]])
    with pytest.raises(ValueError, match="outside 0..2"):
        b.block_rows(1, 3)


# -- prune --------------------------------------------------------------------------------------

@settings(max_examples=examples(200), deadline=None)
@given(M=st.integers(1, 50), K=st.integers(1, 50), block=blocks, sparsity=sparsities, seed=seeds)
def test_prune_zeroes_exact_number_of_smallest_blocks(M, K, block, sparsity, seed):
    W = random_dense(M, K, np.random.default_rng(seed))
    P = sb.prune(W, sparsity=sparsity, block=block)
    assert P.shape == W.shape and P.dtype == W.dtype and P is not W
    norms = block_norms(W, block)
    kept = block_norms(P, block) > 0
    n_zero = int(round(sparsity * norms.size))
    assert int((~kept).sum()) == n_zero
    # kept blocks are untouched, pruned blocks are entirely zero
    assert np.array_equal(P[P != 0], W[P != 0])
    assert np.all((P == W) | (P == 0))
    # the largest-norm blocks are the ones kept
    if kept.any() and (~kept).any():
        assert norms[kept].min() >= norms[~kept].max()
    # deterministic, and the input is not modified
    W0 = W.copy()
    assert np.array_equal(sb.prune(W, sparsity=sparsity, block=block), P)
    assert np.array_equal(W, W0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_prune_preserves_dtype(dtype):
    W = random_dense(9, 10, np.random.default_rng(0), dtype=dtype)
    P = sb.prune(W, 0.5, block=(4, 1))
    assert P.dtype == dtype
    assert np.all((P == W) | (P == 0))


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=block_ids)
def test_prune_sparsity_zero_keeps_everything(block):
    W = random_dense(17, 9, np.random.default_rng(1))
    W[3, 4] = 0.0
    assert np.array_equal(sb.prune(W, 0.0, block=block), W)


def test_prune_counts_padded_edge_blocks():
    """5x5 with 4x1 blocks is a 2x5 grid of 10 blocks (the bottom row of blocks is partial)."""
    W = np.ones((5, 5), np.float32)
    W[4, :] = 100.0                      # the partial edge blocks have the largest norms
    P = sb.prune(W, 0.5, block=(4, 1))
    assert np.all(P[:4] == 0) and np.all(P[4] == 100.0)
    assert sb.BSRMatrix.from_dense(P, block=(4, 1)).nnz_blocks == 5


def test_prune_ties_are_broken_by_position_deterministically():
    W = np.ones((8, 8), np.float32)
    P = sb.prune(W, 0.25, block=(4, 4))   # 4 equal blocks, prune 1
    assert (block_norms(P, (4, 4)) == 0).sum() == 1
    for _ in range(3):
        assert np.array_equal(sb.prune(W, 0.25, block=(4, 4)), P)


def test_prune_accepts_block_shapes_of_any_integer_sequence():
    W = random_dense(8, 8, np.random.default_rng(2))
    assert np.array_equal(sb.prune(W, 0.5, block=[4, 1]), sb.prune(W, 0.5, block=(4, 1)))
    assert np.array_equal(sb.prune(W, 0.5, block=np.array([4, 1])), sb.prune(W, 0.5, block=(4, 1)))


# -- task_bounds --------------------------------------------------------------------------------

def uneven_matrix(block=(4, 1), nbrows=400, kb=128, seed=0):
    """Block rows with very uneven nonzero counts, heavy ones clustered at the top:
    10% full rows, then rows of 1-8 blocks, and a run of empty rows."""
    rng = np.random.default_rng(seed)
    br, bc = block
    counts = np.concatenate([np.full(nbrows // 10, kb),
                             rng.integers(1, 9, nbrows - nbrows // 10 - 20),
                             np.zeros(20, int)])
    P = np.zeros((nbrows, kb), bool)
    for i, c in enumerate(counts):
        P[i, rng.choice(kb, c, replace=False)] = True
    W = np.repeat(np.repeat(P, br, 0), bc, 1).astype(np.float32)
    return sb.BSRMatrix.from_dense(W, block=block)


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=block_ids)
@pytest.mark.parametrize("threads", [1, 2, 3, 4, 7, 64])
@pytest.mark.parametrize("m_tile", M_TILES)
def test_task_bounds_partition_all_block_rows(block, threads, m_tile):
    _, A = random_pruned(37, 29, block, 0.5, seed=6, empty_block_rows=0.3)
    nbrows = A.indptr.shape[0] - 1
    b = A.task_bounds(threads, m_tile)
    assert b.dtype == np.int32 and b.ndim == 1 and len(b) >= 2
    assert b[0] == 0 and b[-1] == nbrows
    assert np.all(np.diff(b) >= 0)
    if m_tile:
        assert np.all(np.diff(b)[:-1] == m_tile) and 0 < b[-1] - b[-2] <= m_tile
    else:
        assert len(b) == threads + 1
    assert not b.flags.writeable
    assert A.task_bounds(threads, m_tile) is b          # cached


@pytest.mark.parametrize("threads", [2, 3, 4, 8])
@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=block_ids)
def test_static_partition_balances_nonzeros(block, threads):
    A = uneven_matrix(block)
    row_nnz = np.diff(A.indptr).astype(np.int64)
    total = row_nnz.sum()
    b = A.task_bounds(threads, 0)
    parts = np.array([row_nnz[b[t]:b[t + 1]].sum() for t in range(threads)])
    assert parts.sum() == total
    share = total / threads
    # one block row is indivisible: each part is within one heaviest row (plus the per-row
    # overhead the cost model charges) of an equal share; here that is < 20% of a share
    assert np.all(np.abs(parts - share) <= 0.2 * share), (parts, share)
    # ... whereas an equal split of the rows would be badly unbalanced on this matrix
    naive = np.array_split(row_nnz, threads)
    assert max(abs(p.sum() - share) for p in naive) > 0.5 * share


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=block_ids)
def test_static_partition_with_more_threads_than_rows(block):
    _, A = random_pruned(block[0] * 3, 8, block, 0.0)
    b = A.task_bounds(16, 0)
    assert b[0] == 0 and b[-1] == 3 and np.all(np.diff(b) >= 0) and len(b) == 17


def test_task_bounds_of_matrix_without_rows():
    A = sb.BSRMatrix.from_dense(np.zeros((0, 4), np.float32), block=(4, 1))
    for threads in (1, 2):
        b = A.task_bounds(threads, 0)
        assert b[0] == 0 and b[-1] == 0


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=block_ids)
@pytest.mark.parametrize("k_slice", [8, 64, 96, 1000])
def test_sliced_holds_every_block_once_grouped_by_slice_then_row(block, k_slice):
    """A.sliced(k): the same blocks, reordered so that (slice, block row) runs are contiguous,
    each run inside its slice's columns and in column order."""
    W, A = random_pruned(37, 203, block, 0.6, seed=4, empty_block_rows=0.3)
    k_slice = -(-k_slice // block[1]) * block[1]
    nslices, data, indices, ptr = A.sliced(k_slice)
    nbrows = A.indptr.shape[0] - 1
    assert nslices == max(1, -(-A.shape[1] // k_slice))
    assert ptr.dtype == np.int32 and ptr.shape == (nslices * nbrows + 1,)
    assert ptr[0] == 0 and ptr[-1] == A.nnz_blocks and np.all(np.diff(ptr) >= 0)
    assert indices.shape == A._indices_padded.shape and data.shape == A.data.shape
    for a in (data, indices, ptr):
        with pytest.raises(ValueError):
            a.flags.writeable = True                      # views of frozen arrays
    per_slice = k_slice // block[1]
    rebuilt = np.zeros((nbrows, -(-A.shape[1] // block[1])) + block, np.float32)
    for s in range(nslices):
        for i in range(nbrows):
            lo, hi = ptr[s * nbrows + i], ptr[s * nbrows + i + 1]
            cols = indices[lo:hi]
            assert np.all(cols // per_slice == s) and np.all(np.diff(cols) > 0)
            rebuilt[i, cols] = data[lo:hi]
    dense = rebuilt.transpose(0, 2, 1, 3).reshape(nbrows * block[0], -1)[:A.shape[0], :A.shape[1]]
    assert np.array_equal(dense, W)
    assert A.sliced(k_slice)[3].base is A.sliced(k_slice)[3].base    # built once
    if nslices == 1:                                                  # no copy at all
        assert ptr.base is A._indptr and data.base is A._data


def test_sliced_rejects_bad_k_slice():
    _, A = random_pruned(8, 16, (1, 4), 0.5)
    for bad in (-4, 6):
        with pytest.raises(ValueError, match="k_slice must be 0 or a positive multiple of 4"):
            A.sliced(bad)
    assert A.sliced(0)[0] == 1


def test_pickle_round_trip_keeps_structure_and_immutability():
    import pickle

    W, A = random_pruned(10, 7, (4, 1), 0.5)
    B = pickle.loads(pickle.dumps(A))
    assert B.shape == A.shape and B.block == A.block
    assert np.array_equal(B.to_dense(), W)
    with pytest.raises(AttributeError, match="immutable"):
        B.shape = (1, 1)
