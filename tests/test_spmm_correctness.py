"""Y = spmm(A, X) against a dense float64 reference, for every block shape and kernel config."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsebench as sb
from sparsebench import cpu
from conftest import (SUPPORTED_BLOCKS, THREADS, U32, all_configs, assert_spmm_close, examples,
                      pruned_problems, random_pruned, random_x, reference, spmm_bound)

# Small shapes with remainders everywhere: M and K not multiples of any block, N not a multiple
# of any n_tile, N below every vector width (1, 2) and N large enough to split into n_panels.
FIXED_SHAPES = [
    (37, 29, 19),
    (16, 16, 1),
    (5, 7, 33),
    (3, 5, 2),
    (9, 13, 261),   # N > 128 and > 256: the n_panel variants actually split N
    (21, 300, 48),  # K > 256: every k_slice splits K, with a remainder slice
]


def _embedded(shape, fill, pad=(1, 2, 3, 7)):
    """An array of `shape` living inside a bigger C array filled with `fill` (offset rows and
    columns, row stride wider than the row): reading or writing outside it is detectable."""
    r0, c0, r1, c1 = pad
    big = np.full((shape[0] + r0 + r1, shape[1] + c0 + c1), fill, dtype=np.float32)
    return big, big[r0:r0 + shape[0], c0:c0 + shape[1]]


def test_reference_check_is_tight():
    """The oracle itself: the bound accepts an honest float32 result but rejects a 1e-5
    relative error, a dropped block, an unwritten element and a stray value in an empty row."""
    M, K, N = 37, 29, 19
    W, A = random_pruned(M, K, (4, 1), 0.5, seed=1, empty_block_rows=0.3)
    X = random_x(K, N)
    honest = (W @ X).astype(np.float32)                    # numpy float32 matmul
    assert_spmm_close(honest, W, X)
    mag = np.abs(W.astype(np.float64)) @ np.abs(X.astype(np.float64))
    nz = np.flatnonzero(np.abs(W).sum(1))[0]
    empty = np.flatnonzero(np.abs(W).sum(1) == 0)
    assert empty.size
    i = np.flatnonzero(np.diff(A.indptr))[0]
    Wd = W.copy()
    Wd[4 * i:4 * i + 4, A.indices[A.indptr[i]]] = 0       # W without one of its blocks
    assert not np.array_equal(Wd, W)
    bad_cases = [(Wd @ X).astype(np.float32)]
    for where, value in [((nz, 3), honest[nz, 3] + 1e-5 * mag[nz, 3]),   # tiny error
                         ((M - 1, N - 1), np.nan),                          # unwritten
                         ((empty[0], 0), 1e-30)]:                           # empty row not 0
        Y = honest.copy()
        Y[where] = value
        bad_cases.append(Y)
    for Y in bad_cases:
        with pytest.raises(AssertionError):
            assert_spmm_close(Y, W, X)


@pytest.mark.parametrize("shape", FIXED_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=lambda b: "%dx%d" % b)
def test_every_config_matches_reference(block, shape):
    """Every config kernel_configs offers (all ISAs, threads 1 and 2) computes W @ X; it writes
    every element of out and nothing outside it, and reads nothing outside X."""
    M, K, N = shape
    W, A = random_pruned(M, K, block, 0.6, seed=M * 1000 + K, empty_block_rows=0.2)
    X = random_x(K, N)
    cfgs = all_configs(A, N)
    assert cfgs, f"no configs for block {block} and N={N}"
    assert {c.isa for c in cfgs} == set(sb.cpu.available_isas())
    Xbig, Xv = _embedded((K, N), np.nan)          # NaN around X: any stray read poisons Y
    Xv[...] = X
    failures = []
    for cfg in cfgs:
        Y = sb.spmm(A, X, config=cfg)
        try:
            assert_spmm_close(Y, W, X, context=str(cfg))
            # X as a strided view with NaN all around it, out as a strided view pre-filled with
            # NaN inside and a sentinel around it
            Ybig, out = _embedded((M, N), -7.0)
            out[...] = np.nan
            Y2 = sb.spmm(A, Xv, config=cfg, out=out)
            assert Y2 is out
            assert_spmm_close(out, W, X, context=f"{cfg} (strided X/out)")
            mask = np.ones(Ybig.shape, bool)
            mask[1:1 + M, 2:2 + N] = False
            assert np.all(Ybig[mask] == -7.0), f"{cfg}: wrote outside out"
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, f"{len(failures)}/{len(cfgs)} configs wrong:\n" + "\n".join(failures[:10])


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=lambda b: "%dx%d" % b)
def test_result_independent_of_threads_and_schedule_bitwise(block):
    """For a given compiled variant (isa, n_tile), threads, m_tile, n_panel, k_slice and prefetch
    only reorder work between rows/columns, never the sum inside one output (a K slice's partial
    sum is stored and reloaded exactly): bitwise identical."""
    M, K, N = 45, 131, 300
    W, A = random_pruned(M, K, block, 0.5, seed=3)
    X = random_x(K, N)
    results = {}
    for cfg in all_configs(A, N):
        Y = sb.spmm(A, X, config=cfg)
        key = (cfg.isa, cfg.n_tile)
        if key in results:
            first_cfg, first = results[key]
            assert np.array_equal(Y, first), f"{cfg} differs bitwise from {first_cfg}"
        else:
            results[key] = (cfg, Y)


@settings(max_examples=examples(500), deadline=None)
@given(problem=pruned_problems(), data=st.data())
def test_random_problems_match_reference(problem, data):
    W, A, X = problem
    N = X.shape[1]
    threads = data.draw(st.sampled_from(THREADS), label="threads")
    cfg = data.draw(st.sampled_from(sb.kernel_configs(A, N, threads=threads)), label="config")
    Y = sb.spmm(A, X, config=cfg)
    assert_spmm_close(Y, W, X, context=str(cfg))
    # structure-driven exactness (also implied by the bound, stated explicitly here)
    if A.nnz_blocks == 0:
        assert np.all(Y == 0)
    br = A.block[0]
    for i in np.flatnonzero(np.diff(A.indptr) == 0):
        assert np.all(Y[i * br:(i + 1) * br] == 0), f"empty block row {i} not exactly zero"


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=lambda b: "%dx%d" % b)
def test_fully_pruned_matrix_gives_exact_zeros(block):
    """sparsity 0.999 on a small matrix prunes every block: Y is exactly 0 for every config,
    even when X holds NaN/inf (structurally zero blocks are never multiplied)."""
    W, A = random_pruned(11, 9, block, 0.999, seed=5)
    assert A.nnz_blocks == 0 and not W.any()
    X = random_x(9, 21)
    X[0, 0], X[3, 4] = np.nan, np.inf
    for cfg in all_configs(A, 21):
        out = np.full((11, 21), np.nan, dtype=np.float32)
        Y = sb.spmm(A, X, config=cfg, out=out)
        assert np.all(Y == 0), cfg
        bias = np.arange(11, dtype=np.float32)
        assert np.array_equal(sb.spmm(A, X, config=cfg, bias=bias), np.repeat(bias[:, None], 21, 1))


def test_empty_block_rows_are_exactly_zero_or_bias():
    W, A = random_pruned(40, 20, (8, 1), 0.3, seed=9)
    W[8:24] = 0                                     # block rows 1 and 2 empty
    A = sb.BSRMatrix.from_dense(W, block=(8, 1))
    assert list(np.diff(A.indptr)[1:3]) == [0, 0]
    X = random_x(20, 37)
    bias = np.linspace(-1, 1, 40, dtype=np.float32)
    for cfg in all_configs(A, 37):
        Y = sb.spmm(A, X, config=cfg, bias=bias)
        assert np.array_equal(Y[8:24], np.repeat(bias[8:24, None], 37, 1)), cfg
        assert_spmm_close(Y, W, X, bias=bias, context=str(cfg))


# -- bias ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=lambda b: "%dx%d" % b)
def test_bias_added_to_every_column(block):
    M, K, N = 37, 29, 19
    W, A = random_pruned(M, K, block, 0.5, seed=11, empty_block_rows=0.2)
    X = random_x(K, N)
    bias = np.random.default_rng(2).standard_normal(M).astype(np.float32) * 10
    for cfg in all_configs(A, N):
        Y = sb.spmm(A, X, config=cfg, bias=bias)
        assert_spmm_close(Y, W, X, bias=bias, context=str(cfg))


@settings(max_examples=examples(200), deadline=None)
@given(problem=pruned_problems(max_n=70), data=st.data())
def test_random_problems_with_bias_and_out(problem, data):
    W, A, X = problem
    M, N = A.shape[0], X.shape[1]
    cfg = data.draw(st.sampled_from(sb.kernel_configs(A, N, threads=data.draw(st.sampled_from(THREADS)))))
    bias = np.random.default_rng(N).standard_normal(M).astype(np.float32)
    out = np.full((M, N), np.nan, dtype=np.float32)
    Y = sb.spmm(A, X, config=cfg, out=out, bias=bias)
    assert Y is out
    assert_spmm_close(Y, W, X, bias=bias, context=str(cfg))


# -- fused GELU epilogue ------------------------------------------------------------------------

def _assert_gelu_close(Y, W, X, bias, context):
    """GELU is 1.13-Lipschitz: the float32 bound of the sum carries through, plus 5e-7 for the
    erf approximation and a float32 rounding of the result."""
    from scipy.special import erf
    pre = reference(W, X, bias)
    ref = 0.5 * pre * (1 + erf(pre / np.sqrt(2)))
    bound = 1.13 * spmm_bound(W, X, bias) + 5e-7 + 2 * U32 * np.abs(ref)
    err = np.abs(Y.astype(np.float64) - ref)
    assert (err <= bound).all(), f"{context}: max excess {(err - bound).max():.3g}"


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=lambda b: "%dx%d" % b)
def test_gelu_epilogue_every_config(block):
    M, K, N = 37, 300, 19
    W, A = random_pruned(M, K, block, 0.5, seed=5, empty_block_rows=0.2)
    X = random_x(K, N) * 0.2          # pre-activations around [-4, 4]: every branch of erf
    bias = np.linspace(-3, 3, M, dtype=np.float32)
    for cfg in all_configs(A, N):
        _assert_gelu_close(sb.spmm(A, X, config=cfg, bias=bias, activation="gelu"), W, X, bias, str(cfg))
        _assert_gelu_close(sb.spmm(A, X, config=cfg, activation="gelu"), W, X, None, str(cfg))


def test_gelu_extreme_inputs_and_bad_activation():
    W = np.array([[1.0], [1.0]], np.float32)
    A = sb.BSRMatrix.from_dense(W, (1, 1))
    X = np.array([[-200.0, -8.0, -1e-30, 0.0, 1e-30, 3.0, 200.0, 1e30]], np.float32)
    Y = sb.spmm(A, X, activation="gelu")
    assert abs(Y[0, 0]) < 1e-30 and Y[0, 3] == 0.0 and Y[0, 1] == pytest.approx(-5.0278e-15, rel=1e-3)
    assert Y[0, 6] == 200.0 and Y[0, 7] == 1e30
    assert Y[0, 5] == pytest.approx(2.9959502, abs=1e-6)
    with pytest.raises(ValueError, match="activation must be None or 'gelu'"):
        sb.spmm(A, X, activation="relu")
    A0 = sb.BSRMatrix.from_dense(np.zeros((2, 0), np.float32), (1, 1))
    Y0 = sb.spmm(A0, np.zeros((0, 3), np.float32), bias=np.array([-1, 1], np.float32), activation="gelu")
    assert Y0[0, 0] == pytest.approx(-0.15865525) and Y0[1, 0] == pytest.approx(0.8413447)


# -- out= and strided operands ----------------------------------------------------------------

def test_out_is_written_and_returned():
    W, A = random_pruned(20, 12, (4, 1), 0.5)
    X = random_x(12, 10)
    out = np.full((20, 10), 123.0, dtype=np.float32)
    Y = sb.spmm(A, X, out=out)
    assert Y is out
    assert_spmm_close(out, W, X)


def test_x_column_slice_of_wider_array():
    W, A = random_pruned(33, 21, (4, 4), 0.5)
    Xwide = random_x(21, 50)
    X = Xwide[:, 5:30]
    assert not X.flags.c_contiguous and X.strides == (200, 4)
    for cfg in all_configs(A, 25):
        assert_spmm_close(sb.spmm(A, X, config=cfg), W, X, context=str(cfg))


def test_out_column_slice_of_wider_array_leaves_rest_untouched():
    W, A = random_pruned(33, 21, (1, 4), 0.5)
    X = random_x(21, 25)
    big = np.full((33, 40), 5.0, dtype=np.float32)
    out = big[:, 3:28]
    Y = sb.spmm(A, X, out=out)
    assert Y is out
    assert_spmm_close(big[:, 3:28], W, X)
    assert np.all(big[:, :3] == 5.0) and np.all(big[:, 28:] == 5.0)


def test_x_and_out_column_slices_of_the_same_array():
    """Disjoint column ranges of one buffer: allowed (no overlap), and correct."""
    W, A = random_pruned(16, 16, (4, 1), 0.5)
    buf = np.zeros((16, 30), dtype=np.float32)
    buf[:, :10] = random_x(16, 10)
    X, out = buf[:, :10], buf[:, 15:25]
    X0 = X.copy()
    sb.spmm(A, X, out=out)
    assert np.array_equal(buf[:, :10], X0)
    assert_spmm_close(out, W, X0)


# -- NaN / inf semantics ----------------------------------------------------------------------

@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=lambda b: "%dx%d" % b)
def test_nan_inf_in_stored_W_propagate_to_their_rows_like_dense(block):
    """NaN or inf stored in W behaves exactly like dense W @ X: a NaN at W[i, k] makes row i
    all NaN; an inf makes row i +-inf (or NaN where signs mix), other rows are unaffected."""
    M, K, N = 21, 13, 17
    W, _ = random_pruned(M, K, block, 0.5, seed=21)
    nz = np.argwhere(W != 0)
    (i1, k1), (i2, k2) = nz[0], nz[len(nz) // 2]
    W[i1, k1], W[i2, k2] = np.nan, np.inf
    W[M - 1, K - 1] = -np.inf                    # in a (possibly padded) edge block
    A = sb.BSRMatrix.from_dense(W, block=block)
    X = np.abs(random_x(K, N)) + 0.5            # positive X: inf rows stay inf, not NaN
    X[:, 0] *= -1                                # ... except column 0 flips sign
    for cfg in all_configs(A, N):
        Y = sb.spmm(A, X, config=cfg)
        assert np.isnan(Y[i1]).all(), cfg
        assert_spmm_close(Y, W, X, context=str(cfg))


def test_nan_in_X_reaches_only_outputs_of_stored_blocks():
    """Documented semantics: structurally zero blocks are never multiplied, so a NaN in X[k, j]
    makes Y[i, j] NaN only if some stored block covers (i, k) (zeros inside stored blocks do
    multiply, as in dense code); unlike dense W @ X, where 0 * NaN poisons every row."""
    M, K, N = 24, 16, 9
    block = (4, 1)
    W, A = random_pruned(M, K, block, 0.7, seed=4)
    X = random_x(K, N)
    X[5, 2] = np.nan
    X[11, 7] = np.nan
    stored = stored_mask(A)
    expect_nan = (stored.astype(float) @ np.isnan(X).astype(float)) > 0
    assert expect_nan.any() and not expect_nan.all()
    Xz = np.where(np.isnan(X), np.float32(0), X)
    ref = W.astype(np.float64) @ Xz.astype(np.float64)
    for cfg in all_configs(A, N):
        Y = sb.spmm(A, X, config=cfg)
        assert np.array_equal(np.isnan(Y), expect_nan), cfg
        fin = ~expect_nan
        assert np.allclose(Y[fin], ref[fin], rtol=1e-5, atol=1e-5), cfg


def stored_mask(A):
    """M x K boolean mask of the positions covered by stored blocks."""
    br, bc = A.block
    M, K = A.shape
    P = np.zeros((-(-M // br), -(-K // bc)), dtype=bool)
    P[np.repeat(np.arange(P.shape[0]), np.diff(A.indptr)), A.indices] = True
    return np.repeat(np.repeat(P, br, 0), bc, 1)[:M, :K]


# -- default config on realistic shapes --------------------------------------------------------

@pytest.mark.parametrize("shape", [(256, 256, 128), (1024, 256, 64), (768, 768, 1)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("block", SUPPORTED_BLOCKS, ids=lambda b: "%dx%d" % b)
def test_default_config_on_bert_like_shapes(block, shape):
    M, K, N = shape
    W, A = random_pruned(M, K, block, 0.9, seed=7)
    X = random_x(K, N)
    Y = sb.spmm(A, X)
    assert_spmm_close(Y, W, X, context=str(sb.default_config(A, N)))
    bias = np.ones(M, dtype=np.float32)
    assert_spmm_close(sb.spmm(A, X, bias=bias), W, X, bias=bias)


def test_calls_with_different_matrices_and_configs_do_not_interfere():
    """spmm caches validated (config, matrix) pairs: a new matrix with a recycled id, or the same
    config on another matrix, must still be checked and computed correctly."""
    X = random_x(30, 8)
    for seed in range(20):
        block = SUPPORTED_BLOCKS[seed % len(SUPPORTED_BLOCKS)]
        W, A = random_pruned(25 + seed, 30, block, 0.5, seed=seed)
        cfg = sb.kernel_configs(A, 8, threads=1)[seed % 7]
        assert_spmm_close(sb.spmm(A, X, config=cfg), W, X)
        del A


def test_spmm_does_not_keep_matrices_alive():
    import gc
    import weakref
    _, A = random_pruned(64, 64, (4, 1), 0.5)
    ref = weakref.ref(A)
    sb.spmm(A, random_x(64, 8))
    del A
    gc.collect()
    assert ref() is None



# -- accumulate: out += A @ X (+ bias), the encoder's residual add in the store step ----------------

@pytest.mark.parametrize("block", [(4, 1), (1, 1), (4, 4), (16, 1)], ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("M, K, N, sparsity", [(37, 29, 19, 0.6), (20, 33, 1, 0.6), (9, 0, 5, 0.6),
                                               (37, 150, 150, 0.6), (21, 70, 9, 0.0)])
def test_spmm_into_accumulates_on_every_config_kind(block, M, K, N, sparsity):
    """Every ISA, tiles, K slices, panels, task sizes and the dense variants (sparsity 0), float64
    reference; with empty block rows (out keeps its rows there, plus the bias)."""
    from sparsebench.spmm import spmm_into
    W, A = random_pruned(M, K, block, sparsity, seed=M + K, empty_block_rows=0.3 if sparsity else 0.0)
    X = random_x(K, N, seed=N)
    bias = np.random.default_rng(3).standard_normal(M).astype(np.float32)
    R = random_x(M, N, seed=7)
    configs = [c for isa in cpu.available_isas() for c in sb.kernel_configs(A, N, threads=2, isas=[isa])]
    picked = (configs[::max(1, len(configs) // 12)] + [c for c in configs if c.k_slice][:4]
              + [c for c in configs if c.n_panel][:4])
    if K == 150:                     # this shape reaches the K-sliced and panelled paths
        assert any(c.k_slice for c in picked) and any(c.n_panel for c in picked)
    if sparsity == 0.0:
        assert A.is_dense            # the dense variants (no index loads)
    for cfg in picked:
        for b in (None, bias):
            out = R.copy()
            assert spmm_into(A, X, cfg, out, b, accumulate=True) is out
            ref_b = b if b is not None else np.zeros(M, np.float32)
            # R starts the sums: every rounding along them may also carry |R|
            bound = spmm_bound(W, X, ref_b) + (K + 4) * U32 * np.abs(R.astype(np.float64))
            err = np.abs(out.astype(np.float64) - (R.astype(np.float64) + reference(W, X, ref_b)))
            assert np.all(err <= bound + 1e-30), f"{cfg} bias={b is not None}: {err.max()}"


@pytest.mark.skipif(not cpu.available_isas("int8"), reason="this CPU (or build) has no AVX512-VNNI kernels")
@pytest.mark.parametrize("block", [(4, 1), (8, 1), (4, 4), (1, 4)], ids=lambda b: f"{b[0]}x{b[1]}")
@pytest.mark.parametrize("N", [1, 17, 64, 70])
def test_int8_spmm_into_accumulates(block, N):
    """The int8 kernel's store adds to out: exactly out + (what it stores without accumulate)."""
    from sparsebench.spmm import spmm_into
    W, _ = random_pruned(45, 52, block, 0.7, seed=N, empty_block_rows=0.2)
    Aq = sb.QuantizedBSRMatrix.from_dense(W, block)
    X = random_x(52, N, seed=N)
    bias = np.random.default_rng(4).standard_normal(45).astype(np.float32)
    R = random_x(45, N, seed=9)
    for cfg in sb.kernel_configs(Aq, N, threads=2):
        for b in (None, bias):
            plain = np.empty((45, N), np.float32)
            spmm_into(Aq, X, cfg, plain, b)
            out = R.copy()
            spmm_into(Aq, X, cfg, out, b, accumulate=True)
            np.testing.assert_array_equal(out, R + plain, err_msg=f"{cfg} bias={b is not None}")


def test_accumulate_takes_no_activation():
    from sparsebench.spmm import spmm_into
    W, A = random_pruned(8, 8, (4, 1), 0.5)
    X = random_x(8, 4)
    with pytest.raises(ValueError, match="accumulate takes no activation"):
        spmm_into(A, X, sb.default_config(A, 4), np.zeros((8, 4), np.float32), activation="gelu", accumulate=True)
