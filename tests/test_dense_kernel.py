"""The dense variants of the float32 kernels (a matrix that stores every block: no index loads)
against the float64 reference and, bitwise, against the block-sparse variants on the same data."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsebench as sb
from sparsebench import cpu
from sparsebench.config import variant_id
from conftest import all_configs, assert_spmm_close, examples, random_x

DENSE_BLOCKS = sorted({b[:2] for isa in cpu.available_isas()
                       for b in getattr(cpu.kernel_module(isa), "DENSE_VARIANTS", {})})
# remainders everywhere: M, K not multiples of a block, N not of a tile, N below a vector
SHAPES = [(37, 29, 19), (16, 16, 1), (5, 7, 33), (9, 13, 261), (21, 300, 48), (8, 1, 3)]


def test_dense_variants_are_compiled_for_4x1_and_8x1():
    assert DENSE_BLOCKS == [(4, 1), (8, 1)]


def test_is_dense_only_when_every_block_is_stored_in_order():
    W = random_x(12, 10)
    assert sb.BSRMatrix.from_dense(W, (4, 1), keep_zero_blocks=True).is_dense
    W[4:8] = 0                                   # a zero block row: dropped unless kept
    assert not sb.BSRMatrix.from_dense(W, (4, 1)).is_dense
    A = sb.BSRMatrix.from_dense(W, (4, 1), keep_zero_blocks=True)
    assert A.is_dense and A.nnz_blocks == 3 * 10
    # as many blocks as the grid has, but two in one row and none in another: not dense
    data = np.ones((4, 4, 1), np.float32)
    assert not sb.BSRMatrix(data, [0, 1, 0, 1], [0, 4, 4], (8, 2)).is_dense
    assert sb.BSRMatrix(data, [0, 1, 0, 1], [0, 2, 4], (8, 2)).is_dense
    assert sb.BSRMatrix(np.zeros((0, 4, 1), np.float32), np.zeros(0, np.int32), [0], (0, 5)).is_dense


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("block", DENSE_BLOCKS, ids=lambda b: "%dx%d" % b)
def test_every_dense_config_matches_reference_and_the_sparse_variant_bitwise(block, shape):
    M, K, N = shape
    W = random_x(M, K, seed=M + K)
    W[: block[0]] = 0                            # a zero block row, stored all the same
    A = sb.BSRMatrix.from_dense(W, block, keep_zero_blocks=True)
    S = sb.BSRMatrix.from_dense(W, block)        # the zero block row left out: the indexed variant
    assert A.is_dense and not S.is_dense
    X = random_x(K, N)
    bias = random_x(M, 1, seed=5)[:, 0].copy()
    for cfg in all_configs(A, N):
        module, vid = variant_id(cfg, dense=True)
        assert vid in module.DENSE_VARIANTS.values() or block + (cfg.n_tile,) not in module.DENSE_VARIANTS
        Y = sb.spmm(A, X, cfg, bias=bias)
        assert_spmm_close(Y, W, X, bias, context=str(cfg))
        # the same sums in the same order (the zero row: +0 + bias either way)
        assert np.array_equal(Y, sb.spmm(S, X, cfg, bias=bias)), str(cfg)
        assert np.array_equal(sb.spmm(A, X, cfg, activation="gelu"),
                              sb.spmm(S, X, cfg, activation="gelu")), str(cfg)


@settings(max_examples=examples(60), deadline=None)
@given(m=st.integers(1, 70), k=st.integers(1, 90), n=st.integers(1, 140),
       block=st.sampled_from(DENSE_BLOCKS), data=st.data())
def test_random_dense_problems(m, k, n, block, data):
    W, X = random_x(m, k, seed=m * 7 + k), random_x(k, n, seed=n)
    A = sb.BSRMatrix.from_dense(W, block, keep_zero_blocks=True)
    cfg = data.draw(st.sampled_from(all_configs(A, n)))
    assert_spmm_close(sb.spmm(A, X, cfg), W, X, context=str(cfg))


def test_compare_runs_our_dense_gemm_beside_numpy():
    from sparsebench.bench.compare import Compare
    from sparsebench.bench.shapes import Shape
    cmp = Compare(["dense", "sparsebench-dense", "sparsebench"], threads=1, samples=3, log=lambda *a: None)
    rows = {r["method"]: r for r in cmp.run([Shape("s", 40, 36, 9)], [0.8], [(4, 1)])}
    assert rows["sparsebench-dense"]["status"] == "ok", rows["sparsebench-dense"]["reason"]
    assert float(rows["sparsebench-dense"]["max_rel_error"]) < 1e-5
