"""INT8 (AVX512-VNNI) kernels: quantization, exactness against an integer reference, error
against float32, remainders, saturation, bad input and CPUs without VNNI.

Exactness: the kernels compute acc = sum_k Wq[r, k] * (U[k, n] - 128) in 32-bit integers and
store fl32(fl32(acc) * s_rn) with s_rn = fl32(scale[r] * x_scales[n]) (or the fused
multiply-add with the bias). For |acc| < 2**24 the conversion is exact, and the float64 product
acc * s_rn is too, so without bias the result must equal (acc * s_rn).astype(float32) bit for
bit; with a bias it must be within one float32 ulp (the float64 reference rounds twice).

Error against float32 (module `int8_bound`): |w - s_r q| <= s_r / 2 and |x - s_n (u - 128)|
<= s_n / 2 (0.501 allows for the float32 rounding of w / s_r and x / s_n), so elementwise

    |Y - W @ X| <= 0.501 s_n sum_k |w_k| + 0.501 s_r sum_k (|x_k| + 0.501 s_n)   (k: w_k != 0)

plus float32 rounding of the epilogue. For random normal data this is ~4% of max |Y|; the
measured error is ~1% and we document (and test, on seeded BERT-sized data) <= 2% of max |Y|.
"""
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsebench as sb
from sparsebench import cpu
from sparsebench.config import check_config, variant_id
from sparsebench.quant import INT8_BLOCKS, LAYOUTS, MAX_K
from conftest import examples, seeds

HAS_VNNI = bool(cpu.available_isas("int8"))
needs_vnni = pytest.mark.skipif(not HAS_VNNI, reason="this CPU (or build) has no AVX512-VNNI kernels")
block_ids = lambda b: "%dx%d" % b          # noqa: E731


# -- helpers ------------------------------------------------------------------------------------

