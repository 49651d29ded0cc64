"""spmm's token-major entry (X tokens x features, Y tokens x outputs: PyTorch's layout) and the
pool's transpose under it: the same bits as the feature-major call, for every block and dtype;
the pool's row copy, and spmm staging a numpy X onto its huge pages with it."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsebench as sb
from sparsebench import cpu
from conftest import SUPPORTED_BLOCKS, examples, random_x
from sparsebench.spmm import panel_tasks, panel_width, reads_tokens

INT8 = bool(cpu.available_isas("int8"))


@pytest.mark.parametrize("isa", cpu.available_isas())
@pytest.mark.parametrize("rows, cols", [(0, 5), (5, 0), (1, 1), (7, 9), (8, 8), (33, 17), (129, 770)])
def test_transpose_every_isa_with_edges_and_strides(isa, rows, cols):
    assert_transposes(isa, random_x(rows, cols + 3)[:, 1:cols + 1])


@pytest.mark.parametrize("isa", cpu.available_isas())
@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 70), cols=st.integers(1, 90), offset=st.integers(0, 15), lines=st.integers(0, 2))
def test_transpose_of_rows_whole_lines_apart_from_any_start(isa, rows, cols, offset, lines):
    """Rows a multiple of 16 floats apart, from any float of a line (numpy's start is 16 bytes
    into one): the columns before the first line boundary go their own way."""
    width = 16 * ((offset + cols + 15) // 16 + lines)
    assert_transposes(isa, random_x(rows, width)[:, offset:offset + cols])


def assert_transposes(isa, src):
    """The pool's transpose of src into a strided dst: src.T exactly, nothing written outside dst."""
    rows, cols = src.shape
    big = np.full((cols + 2, rows + 4), np.nan, np.float32)
    dst = big[1:cols + 1, 2:rows + 2]
    cpu.kernel_module(isa).transpose(src, dst, 2)
    assert np.array_equal(dst, src.T)
    big[1:cols + 1, 2:rows + 2] = 0
    assert np.isnan(big).sum() == big.size - rows * cols          # nothing written outside dst