def pruned(M, K, block, sparsity, seed=0, empty_block_rows=0.0):
    """A random float32 W block-pruned to `sparsity` (some whole block rows zeroed), and its
    quantized matrix."""
    rng = np.random.default_rng(seed)
    W = sb.prune(rng.standard_normal((M, K)).astype(np.float32), sparsity=sparsity, block=block)
    br = block[0]
    for i in np.flatnonzero(rng.random(-(-M // br)) < empty_block_rows):
        W[i * br:(i + 1) * br] = 0
    return W, sb.QuantizedBSRMatrix.from_dense(W, block)


def normal_x(K, N, seed=1):
    return np.random.default_rng(seed).standard_normal((K, N)).astype(np.float32)


def accumulators(Aq, Xq):
    """The exact integer sums sum_k Wq[r, k] (U[k, n] - 128), int64, and the float32 scale
    product of each output (row scale x column scale, as float64)."""
    acc = Aq.to_int8().astype(np.int64) @ (Xq.to_uint8().astype(np.int64) - 128)
    s = (Aq.scales[:, None] * Xq.scales[None, :]).astype(np.float64)
    return acc, s


def assert_exact(Y, Aq, Xq, bias=None, context=""):
    """Y equals the integer reference, dequantized (see module docstring)."""
    acc, s = accumulators(Aq, Xq)
    assert Y.dtype == np.float32 and Y.shape == acc.shape, context
    assert np.abs(acc).max(initial=0) < 2 ** 24, "test data too large for an exact float32 check"
    ref = acc * s
    if bias is None:
        np.testing.assert_array_equal(Y, ref.astype(np.float32), err_msg=context)
    else:
        ref = (ref + bias[:, None]).astype(np.float32)
        bad = np.abs(Y - ref) > np.spacing(np.abs(ref))
        assert not bad.any(), f"{context}: {bad.sum()} entries more than 1 ulp off, e.g. " \
                              f"{Y[bad][:3]} vs {ref[bad][:3]}"


def int8_bound(W, X, Aq, x_scale):
    """Elementwise bound on |Y_int8 - W @ X| (module docstring); x_scale: one per column."""
    W64, X64 = W.astype(np.float64), np.abs(X.astype(np.float64))
    stored = (W != 0).astype(np.float64)
    s_r = Aq.scales.astype(np.float64)[:, None]
    quant = 0.501 * x_scale * (np.abs(W64) @ np.ones_like(X64)) \
        + 0.501 * s_r * (stored @ (X64 + 0.501 * x_scale))
    return quant + 2.0 ** -21 * (np.abs(W64) @ X64)


def every_config(Aq, n):
    return [c for t in (1, 2) for c in sb.kernel_configs(Aq, n, threads=t)]


# -- weight quantization (needs no VNNI) ------------------------------------------------------------

@pytest.mark.parametrize("block", INT8_BLOCKS, ids=block_ids)
def test_weight_quantization_is_symmetric_per_row(block):
    W, Aq = pruned(37, 29, block, 0.6, seed=3, empty_block_rows=0.2)
    amax = np.abs(W).max(axis=1)
    expect = np.where(amax > 0, amax / np.float32(127), 1).astype(np.float32)
    np.testing.assert_array_equal(Aq.scales, expect)
    Wq = Aq.to_int8()
    assert Wq.dtype == np.int8 and Wq.shape == W.shape
    np.testing.assert_array_equal(Wq, np.clip(np.rint(W / expect[:, None]), -127, 127))
    assert np.all(np.abs(Aq.to_dense() - W) <= 0.501 * expect[:, None])
    # every row's largest weight maps to +-127, zero rows stay zero
    nonzero = amax > 0
    assert np.all(np.abs(Wq[nonzero]).max(axis=1) == 127)
    assert not Wq[~nonzero].any()


@pytest.mark.parametrize("block", INT8_BLOCKS, ids=block_ids)
@settings(max_examples=examples(25), deadline=None)
@given(M=st.integers(1, 40), K=st.integers(1, 70), sparsity=st.sampled_from([0.0, 0.5, 0.9, 1.0]),
       seed=seeds)
def test_blocks_and_groups_round_trip(block, M, K, sparsity, seed):
    """Any pattern (4x1 rows with block counts not a multiple of 4 included) survives
    grouping: to_int8 gives the quantized weights back, and the structure counts add up."""
    rng = np.random.default_rng(seed)
    Wq = rng.integers(-128, 128, size=(M, K)).astype(np.int8)
    br, bc = block
    keep = rng.random((-(-M // br), -(-K // bc))) >= sparsity
    Wq *= np.kron(keep, np.ones(block, np.int8))[:M, :K]
    scales = rng.uniform(0.1, 2, M).astype(np.float32)
    Aq = sb.QuantizedBSRMatrix(Wq, scales, block)
    np.testing.assert_array_equal(Aq.to_int8(), Wq)
    np.testing.assert_array_equal(Aq.scales, scales)
    blocks = sb.BSRMatrix.from_dense(Wq.astype(np.float32), block)
    assert Aq.nnz_blocks == blocks.nnz_blocks and Aq.density == pytest.approx(blocks.density)
    groups = np.diff(Aq._gptr)
    row_blocks = np.diff(blocks.indptr)
    assert np.array_equal(groups, -(-row_blocks // 4) if bc == 1 else row_blocks)
    if bc == 1:     # padding blocks are zero and point at a column the row already reads
        members = Aq._indices_padded[:4 * groups.sum()].reshape(-1, 4)
        assert np.all(members >= 0) and np.all(members < K)
    # comp: 128 * row sums of the weights
    np.testing.assert_array_equal(Aq._comp[:M], 128 * Wq.astype(np.int64).sum(axis=1))


def test_quantized_matrix_is_immutable_and_pickles():
    W, Aq = pruned(12, 16, (4, 1), 0.5)
    with pytest.raises(AttributeError, match="immutable"):
        Aq.block = (4, 4)
    assert not Aq._data.flags.writeable and not Aq.scales.flags.writeable
    B = pickle.loads(pickle.dumps(Aq))
    assert B.shape == Aq.shape and B.block == Aq.block
    np.testing.assert_array_equal(B.to_int8(), Aq.to_int8())
    np.testing.assert_array_equal(B.scales, Aq.scales)
    assert "QuantizedBSRMatrix 12x16 int8, block 4x1" in repr(Aq)


def test_bad_weights_are_refused():
    W = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match=r"no int8 kernels for 1x1 blocks; int8 blocks: 4x1, 8x1, 16x1, 4x4, 1x4"):
        sb.QuantizedBSRMatrix.from_dense(W, (1, 1))
    W[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"W\[2, 3\] = nan: int8 quantization needs finite weights"):
        sb.QuantizedBSRMatrix.from_dense(W, (4, 1))
    with pytest.raises(TypeError, match="real numeric"):
        sb.QuantizedBSRMatrix.from_dense(np.ones((4, 4), complex), (4, 1))
    with pytest.raises(ValueError, match="2-D"):
        sb.QuantizedBSRMatrix.from_dense(np.ones(4), (4, 1))
    ones = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"must fit int8 \[-128, 127\], got \[0, 200\]"):
        sb.QuantizedBSRMatrix(np.array([[0, 200]] * 4, np.int16), ones, (4, 1))
    with pytest.raises(ValueError, match="2-D integer matrix"):
        sb.QuantizedBSRMatrix(np.ones((4, 4), np.float32), ones, (4, 1))
    with pytest.raises(ValueError, match=r"scales must be a float array of shape \(4,\)"):
        sb.QuantizedBSRMatrix(np.ones((4, 4), np.int8), np.ones(3, np.float32), (4, 1))
    with pytest.raises(ValueError, match="finite and positive"):
        sb.QuantizedBSRMatrix(np.ones((4, 4), np.int8), np.array([1, 1, 0, 1], np.float32), (4, 1))
    with pytest.raises(ValueError, match=f"K={MAX_K + 1} is too large .* exact only up to K={MAX_K}"):
        sb.QuantizedBSRMatrix(np.zeros((1, MAX_K + 1), np.int8), np.ones(1, np.float32), (1, 4))


# -- KernelConfig with dtype ----------------------------------------------------------------------

def test_config_dtype_round_trips_and_float32_records_are_unchanged():
    cfg = sb.KernelConfig((4, 1), "avx512vnni", 64, m_tile=4, prefetch=16, threads=2, dtype="int8")
    assert cfg.to_dict()["dtype"] == "int8"
    assert sb.KernelConfig.from_json(cfg.to_json()) == cfg
    assert str(cfg) == "int8/avx512vnni/b4x1/nt64/np0/ks0/mt4/pf16/t2"
    f32 = sb.KernelConfig((4, 1), "avx512", 64)
    assert "dtype" not in f32.to_dict() and f32.dtype == "float32"
    assert sb.KernelConfig.from_dict({**f32.to_dict(), "dtype": "float32"}) == f32
    assert cfg != sb.KernelConfig((4, 1), "avx512vnni", 64, m_tile=4, prefetch=16, threads=2)


def test_configs_of_the_wrong_dtype_are_refused():
    W, Aq = pruned(16, 16, (4, 1), 0.5)
    A = sb.BSRMatrix.from_dense(W, (4, 1))
    with pytest.raises(sb.ConfigError, match=r"config is for float32 kernels but the matrix is a "
                                             r"QuantizedBSRMatrix \(int8\)"):
        check_config(sb.KernelConfig((4, 1), "avx512", 16), Aq)
    with pytest.raises(sb.ConfigError, match=r"config is for int8 kernels but the matrix is a BSRMatrix"):
        sb.spmm(A, normal_x(16, 8), config=sb.KernelConfig((4, 1), "avx512vnni", 64, dtype="int8"))
    with pytest.raises(sb.ConfigError, match="unknown dtype 'float16'"):
        variant_id(sb.KernelConfig((4, 1), "avx512", 16, dtype="float16"))


# -- CPUs without VNNI ------------------------------------------------------------------------------

def test_without_vnni_int8_raises_a_clear_error(no_cpu_features):
    W, Aq = pruned(16, 16, (4, 4), 0.5)              # quantizing weights needs no VNNI
    X = normal_x(16, 8)
    msg = r"the int8 'avx512vnni' kernels need .*avx512vnni.* which this CPU \(.*\) lacks; " \
          r"quantized matrices need a CPU with AVX512-VNNI; use a float32 BSRMatrix here"
    with pytest.raises(sb.UnsupportedISAError, match=msg):
        sb.spmm(Aq, X)
    with pytest.raises(sb.UnsupportedISAError, match=msg):
        sb.kernel_configs(Aq, 8)
    with pytest.raises(sb.UnsupportedISAError, match=msg):
        sb.quantize_activations(X, (4, 4))
    with pytest.raises(sb.UnsupportedISAError, match=msg):
        sb.spmm(Aq, X, config=sb.KernelConfig((4, 4), "avx512vnni", 64, dtype="int8"))
    assert cpu.available_isas("int8") == []
    # the float32 kernels still work
    assert np.allclose(sb.spmm(sb.BSRMatrix.from_dense(W, (4, 4)), X), W @ X, atol=1e-4)


def test_without_vnni_in_the_build_says_so(clean_cpu_caches):
    clean_cpu_caches.setitem(cpu.BUILD, "int8_isas", [])
    with pytest.raises(sb.UnsupportedISAError, match=r"this build of sparsebench has no int8 "
                                                     r"'avx512vnni' kernels \(built: none\)"):
        cpu.best_isa("int8")


# -- activation quantization -------------------------------------------------------------------

@needs_vnni
@pytest.mark.parametrize("block", INT8_BLOCKS, ids=block_ids)
@pytest.mark.parametrize("K, N", [(0, 5), (6, 0), (1, 1), (3, 15), (4, 16), (5, 17), (9, 63), (16, 64), (7, 65),
                                  (33, 130), (768, 128)])
def test_activation_quantization_and_packing(block, K, N):
    X = normal_x(K, N, seed=K + N) * 3
    for threads in (1, 2):
        Xq = sb.quantize_activations(X, block, threads=threads)
        scale = np.abs(X).max(axis=0, initial=0) / np.float32(127)      # per column (token)
        scale[scale == 0] = 1
        np.testing.assert_array_equal(Xq.scales, scale)
        assert Xq.shape == (K, N) and Xq.layout == LAYOUTS[block]
        U = np.clip(np.rint(X * (np.float32(1) / scale)), -127, 127).astype(np.int64) + 128
        np.testing.assert_array_equal(Xq.to_uint8(), U)
        # the C packer and the numpy one (from_uint8) agree byte for byte, padding included
        ref = sb.QuantizedActivations.from_uint8(U.astype(np.uint8), scale, block)
        np.testing.assert_array_equal(Xq._packed, ref._packed)
        assert Xq._packed.size == 0 or Xq._packed.ctypes.data % 64 == 0
        assert np.all(np.abs(Xq.to_float() - X) <= 0.501 * scale)


@needs_vnni
@pytest.mark.parametrize("block", [(4, 1), (4, 4)], ids=block_ids)
def test_calibrated_scale_saturates(block):
    X = np.array([[-1e30, -300.0, -1.0, -0.25, 0.0, 0.25, 1.0, 300.0, 1e30, 3.4e38]], np.float32)
    Xq = sb.quantize_activations(X, block, scale=0.5)
    assert np.all(Xq.scales == 0.5)
    np.testing.assert_array_equal(Xq.to_uint8()[0].astype(int) - 128, [-127, -127, -2, 0, 0, 0, 2, 127, 127, 127])
    Xz = sb.quantize_activations(np.zeros((5, 3), np.float32), block)
    assert np.all(Xz.scales == 1.0) and np.all(Xz.to_uint8() == 128)


@needs_vnni
@pytest.mark.parametrize("scale", [None, 0.1])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("layout", ["features", "tokens"])
def test_non_finite_activations_are_refused(scale, bad, layout):
    X = normal_x(40, 70)
    X[37, 66] = bad
    if layout == "tokens":
        X = np.ascontiguousarray(X.T)
    for block in ((4, 1), (4, 4)):
        with pytest.raises(ValueError, match="X holds inf or NaN: int8 quantization needs finite"):
            sb.quantize_activations(X, block, scale=scale, layout=layout)
        _, Aq = pruned(8, 40, block, 0.5)
        with pytest.raises(ValueError, match="X holds inf or NaN"):
            sb.spmm(Aq, X, layout=layout)


@needs_vnni
def test_bad_activation_arguments_are_refused():
    X = normal_x(8, 4)
    for scale in (0, -1, np.inf, np.nan, 1e-39, "big"):
        with pytest.raises(ValueError, match="scale must be"):
            sb.quantize_activations(X, (4, 1), scale=scale)
    with pytest.raises(TypeError, match="X must be float32"):
        sb.quantize_activations(X.astype(np.float64), (4, 1))
    with pytest.raises(ValueError, match="no int8 kernels for 1x1 blocks"):
        sb.quantize_activations(X, (1, 1))
    with pytest.raises(ValueError, match="U must be a 2-D uint8 array"):
        sb.QuantizedActivations.from_uint8(np.zeros((4, 4), np.int8), 1.0)


# -- the kernels: exact against the integer reference --------------------------------------------

@needs_vnni
@pytest.mark.parametrize("block", INT8_BLOCKS, ids=block_ids)
@settings(max_examples=examples(12), deadline=None)
@given(M=st.integers(1, 70), K=st.integers(1, 70), N=st.integers(1, 150),
       sparsity=st.sampled_from([0.0, 0.5, 0.9, 0.999]), empty=st.sampled_from([0.0, 0.3, 1.0]),
       seed=seeds)
def test_every_config_is_exact(block, M, K, N, sparsity, empty, seed):
    """N, M and K remainders, empty rows, every config (tile, m_tile, prefetch, threads)."""
    W, Aq = pruned(M, K, block, sparsity, seed=seed, empty_block_rows=empty)
    X = normal_x(K, N, seed=seed + 1)
    Xq = sb.quantize_activations(X, block)
    bias = np.random.default_rng(seed).standard_normal(M).astype(np.float32)
    for cfg in every_config(Aq, N):
        assert_exact(sb.spmm(Aq, Xq, config=cfg), Aq, Xq, context=str(cfg))
        assert_exact(sb.spmm(Aq, Xq, config=cfg, bias=bias), Aq, Xq, bias, context=str(cfg))
    # float32 X is quantized inside spmm exactly as quantize_activations does
    np.testing.assert_array_equal(sb.spmm(Aq, X), sb.spmm(Aq, Xq))


@needs_vnni
@pytest.mark.parametrize("block", INT8_BLOCKS, ids=block_ids)
def test_bert_sized_problem_is_exact_with_power_of_two_scales(block):
    """Scales that are powers of two make the whole epilogue exact: Y == acc * 2**-12."""
    rng = np.random.default_rng(7)
    W, _ = pruned(768, 768, block, 0.9, seed=7)
    Wq = np.where(W != 0, rng.integers(-128, 128, W.shape), 0).astype(np.int8)
    Aq = sb.QuantizedBSRMatrix(Wq, np.full(768, 2.0 ** -6, np.float32), block)
    U = rng.integers(0, 256, (768, 128)).astype(np.uint8)
    Xq = sb.QuantizedActivations.from_uint8(U, 2.0 ** -6, block)
    acc = Wq.astype(np.int64) @ (U.astype(np.int64) - 128)
    for cfg in every_config(Aq, 128):
        np.testing.assert_array_equal(sb.spmm(Aq, Xq, config=cfg), acc * 2.0 ** -12, err_msg=str(cfg))


@needs_vnni
@pytest.mark.parametrize("block", INT8_BLOCKS, ids=block_ids)
@pytest.mark.parametrize("w, u", [(-128, 255), (-128, 0), (127, 255), (127, 0), (-128, 128)])
def test_saturation_at_the_largest_k(block, w, u):
    """All weights -128 or 127 times all activations 255 or 0, K = MAX_K: the extreme
    accumulators (|acc| up to 2**30, 255 * 128 * K before the zero point) are exact."""
    M, K, N = 4, MAX_K, 17
    Aq = sb.QuantizedBSRMatrix(np.full((M, K), w, np.int8), np.ones(M, np.float32), block)
    Xq = sb.QuantizedActivations.from_uint8(np.full((K, N), u, np.uint8), 1.0, block)
    for cfg in sb.kernel_configs(Aq, N, threads=2)[:4]:
        Y = sb.spmm(Aq, Xq, config=cfg)
        np.testing.assert_array_equal(Y, np.full((M, N), float(w * (u - 128) * K), np.float32))


@needs_vnni
@pytest.mark.parametrize("block", INT8_BLOCKS, ids=block_ids)
def test_empty_matrix_gives_the_bias_and_its_gelu(block):
    from scipy.special import erf
    M, K, N = 10, 12, 5
    Aq = sb.QuantizedBSRMatrix.from_dense(np.zeros((M, K), np.float32), block)
    assert Aq.nnz_blocks == 0
    X = normal_x(K, N)
    bias = np.linspace(-3, 3, M, dtype=np.float32)
    assert np.all(sb.spmm(Aq, X) == 0)
    np.testing.assert_array_equal(sb.spmm(Aq, X, bias=bias), np.repeat(bias[:, None], N, 1))
    gelu = 0.5 * bias * (1 + erf(bias / np.sqrt(2)))
    np.testing.assert_allclose(sb.spmm(Aq, X, bias=bias, activation="gelu"),
                               np.repeat(gelu[:, None], N, 1), atol=1e-6)
    Y0 = sb.spmm(sb.QuantizedBSRMatrix.from_dense(np.zeros((M, 0), np.float32), block),
                 np.zeros((0, N), np.float32), bias=bias)
    np.testing.assert_array_equal(Y0, np.repeat(bias[:, None], N, 1))
    assert sb.spmm(Aq, np.zeros((K, 0), np.float32)).shape == (M, 0)
    A_no_rows = sb.QuantizedBSRMatrix.from_dense(np.zeros((0, K), np.float32), block)
    assert A_no_rows.to_int8().shape == (0, K) and sb.spmm(A_no_rows, X).shape == (0, N)


@needs_vnni
@pytest.mark.parametrize("block", INT8_BLOCKS, ids=block_ids)
def test_gelu_epilogue(block):
    from scipy.special import erf
    W, Aq = pruned(37, 300, block, 0.5, seed=5, empty_block_rows=0.2)
    X = normal_x(300, 19) * 0.2
    Xq = sb.quantize_activations(X, block)
    bias = np.linspace(-3, 3, 37, dtype=np.float32)
    acc, s = accumulators(Aq, Xq)
    pre = acc * s + bias[:, None]
    ref = 0.5 * pre * (1 + erf(pre / np.sqrt(2)))
    for cfg in every_config(Aq, 19):
        Y = sb.spmm(Aq, Xq, config=cfg, bias=bias, activation="gelu")
        assert np.all(np.abs(Y - ref) <= 5e-7 + 1.13 * 2 ** -22 * np.abs(pre)), str(cfg)


# -- the kernels: error against float32 ---------------------------------------------------------------

@needs_vnni
@pytest.mark.parametrize("block", INT8_BLOCKS, ids=block_ids)
@pytest.mark.parametrize("M, K, sparsity", [(768, 768, 0.7), (768, 768, 0.9), (3072, 768, 0.8),
                                            (768, 3072, 0.8), (37, 29, 0.5)])
def test_error_against_float32(block, M, K, sparsity):
    W, Aq = pruned(M, K, block, sparsity, seed=M + K)
    X = normal_x(K, 128, seed=K)
    Y = sb.spmm(Aq, X)
    ref = W.astype(np.float64) @ X.astype(np.float64)
    err = np.abs(Y - ref)
    scale = np.abs(X).max(axis=0) / np.float32(127)
    assert np.all(err <= int8_bound(W, X, Aq, scale))
    assert err.max() <= 0.02 * np.abs(ref).max()          # the documented figure


# -- spmm arguments -----------------------------------------------------------------------------

@needs_vnni
def test_out_bias_and_strided_x():
    W, Aq = pruned(20, 40, (4, 1), 0.5)
    big = normal_x(40, 50)
    X = big[:, 5:30]                                       # rows not contiguous with each other
    Xq = sb.quantize_activations(np.ascontiguousarray(X), (4, 1))
    out = np.full((20, 25), 7.0, np.float32)
    assert sb.spmm(Aq, X, out=out) is out
    np.testing.assert_array_equal(out, sb.spmm(Aq, Xq))
    wide = np.zeros((20, 40), np.float32)
    sb.spmm(Aq, Xq, out=wide[:, 10:35])
    np.testing.assert_array_equal(wide[:, 10:35], out)
    assert not wide[:, :10].any() and not wide[:, 35:].any()


@needs_vnni
def test_bad_spmm_arguments_are_refused():
    W, Aq = pruned(20, 40, (4, 1), 0.5)
    X = normal_x(40, 8)
    with pytest.raises(TypeError, match="X must be float32"):
        sb.spmm(Aq, X.astype(np.float64))
    with pytest.raises(ValueError, match="A is 20x40 but X has 39 rows"):
        sb.spmm(Aq, X[:39])
    with pytest.raises(ValueError, match="A is 20x40 but X has 41 rows"):
        sb.spmm(Aq, sb.quantize_activations(normal_x(41, 8), (4, 1)))
    with pytest.raises(ValueError, match=r"packed in the 'quads' layout, but 4x1 blocks need 'rows'"):
        sb.spmm(Aq, sb.quantize_activations(X, (4, 4)))
    with pytest.raises(ValueError, match=r"bias must be a contiguous float32 array of shape \(20,\)"):
        sb.spmm(Aq, X, bias=np.zeros(20))
    with pytest.raises(ValueError, match=r"out has shape \(20, 7\)"):
        sb.spmm(Aq, X, out=np.zeros((20, 7), np.float32))
    with pytest.raises(ValueError, match="activation must be None or 'gelu'"):
        sb.spmm(Aq, X, activation="relu")
    with pytest.raises(sb.ConfigError, match="no avx512vnni kernel with n_tile=48"):
        sb.spmm(Aq, X, config=sb.KernelConfig((4, 1), "avx512vnni", 48, dtype="int8"))
    with pytest.raises(sb.ConfigError, match="int8 kernels take n_panel=0 and k_slice=0"):
        sb.spmm(Aq, X, config=sb.KernelConfig((4, 1), "avx512vnni", 64, k_slice=64, dtype="int8"))
    with pytest.raises(sb.ConfigError, match=r"config is for 4x4 blocks but the matrix has 4x1"):
        sb.spmm(Aq, X, config=sb.KernelConfig((4, 4), "avx512vnni", 64, dtype="int8"))


@needs_vnni
@pytest.mark.parametrize("block", INT8_BLOCKS, ids=block_ids)
def test_kernel_configs_and_default(block):
    W, Aq = pruned(64, 64, block, 0.5)
    for n in (1, 15, 16, 17, 33, 40, 48, 64, 100, 128, 300):
        cfgs = sb.kernel_configs(Aq, n, threads=2)
        assert cfgs and len(set(cfgs)) == len(cfgs)
        for c in cfgs:
            assert c.dtype == "int8" and c.isa == "avx512vnni" and c.block == block
            check_config(c, Aq)
        dflt = sb.default_config(Aq, n, threads=2)
        check_config(dflt, Aq)
        assert dflt in sb.kernel_configs(Aq, n, threads=dflt.threads)


@needs_vnni
@pytest.mark.parametrize("block", INT8_BLOCKS, ids=block_ids)
def test_vstack_and_block_rows_compute_each_part_as_it_was(block):
    """Stacked int8 matrices give each part's rows bit for bit (same s8 weights and row scales);
    block_rows views share the stacked arrays and give the parts back, stored blocks counted."""
    br = block[0]
    parts = [pruned(M, 70, block, s, seed=M, empty_block_rows=e)[1]
             for M, s, e in ((4 * br, 0.7, 0.0), (3 * br, 0.5, 0.5), (2 * br + 1, 0.9, 0.0))]
    stacked = sb.QuantizedBSRMatrix.vstack(parts)
    Xq = sb.quantize_activations(normal_x(70, 37), block)
    Y = sb.spmm(stacked, Xq)
    r = i = 0
    for A in parts:
        rows = -(-A.shape[0] // br)
        view = stacked.block_rows(i, i + rows)
        assert view.shape == A.shape and view.nnz_blocks == A.nnz_blocks
        assert np.array_equal(view.to_int8(), A.to_int8()) and np.array_equal(view.scales, A.scales)
        assert np.shares_memory(view._comp, stacked._comp)
        for cfg in sb.kernel_configs(A, 37, threads=2)[::5]:
            assert np.array_equal(sb.spmm(view, Xq, cfg), sb.spmm(A, Xq, cfg)), str(cfg)
        assert np.array_equal(Y[r:r + A.shape[0]], sb.spmm(A, Xq))
        r, i = r + A.shape[0], i + rows
    end = stacked._gptr.shape[0] - 1                # past a partial last block row: empty
    assert stacked.block_rows(end, end).shape == (0, 70) and stacked.block_rows(end, end).nnz_blocks == 0
    if br > 1:                                      # the part with a partial block row first
        with pytest.raises(ValueError, match="whole block rows"):
            sb.QuantizedBSRMatrix.vstack(parts[::-1])
    with pytest.raises(ValueError, match="outside"):
        stacked.block_rows(0, 100)


# -- the low-level entry points refuse garbage --------------------------------------------------------

def small_call():
    """A 12 x 16 int8 matrix (4x1), 16 x 6 quantized activations, the kernel module and variant."""
    _, Aq = pruned(12, 16, (4, 1), 0.5)
    Xq = sb.quantize_activations(normal_x(16, 6), (4, 1))
    module, vid = variant_id(sb.default_config(Aq, 6, threads=1))
    return Aq, Xq, module, vid


@needs_vnni
def test_kernel_entry_points_refuse_garbage():
    Aq, Xq, module, vid = small_call()

    def args():
        return [vid, Aq._data, Aq._indices_padded, Aq._gptr, Aq.task_bounds(1, 0), Aq._comp,
                Aq._scales, Xq._packed, Xq._scales, np.zeros((12, 6), np.float32), 12, 16, 0, 1]
    good = args()
    module.run(*good)
    np.testing.assert_array_equal(good[9], sb.spmm(Aq, Xq))
    garbage = {0: 10 ** 6, 1: Aq._data[:1], 2: Aq._indices_padded[:3], 3: Aq._gptr[:-1],
               4: np.array([0, 1], np.int32), 5: Aq._comp[:2], 6: Aq._scales.astype(np.float64),
               7: Xq._packed[:, :32], 8: Xq._scales[:5], 9: np.zeros((12, 6)), 10: 13, 11: 10 ** 6,
               12: 65, 13: 0}
    for pos, value in garbage.items():
        a = args()
        a[pos] = value
        with pytest.raises(ValueError, match="sparsebench int8 kernel called with invalid arguments"):
            module.run(*a)
    for pos in (1, 2, 3, 4, 5, 6, 7, 8, 9):
        a = args()
        a[pos] = None
        with pytest.raises((ValueError, TypeError)):
            module.run(*a)
    with pytest.raises(ValueError, match="invalid arguments: threads, scale"):
        module.quantize(normal_x(4, 4), False, 1e-40, 1)
    with pytest.raises(ValueError, match="X must be a 2-D float32 array"):
        module.quantize(np.zeros((4, 4)), False, 0.0, 1)


def test_info_lists_the_int8_kernels():
    from sparsebench.cli.info import collect, format_info
    info = collect()
    if HAS_VNNI:
        assert "4x1/nt64" in info["int8_variants"]["avx512vnni"]
    assert "Compiled int8 variants" in format_info(info)


# -- token-major activations: quantized and packed with no transposed copy ----------------------

@needs_vnni
@pytest.mark.parametrize("block", [(4, 1), (4, 4)], ids=block_ids)
@pytest.mark.parametrize("K, N", [(0, 5), (6, 0), (1, 1), (3, 15), (4, 16), (5, 17), (17, 63), (64, 64), (67, 65),
                                  (130, 130), (768, 128), (100, 200)])
def test_token_major_quantization_is_the_same_bits(block, K, N, monkeypatch):
    """From X's transpose, every padding column and row, dynamic and calibrated scales, one and
    two threads (small X too): the packed bytes and scales of the feature-major packer, bit for
    bit."""
    monkeypatch.setattr(sb.quant, "SERIAL_PACK", 0)
    X = normal_x(K, N, seed=K + N) * 3
    if N > 2:
        X[:, 1] = 0                                # an all-zero token: scale 1
    Xt = np.ascontiguousarray(X.T)
    for scale in (None, 0.02):
        for threads in (1, 2):
            want = sb.quantize_activations(X, block, scale=scale, threads=threads)
            got = sb.quantize_activations(Xt, block, scale=scale, threads=threads, layout="tokens")
            assert got.shape == (K, N) and got.layout == want.layout
            np.testing.assert_array_equal(got._packed, want._packed)
            np.testing.assert_array_equal(got._scales, want._scales)


@needs_vnni
@settings(max_examples=examples(40), deadline=None)
@given(K=st.integers(1, 150), N=st.integers(1, 150), block=st.sampled_from(INT8_BLOCKS),
       calibrated=st.booleans(), seed=seeds)
def test_random_token_major_quantization_matches(K, N, block, calibrated, seed):
    X = normal_x(K, N, seed=seed)
    scale = 0.01 if calibrated else None
    want = sb.quantize_activations(X, block, scale=scale)
    module = cpu.kernel_module(cpu.best_isa("int8"), "int8")       # two threads whatever the size
    packed, scales = module.quantize_tokens(X.T.copy(), LAYOUTS[block] == "quads",
                                            0.0 if scale is None else scale, 2)
    got = sb.QuantizedActivations(packed, (K, N), LAYOUTS[block], scales)
    np.testing.assert_array_equal(got._packed, want._packed)
    np.testing.assert_array_equal(got._scales, want._scales)


@needs_vnni
@pytest.mark.parametrize("block", INT8_BLOCKS, ids=block_ids)
def test_token_major_spmm_takes_quantized_activations(block):
    """One quantization of token-major X serves several matrices; Y token-major, the same bits
    as the feature-major call on the same quantized X."""
    Xt = normal_x(130, 48, seed=3)
    Xq = sb.quantize_activations(Xt, block, layout="tokens")
    for M in (40, 45):
        _, Aq = pruned(M, 48, block, 0.5, seed=M)
        Y = sb.spmm(Aq, Xq, layout="tokens")
        assert Y.shape == (130, M)
        np.testing.assert_array_equal(Y, sb.spmm(Aq, Xq).T)
    with pytest.raises(ValueError, match="token-major X has 48 columns"):
        sb.spmm(pruned(8, 40, block, 0.5)[1], Xq, layout="tokens")
    with pytest.raises(ValueError, match="layout must be"):
        sb.quantize_activations(Xt, block, layout="columns")


@needs_vnni
def test_token_major_entry_points_refuse_garbage():
    Aq, Xq, module, vid = small_call()
    args = [vid, Aq._data, Aq._indices_padded, Aq._gptr, Aq.task_bounds(1, 0), Aq._comp, Aq._scales,
            Xq._packed, Xq._scales, None, 12, 16, 0, 1, None, 0]
    Yt = np.zeros((6, 12), np.float32)
    module.run(*args, Yt)
    np.testing.assert_array_equal(Yt, sb.spmm(Aq, Xq).T)
    for Y, bad in ((np.zeros((12, 6), np.float32), Yt), (None, np.zeros((6, 13), np.float32)),
                   (None, np.zeros((6, 12))), (None, np.zeros((12, 6), np.float32).T)):
        a = list(args)
        a[9] = Y
        with pytest.raises(ValueError, match="Yt must be a writeable N x M float32 array"):
            module.run(*a, bad)
    with pytest.raises(ValueError, match="Xt must be a 2-D float32 array"):
        module.quantize_tokens(np.zeros((4, 4)), False, 0.0, 1)
    with pytest.raises(ValueError, match="invalid arguments: threads, scale"):
        module.quantize_tokens(normal_x(4, 4), False, 0.0, 0)


# -- the int8 encoder's LayerNorm, quantizing its own output -------------------------------------

def layer_norm_inputs(H, T, seed, residual):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((H, T)) * rng.uniform(0.01, 30, T)).astype(np.float32)
    res = rng.standard_normal((H, T)).astype(np.float32) if residual else None
    gamma, beta = rng.standard_normal(H).astype(np.float32), rng.standard_normal(H).astype(np.float32)
    return x, res, gamma, beta


def assert_fused_layer_norm(x, res, gamma, beta, block, threads):
    """layer_norm_quantized: the LayerNorm's bits, then quantize_activations' bytes and scales."""
    ops = cpu.encoder_module("avx512vnni")
    want_x = ops.add_layer_norm(x.copy(), gamma, beta, 1e-5, res, threads)
    want = sb.quantize_activations(want_x, block, threads=threads)
    got_x = x.copy()
    got = sb.quant.layer_norm_quantized(got_x, gamma, beta, 1e-5, res, block, threads)
    np.testing.assert_array_equal(got_x, want_x)
    assert got.shape == want.shape and got.layout == want.layout
    np.testing.assert_array_equal(got._packed, want._packed)
    np.testing.assert_array_equal(got._scales, want._scales)
    return got


@needs_vnni
@pytest.mark.parametrize("block", [(4, 1), (4, 4)], ids=block_ids)
@pytest.mark.parametrize("H, T", [(1, 1), (3, 15), (5, 17), (33, 64), (64, 130), (768, 128), (7, 600),
                                  (130, 1100)])
@pytest.mark.parametrize("residual", [False, True])
def test_layer_norm_quantizes_its_output_bit_for_bit(block, H, T, residual):
    """Every strip shape (whole, masked, past 64 or 16 columns of padding), quad-rows past H,
    two tasks (T > 512 columns), one and two threads."""
    for threads in (1, 2):
        assert_fused_layer_norm(*layer_norm_inputs(H, T, H + T, residual), block, threads)


@needs_vnni
@pytest.mark.parametrize("block", [(4, 1), (4, 4)], ids=block_ids)
def test_layer_norm_quantizes_rows_of_wider_arrays(block):
    """x and the residual as column slices of wider arrays (rows apart by more than their
    length), the packed output in wider rows: the same bits, padding columns left alone."""
    x, res, gamma, beta = layer_norm_inputs(37, 70, 5, True)
    wide_x, wide_res = np.zeros((37, 100), np.float32), np.zeros((37, 90), np.float32)
    wide_x[:, :70], wide_res[:, 3:73] = x, res
    want = assert_fused_layer_norm(x, res, gamma, beta, block, 2)
    module = cpu.kernel_module("avx512vnni", "int8")
    quads = LAYOUTS[block] == "quads"
    packed, both = module.packed_arrays(37, 70, quads)
    wide = np.full((packed.shape[0], packed.shape[1] + 64), 7, np.uint8)
    cpu.encoder_module("avx512vnni").add_layer_norm(wide_x[:, :70], gamma, beta, 1e-5, wide_res[:, 3:73], 2,
                                                    wide[:, :packed.shape[1]], both, quads)
    np.testing.assert_array_equal(wide[:, :packed.shape[1]], want._packed)
    assert (wide[:, packed.shape[1]:] == 7).all() and (wide_x[:, 70:] == 0).all()
    np.testing.assert_array_equal(both[:both.shape[0] // 2], want._scales)


@needs_vnni
def test_layer_norm_of_zeros_quantizes_to_the_zero_point():
    """gamma = beta = 0: every token's output is 0, its scale 1 and every byte the zero point."""
    x, res, _, _ = layer_norm_inputs(9, 70, 0, True)
    zero = np.zeros(9, np.float32)
    got = assert_fused_layer_norm(x, res, zero, zero, (4, 1), 1)
    assert (got.scales == 1).all() and (got.to_uint8() == 128).all()


@needs_vnni
@settings(max_examples=examples(30), deadline=None)
@given(H=st.integers(1, 90), T=st.integers(1, 300), block=st.sampled_from(INT8_BLOCKS),
       residual=st.booleans(), threads=st.sampled_from([1, 2]), seed=seeds)
def test_random_layer_norms_quantize_bit_for_bit(H, T, block, residual, threads, seed):
    assert_fused_layer_norm(*layer_norm_inputs(H, T, seed, residual), block, threads)


@needs_vnni
def test_layer_norm_quantizing_refuses_bad_arguments():
    x, res, gamma, beta = layer_norm_inputs(8, 64, 0, True)
    x[3, 5] = np.inf
    with pytest.raises(ValueError, match="inf or NaN"):
        sb.quant.layer_norm_quantized(x, gamma, beta, 1e-5, res)
    ops = cpu.encoder_module("avx512vnni")
    module = cpu.kernel_module("avx512vnni", "int8")
    packed, both = module.packed_arrays(8, 64, False)
    with pytest.raises(ValueError, match="packed must be a writeable uint8 array of shape \\(8, 64\\)"):
        ops.add_layer_norm(x, gamma, beta, 1e-5, None, 1, packed[:4], both)
    with pytest.raises(ValueError, match="packed must be a writeable uint8 array of shape \\(2, 256\\)"):
        ops.add_layer_norm(x, gamma, beta, 1e-5, None, 1, packed, both, True)
    with pytest.raises(ValueError, match="scales must hold 128 floats"):
        ops.add_layer_norm(x, gamma, beta, 1e-5, None, 1, packed, both[:64])
    with pytest.raises(ValueError, match="packed must not overlap x"):
        ops.add_layer_norm(x, gamma, beta, 1e-5, None, 1, x.view(np.uint8)[:, :64], both)
    with pytest.raises(ValueError, match="scales must not overlap x"):
        ops.add_layer_norm(x, gamma, beta, 1e-5, None, 1, packed, x.reshape(-1)[:128])
    for isa in cpu.encoder_isas():
        if not cpu.encoder_module(isa).QUANTIZES:
            with pytest.raises(ValueError, match="cannot quantize"):
                cpu.encoder_module(isa).add_layer_norm(x, gamma, beta, 1e-5, None, 1, packed, both)


@needs_vnni
@pytest.mark.parametrize("block", sorted(INT8_BLOCKS))
def test_the_kernels_are_told_the_packed_rows_the_matrix_reaches(block):
    """spmm tells the int8 kernels how many rows of packed X the matrix's indices reach (its K,
    or K / 4 quad-rows, rounded up), so that their check of X's rows means something."""
    from sparsebench.spmm import _packed_rows
    rng = np.random.default_rng(5)
    for K in (5, 8, 13):
        W = sb.prune(rng.standard_normal((16, K), dtype=np.float32), 0.5, block)
        A = sb.QuantizedBSRMatrix.from_dense(W, block)
        X = sb.quantize_activations(rng.standard_normal((K, 3), dtype=np.float32), block)
        assert _packed_rows(A) == X._packed.shape[0]
        module, vid = variant_id(sb.default_config(A, 3, 1))
        with pytest.raises(ValueError, match="packed activations of every row"):
            module.run(vid, A._data, A._indices_padded, A._gptr, A.task_bounds(1, 0), A._comp, A._scales,
                       X._packed[:-1], X._scales, np.empty((16, 3), np.float32), 16, _packed_rows(A), 0, 1)