def test_transpose_refuses_bad_arguments():
    t = cpu.kernel_module(cpu.best_isa()).transpose
    a = np.zeros((4, 6), np.float32)
    for src, dst, msg in [(a, np.zeros((4, 6), np.float32), "shape reversed"),
                          (a, np.zeros((6, 4), np.float64), "float32"),
                          (a, a.T, "contiguous"),
                          (a, np.zeros((6, 4), np.float32)[::-1], "contiguous")]:
        with pytest.raises(ValueError, match=msg):
            t(src, dst, 1)
    buf = np.zeros(48, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        t(buf[:24].reshape(4, 6), buf[10:34].reshape(6, 4), 1)


@pytest.mark.parametrize("isa", cpu.available_isas())
@pytest.mark.parametrize("rows, cols", [(0, 5), (5, 0), (1, 1), (33, 17), (129, 770)])
def test_copy_rows_every_isa_with_edges_and_strides(isa, rows, cols):
    src = random_x(rows, cols + 3)[:, 1:cols + 1]
    big = np.full((rows + 2, cols + 4), np.nan, np.float32)
    dst = big[1:rows + 1, 2:cols + 2]
    cpu.kernel_module(isa).copy_rows(src, dst, 2)
    assert np.array_equal(dst, src)
    big[1:rows + 1, 2:cols + 2] = 0
    assert np.isnan(big).sum() == big.size - rows * cols          # nothing written outside dst


def test_copy_rows_refuses_bad_arguments():
    c = cpu.kernel_module(cpu.best_isa()).copy_rows
    a = np.zeros((4, 6), np.float32)
    for dst, msg in [(np.zeros((6, 4), np.float32), "src's shape"), (np.zeros((4, 6), np.float64), "float32"),
                     (np.zeros((6, 4), np.float32).T, "contiguous")]:
        with pytest.raises(ValueError, match=msg):
            c(a, dst, 1)
    buf = np.zeros(48, np.float32)
    with pytest.raises(ValueError, match="overlap"):
        c(buf[:24].reshape(4, 6), buf[10:34].reshape(4, 6), 1)


@pytest.mark.parametrize("n", [128, 131])
def test_a_numpy_x_is_staged_with_the_same_bits(n):
    spmm = __import__("sparsebench.spmm", fromlist=["stages"])
    rng = np.random.default_rng(n)
    K = spmm.STAGE_MIN_BYTES // (4 * n) + 7
    A = sb.BSRMatrix.from_dense(sb.prune(rng.standard_normal((40, K), dtype=np.float32), 0.9, (1, 1)), (1, 1))
    wide = rng.standard_normal((K, n + 5), dtype=np.float32)
    X = wide[:, 2:n + 2]                                     # numpy's pages, row-strided
    Xh = sb.empty((K, n))
    Xh[...] = X
    assert spmm.stages(A, X) and not spmm.stages(A, Xh) and not spmm.stages(A, X[:K // 2])
    assert not spmm.stages(sb.BSRMatrix.from_dense(np.zeros((40, K), np.float32), (4, 1)), X)
    before = wide.copy()
    for threads in (1, 2):
        config = sb.default_config(A, n, threads)
        assert np.array_equal(sb.spmm(A, X, config), sb.spmm(A, Xh, config))
    assert np.array_equal(wide, before)
    np.testing.assert_allclose(sb.spmm(A, X), A.to_dense().astype(np.float64) @ X, rtol=1e-4, atol=1e-3)


def _matrix(W, block, dtype):
    if dtype == "dense":                         # every block stored: the dense variants
        return sb.BSRMatrix.from_dense(W, block, keep_zero_blocks=True)
    return sb.BSRMatrix.from_dense(W, block) if dtype == "float32" else sb.QuantizedBSRMatrix.from_dense(W, block)


CASES = [(b, "float32") for b in SUPPORTED_BLOCKS] + [((4, 1), "dense"), ((8, 1), "dense")] + (
    [(b, "int8") for b in [(4, 1), (8, 1), (16, 1), (4, 4), (1, 4)]] if INT8 else [])


@pytest.mark.parametrize("block, dtype", CASES, ids=lambda v: str(v))
def test_token_major_equals_feature_major_bitwise(block, dtype):
    M, K, N = 45, 67, 29
    W = random_x(M, K, seed=3) if dtype == "dense" else sb.prune(random_x(M, K, seed=3), 0.6, block)
    A = _matrix(W, block, dtype)
    assert A.dtype == "int8" or A.is_dense == (dtype == "dense")
    Xt = random_x(N, K, seed=4)
    bias = random_x(M, 1, seed=5)[:, 0].copy()
    for cfg in sb.kernel_configs(A, N, threads=2)[::5]:
        Yf = sb.spmm(A, np.ascontiguousarray(Xt.T), cfg, bias=bias, activation="gelu")
        big = np.full((N + 2, M + 3), -7.0, np.float32)
        out = big[1:N + 1, 1:M + 1]
        Yt = sb.spmm(A, Xt, cfg, out=out, bias=bias, activation="gelu", layout="tokens")
        assert Yt is out and np.array_equal(Yt, Yf.T), str(cfg)
        big[1:N + 1, 1:M + 1] = -7.0
        assert np.all(big == -7.0), "wrote outside out"


@pytest.mark.parametrize("block", SUPPORTED_BLOCKS)
def test_panel_tasks_transposing_their_own_tokens_give_the_same_bits(block):
    """Configs with an n_panel (one tile, several, N split over the threads): each task
    transposes its tokens (remainder panel included) in 16-column blocks of 8x8 tiles (features
    past the last block too), and stores Y in groups of rows (rows past the last 8 of a group
    too); without, X is transposed whole first; K not a multiple of the block's columns takes
    that path too."""
    for M, K in ((40, 96), (45, 100), (45, 67)):
        W = sb.prune(random_x(M, K, seed=K), 0.6, block)
        A = sb.BSRMatrix.from_dense(W, block)
        for N in (128, 131):
            Xt = random_x(N, K, seed=N)
            configs = [c for c in sb.kernel_configs(A, N, threads=2, layout="tokens") if not c.k_slice]
            panels = {c.n_panel for c in configs if panel_tasks(A, c)}
            assert (len(panels) > 2) == (K % block[1] == 0), panels
            for cfg in configs[::3] + [c for c in configs if c.n_panel and not c.prefetch]:
                want = sb.spmm(A, np.ascontiguousarray(Xt.T), cfg, activation="gelu")
                got = sb.spmm(A, Xt, cfg, activation="gelu", layout="tokens")
                assert np.array_equal(got, want.T), str(cfg)


@pytest.mark.skipif(not INT8, reason="this CPU (or build) has no AVX512-VNNI kernels")
@pytest.mark.parametrize("block", [(4, 1), (8, 1), (16, 1), (4, 4), (1, 4)])
def test_int8_token_major_stores_and_packs_give_the_same_bits(block):
    """Several 64-token tiles and a remainder; groups of 16 outputs (16x16 blocks into Y) and a
    partial last group; features past the last 64 and 16: quantized from token-major X and
    stored token-major, the same bits as the feature-major call."""
    for M, K in ((48, 128), (45, 100)):
        A = sb.QuantizedBSRMatrix.from_dense(sb.prune(random_x(M, K, seed=K), 0.6, block), block)
        for N in (64, 130, 200):
            Xt = random_x(N, K, seed=N)
            bias = random_x(M, 1, seed=M)[:, 0].copy()
            for cfg in sb.kernel_configs(A, N, threads=2):
                want = sb.spmm(A, np.ascontiguousarray(Xt.T), cfg, bias=bias, activation="gelu")
                got = sb.spmm(A, Xt, cfg, bias=bias, activation="gelu", layout="tokens")
                assert np.array_equal(got, want.T), str(cfg)


@pytest.mark.parametrize("isa", cpu.available_isas())
def test_the_direct_kernel_reads_tokens_as_they_are(isa):
    """Blocks of one vector of outputs (VW x 1), a tile of one vector: X and Y token-major with no
    scratch, tokens in tiles of 8 (remainders 1..7), a partial last block row, bias and GELU, 1
    and 2 threads: the feature-major bits."""
    module = cpu.kernel_module(isa)
    vw = module.VECTOR_WIDTH
    for M, K, sparsity in ((vw, 3, 0.4), (5 * vw - 3, 70, 0.6)):
        A = sb.BSRMatrix.from_dense(sb.prune(random_x(M, K, seed=M), sparsity, (vw, 1)), (vw, 1))
        assert A.nnz_blocks and not A.is_dense
        bias = random_x(M, 1, seed=K)[:, 0].copy()
        for N in (1, 7, 8, 9, 130):
            Xt = random_x(N, K, seed=N)
            for threads in (1, 2):
                cfg = sb.KernelConfig((vw, 1), isa, vw, threads=threads)
                assert reads_tokens(A, cfg)
                want = sb.spmm(A, np.ascontiguousarray(Xt.T), cfg, bias=bias, activation="gelu")
                got = sb.spmm(A, Xt, cfg, bias=bias, activation="gelu", layout="tokens")
                assert np.array_equal(got, want.T), (M, K, N, threads)
    _, vid, nslices, data, indices, ptr, bounds, _ = A._plans[cfg]
    Xt, Yt = random_x(9, K), np.zeros((9, M), np.float32)
    module.run_direct(data, indices, ptr, bounds, Xt, Yt, M, K, 2)
    both = np.zeros((9, M + K), np.float32)                  # Yt overlapping Xt
    with pytest.raises(ValueError, match="apart from Xt"):
        module.run_direct(data, indices, ptr, bounds, both[:, :K], both[:, K - 1:K - 1 + M], M, K, 2)
    for bad, what in (((data, indices, ptr, bounds, Xt, Yt[:, :-1], M, K, 2), "Yt must be"),
                      ((data, indices, ptr, bounds, Xt[:, :0], Yt, M, K, 2), "a column for every column"),
                      ((data, indices, ptr[:-1], bounds, Xt, Yt, M, K, 2), "indptr"),
                      ((data[:0], indices, ptr, bounds, Xt, Yt, M, K, 2), "data"),
                      ((data, indices, ptr, bounds.reshape(1, -1), Xt, Yt, M, K, 2), "bounds"),
                      ((data, indices, ptr, None, Xt, Yt, M, K, 2), "bounds")):
        with pytest.raises(ValueError, match=what):
            module.run_direct(*bad)


def test_run_takes_any_panel_width():
    """run() clamps the panel to N: a huge panel is one task, never an overflowed task count."""
    A = sb.BSRMatrix.from_dense(sb.prune(random_x(12, 16, seed=1), 0.5, (4, 1)), (4, 1))
    Xt = random_x(9, 16, seed=2)
    config = sb.default_config(A, 9, 2)
    want = sb.spmm(A, np.ascontiguousarray(Xt.T), config)
    _, vid, nslices, data, indices, ptr, bounds, _ = A._plans[config]
    module = cpu.kernel_module(config.isa)
    X = np.zeros((16, module.panel_ld(9)), np.float32)          # one panel of all 9 tokens
    Y, Yt = np.zeros((12, 9), np.float32), np.zeros((9, 12), np.float32)
    module.run(vid, data, indices, ptr, bounds, X, Y, 12, 2**31 - 1, 0, 2, 16, None, 0, nslices, Yt, Xt)
    assert np.array_equal(Yt, want.T)
    ld = module.panel_ld(4)                                    # panels of 4 tokens: 3 of them
    module.run(vid, data, indices, ptr, bounds, np.zeros((48, ld), np.float32), Y, 12, 4, 0, 2, 16, None, 0,
               nslices, Yt, Xt)
    assert np.array_equal(Yt, want.T)
    readonly = np.zeros((48, ld), np.float32)
    readonly.flags.writeable = False
    for bad in (np.zeros((47, ld), np.float32), np.zeros((48, ld + 16), np.float32), readonly,
                np.zeros((48, ld), np.float32)[:, :3]):
        with pytest.raises(ValueError, match="X must be the writeable scratch of the panels"):
            module.run(vid, data, indices, ptr, bounds, bad, Y, 12, 4, 0, 2, 16, None, 0, nslices, Yt, Xt)


@pytest.mark.parametrize("panel, ld", [(8, 16), (16, 16), (24, 48), (32, 48), (48, 48), (64, 80), (96, 112),
                                       (128, 144)])
def test_panel_rows_are_an_odd_number_of_cache_lines(panel, ld):
    """Each panel's rows of the scratch: whole lines, an odd count of them, so their starts
    cover every cache set (64 tokens in rows 5 lines apart ran 1.20x the feature-major time
    where 4 and 8 lines ran 1.36x and 1.28x, and as 2.2x in some processes)."""
    for isa in cpu.available_isas():
        assert cpu.kernel_module(isa).panel_ld(panel) == ld


@settings(max_examples=examples(60), deadline=None)
@given(m=st.integers(1, 60), k=st.integers(1, 80), n=st.integers(0, 70),
       block=st.sampled_from(SUPPORTED_BLOCKS))
def test_random_token_major_problems_match_the_reference(m, k, n, block):
    W = sb.prune(random_x(m, k, seed=m + k), 0.5, block)
    Xt = random_x(n, k, seed=n)
    Y = sb.spmm(sb.BSRMatrix.from_dense(W, block), Xt, layout="tokens")
    ref = Xt.astype(np.float64) @ W.T.astype(np.float64)
    assert Y.shape == (n, m)
    assert np.abs(Y - ref).max(initial=0) <= 1e-5 * (np.abs(Xt) @ np.abs(W.T)).max(initial=1) + 1e-6


@settings(max_examples=examples(40), deadline=None)
@given(m=st.integers(1, 70), k=st.integers(1, 90), n=st.integers(1, 300), block=st.sampled_from(SUPPORTED_BLOCKS),
       pick=st.integers(0, 10 ** 6), threads=st.integers(1, 3))
def test_random_configs_on_token_major_x_give_the_feature_major_bits(m, k, n, block, pick, threads):
    """Any config (panel tasks with every n_tile and a remainder panel, their scratch rows
    panel_ld apart; or the pool's transpose first), any thread count: the feature-major bits."""
    A = sb.BSRMatrix.from_dense(sb.prune(random_x(m, k, seed=m * k), 0.5, block), block)
    Xt = random_x(n, k, seed=n)
    configs = sb.kernel_configs(A, n, threads=threads)
    cfg = configs[pick % len(configs)]
    want = sb.spmm(A, np.ascontiguousarray(Xt.T), cfg)
    assert np.array_equal(sb.spmm(A, Xt, cfg, layout="tokens"), want.T), str(cfg)


def test_token_major_errors_are_clear():
    A = sb.BSRMatrix.from_dense(random_x(8, 6), (4, 1))
    with pytest.raises(ValueError, match="layout must be"):
        sb.spmm(A, random_x(6, 3), layout="columns")
    with pytest.raises(ValueError, match="has 5 columns"):
        sb.spmm(A, random_x(3, 5), layout="tokens")
    with pytest.raises(ValueError, match=r"needs \(3, 8\)"):
        sb.spmm(A, random_x(3, 6), out=np.zeros((8, 3), np.float32), layout="tokens")
    X = random_x(3, 8)
    with pytest.raises(ValueError, match="overlap"):
        sb.spmm(A, X[:, :6], out=X, layout="tokens")


def test_token_major_bias_is_checked():
    A = sb.BSRMatrix.from_dense(random_x(8, 6), (4, 1))
    with pytest.raises(ValueError, match=r"bias must be a contiguous float32 array of shape \(8,\)"):
        sb.spmm(A, random_x(3, 6), bias=np.zeros(9, np.float32), layout="tokens")


def test_default_token_major_config_runs_panel_tasks_where_each_thread_gets_one():
    """The heuristic runs panel tasks of one tile wherever N gives each thread a panel, else X
    is transposed whole first; never with K slices, where panel tasks cannot run; feature-major
    keeps no panel."""
    for block in ((4, 1), (1, 1)):
        A = sb.BSRMatrix.from_dense(sb.prune(random_x(64, 256, seed=3), 0.7, block), block)
        for threads in (1, 2):
            for n in (8, 100, 128, 384, 1024):
                cfg = sb.default_config(A, n, threads, "tokens")
                fits = panel_width(dataclasses.replace(cfg, n_panel=cfg.n_tile), n) > 0
                assert cfg.n_panel == (cfg.n_tile if fits and not cfg.k_slice else 0), (block, n, cfg)
                assert panel_tasks(A, cfg) == bool(cfg.n_panel)
                assert sb.default_config(A, n, threads).n_panel == 0
        assert bool(sb.default_config(A, 128, 2, "tokens").n_panel) == (block == (4, 1))     # 1x1: K slices
    A = sb.BSRMatrix.from_dense(sb.prune(random_x(64, 256, seed=3), 0.7, (4, 1)), (4, 1))
    # 100 tokens on 2 threads: panels of 64 and 36; 8 tokens (a tile of 16): one panel on 1 thread,
    # none on 2 (a matrix large enough for the default to keep 2 threads at N = 8)
    assert [sb.default_config(A, n, t, "tokens").n_panel for n, t in ((128, 2), (100, 2), (8, 1))] == [64, 64, 16]
    big = sb.BSRMatrix.from_dense(sb.prune(random_x(768, 768, seed=4), 0.7, (4, 1)), (4, 1))
    cfg = sb.default_config(big, 8, 2, "tokens")
    assert (cfg.threads, cfg.n_tile, cfg.n_panel) == (2, 16, 0)


def test_default_token_major_config_leaves_the_direct_kernel_when_x_outgrows_l1(monkeypatch):
    """The heuristic's token-major config runs the direct kernel while the rows of X it reads at
    once (DIRECT_TOKENS tokens, or all of N if fewer) fit in L1 (the CPU's, 32 KB when it does
    not say), panel tasks of two vectors beyond; feature-major is unchanged."""
    from sparsebench import dispatch
    isa = cpu.available_isas()[0]
    module = cpu.kernel_module(isa)
    vw, dt = module.VECTOR_WIDTH, module.DIRECT_TOKENS
    probe = sb.BSRMatrix.from_dense(sb.prune(random_x(4 * vw, 64, seed=1), 0.5, (vw, 1)), (vw, 1))
    if sb.default_config(probe, 128, 2).n_tile != vw:
        pytest.skip(f"the {isa} default tile for {vw}x1 blocks is not one vector: no direct kernel")
    for l1 in (None, 48 * 1024):
        caches = {**dispatch.cpu_identity()["caches"], "L1d": l1}
        monkeypatch.setattr(dispatch, "cpu_identity", lambda: {"caches": caches})
        for n in (128, 3):
            fits = (l1 or dispatch.L1_BYTES) // (4 * min(n, dt))      # the largest K whose rows fit
            for K, direct in ((fits, True), (fits + 1, False)):
                A = sb.BSRMatrix.from_dense(sb.prune(random_x(4 * vw, K, seed=K), 0.5, (vw, 1)), (vw, 1))
                tokens = sb.default_config(A, n, 2, "tokens")
                assert reads_tokens(A, tokens) == direct and tokens.n_tile == (vw if direct else 2 * vw)
                # panels of two vectors, where N gives each thread one (n = 3: X transposed whole)
                assert tokens.n_panel == (2 * vw if not direct and n == 128 else 0)
                assert sb.default_config(A, n, 2).n_tile == vw
                Xt = random_x(n, K, seed=1)
                np.testing.assert_array_equal(sb.spmm(A, Xt, layout="tokens"),
                                              sb.spmm(A, np.ascontiguousarray(Xt.T), tokens).T)


def test_scratch_views_are_reused_per_shape_and_never_outlive_a_regrown_buffer():
    """spmm's per-thread scratch (_buffer): the same view for the same shape (calls of one layer
    skip the reshaping); after a larger request grows the buffer, a call of the first shape gets
    a view of the new buffer; another thread gets its own."""
    import threading
    import importlib
    spmm_module = importlib.import_module("sparsebench.spmm")
    a = spmm_module._buffer("test", 3, 5)
    assert spmm_module._buffer("test", 3, 5) is a and a.shape == (3, 5)
    big = spmm_module._buffer("test", 300, 1000, 1024)
    assert big.shape == (300, 1000) and big.strides[0] == 4096
    again = spmm_module._buffer("test", 3, 5)
    assert again is not a and np.shares_memory(again, big)
    other = []
    thread = threading.Thread(target=lambda: other.append(spmm_module._buffer("test", 3, 5)))
    thread.start()
    thread.join()
    assert not np.shares_memory(other[0], big)
