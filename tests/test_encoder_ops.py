"""The fused encoder ops (kernels/encoder): LayerNorm + residual and self-attention, every ISA
module this CPU runs, against float64 numpy references with rigorous float32 error bounds."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsebench import _pool, cpu
from sparsebench._buildinfo import BUILD
from sparsebench.errors import UnsupportedISAError

from conftest import U32, examples

ISAS = cpu.encoder_isas()
F32_MIN = float(np.finfo(np.float32).min)


@pytest.fixture(params=ISAS)
def ops(request):
    return cpu.encoder_module(request.param)


# -- references -----------------------------------------------------------------------------------

def layer_norm_reference(x, gamma, beta, eps, residual=None):
    """float64 LayerNorm over the rows of each column, and an elementwise float32 error bound."""
    x = x.astype(np.float64) + (0.0 if residual is None else residual.astype(np.float64))
    H = x.shape[0]
    mean = x.mean(axis=0)
    dev = x - mean
    rstd = 1.0 / np.sqrt((dev ** 2).mean(axis=0) + eps)
    g, b = gamma.astype(np.float64)[:, None], beta.astype(np.float64)[:, None]
    y = dev * rstd * g + b
    # the sum (mean) carries H roundings of |x|, the variance H of dev^2, the rest a few each
    bound = (2 * H + 16) * U32 * np.abs(g) * rstd * (np.abs(dev) + np.abs(x).mean(axis=0)) + 4 * U32 * np.abs(b)
    return y, bound


def attention_reference(qkv, heads, batch, mask=None, exact_scores=False):
    """float64 BERT self-attention in the features x tokens layout, and an elementwise bound.

    The bound: each score carries (d + 2) roundings of sum |k||q| (none with `exact_scores`),
    which change the softmax weights by up to 4 times that; the exp, the column sums and the
    context sums add (2 seq + 32) roundings of sum_k p_k |v_k|."""
    H, T = qkv.shape[0] // 3, qkv.shape[1]
    seq, d = T // batch, H // heads
    q, k, v = (qkv[i * H:(i + 1) * H].astype(np.float64).reshape(heads, d, batch, seq) for i in range(3))
    scores = np.einsum("hibk,hibq->bhkq", k, q)
    magnitude = np.einsum("hibk,hibq->bhkq", np.abs(k), np.abs(q)).max(axis=2)       # (b, h, q)
    if mask is not None:
        scores = scores + mask.astype(np.float64)[:, None, :, None]
    p = np.exp(scores - scores.max(axis=2, keepdims=True))
    p /= p.sum(axis=2, keepdims=True)
    ctx = np.einsum("hibk,bhkq->hibq", v, p).reshape(H, T)
    spread = np.einsum("hibk,bhkq->hibq", np.abs(v), p).reshape(H, T)
    rel = (0 if exact_scores else 4 * (d + 2) * U32 * magnitude.transpose(1, 0, 2)[:, None]) \
        + (2 * seq + 32) * U32                                                       # (h, 1, b, q)
    bound = (np.broadcast_to(rel, (heads, d, batch, seq)).reshape(H, T) * spread) + 1e-30
    return ctx, bound


def assert_within(y, ref, bound):
    err = np.abs(y.astype(np.float64) - ref)
    bad = ~(err <= bound)
    assert not bad.any(), (f"{int(bad.sum())} of {bad.size} outside the bound; worst at "
                           f"{np.unravel_index(np.argmax(err - bound), err.shape)}: "
                           f"err {err.max():.3g}, bound there {bound.flat[np.argmax(err - bound)]:.3g}")


def random_qkv(rng, heads, d, batch, seq, scale=1.0):
    return (rng.standard_normal((3 * heads * d, batch * seq)) * scale).astype(np.float32)


def padding_mask(rng, batch, seq):
    """Additive key mask: each sequence keeps a random prefix of at least one token."""
    keep = rng.integers(1, seq + 1, batch)
    return np.where(np.arange(seq) < keep[:, None], 0.0, F32_MIN).astype(np.float32)


# -- LayerNorm ------------------------------------------------------------------------------------

@settings(max_examples=examples(25))
@given(H=st.integers(1, 300), T=st.integers(1, 150), with_residual=st.booleans(),
       eps=st.sampled_from([0.0, 1e-12, 1e-5, 0.5]), offset=st.sampled_from([0.0, 3.0]),
       threads=st.integers(1, 3), seed=st.integers(0, 2 ** 32 - 1))
def test_layer_norm_matches_float64(H, T, with_residual, eps, offset, threads, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((H, T)) + offset).astype(np.float32)
    residual = rng.standard_normal((H, T)).astype(np.float32) if with_residual else None
    gamma = (1 + 0.3 * rng.standard_normal(H)).astype(np.float32)
    beta = (0.3 * rng.standard_normal(H)).astype(np.float32)
    if eps == 0.0 and H == 1:
        eps = 1e-6                                  # a single feature has variance 0
    ref, bound = layer_norm_reference(x, gamma, beta, eps, residual)
    kept = None if residual is None else residual.copy()
    for isa in ISAS:
        y = x.copy()
        assert cpu.encoder_module(isa).add_layer_norm(y, gamma, beta, eps, residual, threads) is y
        assert_within(y, ref, bound)
        if residual is not None:
            assert np.array_equal(residual, kept)


@pytest.mark.parametrize("H, T", [(768, 128), (37, 1100)])       # BERT-Base; several tasks
@pytest.mark.parametrize("with_residual", [False, True])
def test_layer_norm_large_shapes(ops, H, T, with_residual):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((H, T)).astype(np.float32)
    residual = rng.standard_normal((H, T)).astype(np.float32) if with_residual else None
    gamma, beta = rng.standard_normal(H).astype(np.float32), rng.standard_normal(H).astype(np.float32)
    ref, bound = layer_norm_reference(x, gamma, beta, 1e-12, residual)
    for threads in (1, 2, 3):
        y = x.copy()
        ops.add_layer_norm(y, gamma, beta, 1e-12, residual, threads)
        assert_within(y, ref, bound)


@pytest.mark.parametrize("with_residual", [False, True])
def test_layer_norm_of_a_token_does_not_depend_on_the_others(ops, with_residual):
    """A token's LayerNorm is the same bits whether it is one of 1, 8, 20 or 150 tokens (a full
    strip, or a masked one whose rows are less than a vector apart), in a row of its own width
    or of a wider array: the encoder's passes of 128 tokens give what the whole batch gives."""
    rng = np.random.default_rng(5)
    H, T = 97, 150
    x = rng.standard_normal((H, T)).astype(np.float32)
    residual = rng.standard_normal((H, T)).astype(np.float32) if with_residual else None
    gamma, beta = rng.standard_normal(H).astype(np.float32), rng.standard_normal(H).astype(np.float32)
    whole = x.copy()
    ops.add_layer_norm(whole, gamma, beta, 1e-12, residual, 2)
    # P (the last sweep's row step) is 2 to 16 here on every build's vector width
    for t0, t1 in ((0, 1), (0, 3), (0, 6), (3, 11), (0, 8), (130, 150), (17, 37), (0, 128), (5, 150)):
        for wide in (False, True):
            part = x.copy()[:, t0:t1] if wide else x[:, t0:t1].copy()
            res = None if residual is None else residual[:, t0:t1].copy()
            ops.add_layer_norm(part, gamma, beta, 1e-12, res, 1)
            assert np.array_equal(part, whole[:, t0:t1]), (t0, t1, wide)


def test_layer_norm_constant_columns_give_beta(ops):
    x = np.full((5, 19), 2.0, np.float32)
    beta = np.arange(5, dtype=np.float32)
    ops.add_layer_norm(x, np.ones(5, np.float32), beta, 1e-12, None, 2)
    assert np.array_equal(x, np.repeat(beta[:, None], 19, axis=1))
    one = np.full((1, 1), 7.0, np.float32)                    # H = 1, T = 1
    ops.add_layer_norm(one, np.ones(1, np.float32), np.full(1, 0.5, np.float32), 1e-5)
    assert one[0, 0] == 0.5


def test_layer_norm_eps_matters(ops):
    x = np.array([[1.0], [-1.0]], np.float32)                  # mean 0, variance 1
    ops.add_layer_norm(x, np.ones(2, np.float32), np.zeros(2, np.float32), 3.0)
    np.testing.assert_allclose(x[:, 0], [0.5, -0.5], rtol=1e-6)


def test_layer_norm_bad_arguments(ops):
    x = np.zeros((4, 6), np.float32)
    g = b = np.ones(4, np.float32)
    readonly = x.copy()
    readonly.flags.writeable = False
    cases = [
        ((x.astype(np.float64), g, b, 1e-5), TypeError, "x must be float32"),
        ((x.tolist(), g, b, 1e-5), TypeError, "x must be a numpy array"),
        ((x[:, ::2], g, b, 1e-5), ValueError, "x must have contiguous rows"),
        ((x[0], g, b, 1e-5), ValueError, "x must be 2-D"),
        ((readonly, g, b, 1e-5), ValueError, "x must be writeable"),
        ((np.zeros((0, 6), np.float32), g[:0], b[:0], 1e-5), ValueError, "1 to"),
        ((x, np.ones(5, np.float32), b, 1e-5), ValueError, r"gamma and beta must have shape \(4,\)"),
        ((x, g, b.astype(np.float16), 1e-5), TypeError, "beta must be float32"),
        ((x, g, b, -1.0), ValueError, "eps must be finite and >= 0"),
        ((x, g, b, float("nan")), ValueError, "eps must be finite"),
        ((x, g, b, 1e-5, np.zeros((4, 5), np.float32)), ValueError, "residual has shape"),
        ((x, g, b, 1e-5, np.zeros((4, 6))), TypeError, "residual must be float32"),
        ((x, g, b, 1e-5, None, 0), ValueError, "threads must be an integer from 1"),
        ((x, g, b, 1e-5, None, 1.0), TypeError, "integer"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            ops.add_layer_norm(*args)


# -- attention ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seq, batch, d", [(1, 1, 64), (7, 3, 32), (17, 1, 64), (17, 3, 32),
                                           (128, 1, 64), (130, 3, 64), (130, 1, 32), (33, 2, 12)])
@pytest.mark.parametrize("masked", [False, True])
def test_attention_matches_float64(ops, seq, batch, d, masked):
    rng = np.random.default_rng(seq * 31 + batch * 7 + d)
    heads = 2
    qkv = random_qkv(rng, heads, d, batch, seq, scale=0.5)
    mask = padding_mask(rng, batch, seq) if masked else None
    ref, bound = attention_reference(qkv, heads, batch, mask)
    for threads in (1, 2, 3):
        ctx = np.full((heads * d, batch * seq), np.nan, np.float32)
        assert ops.attention(qkv, ctx, heads, batch, mask, threads) is ctx
        assert_within(ctx, ref, bound)


@settings(max_examples=examples(15))
@given(heads=st.integers(1, 3), d=st.integers(1, 20), batch=st.integers(1, 3), seq=st.integers(1, 70),
       masked=st.booleans(), threads=st.integers(1, 3), seed=st.integers(0, 2 ** 32 - 1))
def test_attention_any_shape(heads, d, batch, seq, masked, threads, seed):
    rng = np.random.default_rng(seed)
    qkv = random_qkv(rng, heads, d, batch, seq)
    mask = padding_mask(rng, batch, seq) if masked else None
    ref, bound = attention_reference(qkv, heads, batch, mask)
    for isa in ISAS:
        ctx = np.empty((heads * d, batch * seq), np.float32)
        cpu.encoder_module(isa).attention(qkv, ctx, heads, batch, mask, threads)
        assert_within(ctx, ref, bound)


def test_softmax_is_accurate_with_exact_scores(ops):
    """Scores that float32 computes exactly (d = 1, dyadic K and Q: 0 down to -240), so the
    error is the exp's and the sums' alone."""
    seq, batch = 241, 2
    k = np.tile(-np.arange(seq) / 2.0, batch)
    q = np.resize([1.0, 0.25, 2.0, -0.5, 0.125], seq * batch)
    v = np.random.default_rng(3).standard_normal(seq * batch)
    qkv = np.stack([q, k, v]).astype(np.float32)
    ref, bound = attention_reference(qkv, 1, batch, exact_scores=True)
    ctx = np.empty((1, seq * batch), np.float32)
    ops.attention(qkv, ctx, 1, batch, None, 2)
    assert_within(ctx, ref, bound)


def test_attention_all_padding_sequence_averages_every_key(ops):
    """A sequence whose every key is padding gets the plain mean of V (as transformers does: the
    additive minimum leaves equal scores), finite, and the other sequences are untouched."""
    rng = np.random.default_rng(4)
    heads, d, batch, seq = 2, 32, 3, 17
    qkv = random_qkv(rng, heads, d, batch, seq)
    mask = padding_mask(rng, batch, seq)
    mask[1] = F32_MIN
    ctx = np.empty((heads * d, batch * seq), np.float32)
    ops.attention(qkv, ctx, heads, batch, mask, 2)
    ref, bound = attention_reference(qkv, heads, batch, mask)
    assert_within(ctx, ref, bound)
    v1 = qkv[2 * heads * d:, seq:2 * seq].astype(np.float64)
    np.testing.assert_allclose(ctx[:, seq:2 * seq], np.repeat(v1.mean(axis=1, keepdims=True), seq, axis=1),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [30.0, 1e3])
def test_attention_large_scores_stay_stable(ops, scale):
    """Scores in the thousands (up to 1e6) would overflow exp without the max subtracted."""
    rng = np.random.default_rng(5)
    heads, d, batch, seq = 2, 64, 2, 40
    qkv = random_qkv(rng, heads, d, batch, seq)
    qkv[:heads * d] *= scale
    mask = padding_mask(rng, batch, seq)
    ctx = np.empty((heads * d, batch * seq), np.float32)
    ops.attention(qkv, ctx, heads, batch, mask, 2)
    assert np.isfinite(ctx).all()
    ref, bound = attention_reference(qkv, heads, batch, mask)
    assert_within(ctx, ref, bound)


def test_attention_propagates_nan(ops):
    qkv = np.ones((3 * 4, 9), np.float32)
    qkv[0, 2] = np.nan                                         # a query of head 0
    ctx = np.empty((4, 9), np.float32)
    ops.attention(qkv, ctx, 2, 1, None, 1)
    assert np.isnan(ctx[:2, 2]).all() and np.isfinite(np.delete(ctx, 2, axis=1)).all()
    assert np.isfinite(ctx[2:]).all()


def test_attention_bad_arguments(ops):
    qkv = np.zeros((12, 10), np.float32)
    ctx = np.zeros((4, 10), np.float32)
    mask = np.zeros((2, 5), np.float32)
    readonly = ctx.copy()
    readonly.flags.writeable = False
    shared = np.zeros((16, 10), np.float32)
    cases = [
        ((qkv.astype(np.float64), ctx, 2, 2), TypeError, "qkv must be float32"),
        ((qkv, ctx.astype(np.float16), 2, 2), TypeError, "ctx must be float32"),
        ((qkv, None, 2, 2), TypeError, "ctx must be a numpy array"),
        ((qkv[:, ::2], ctx[:, :5], 2, 1), ValueError, "qkv must have contiguous rows"),
        ((qkv, readonly, 2, 2), ValueError, "ctx must be writeable"),
        ((qkv[:9], ctx, 2, 2), ValueError, r"qkv must have shape \(12, 10\)"),
        ((qkv, ctx, 3, 2), ValueError, "not a positive multiple of 3 heads"),
        ((qkv, ctx, 0, 2), ValueError, "heads must be an integer from 1"),
        ((qkv, ctx, 2, -1), ValueError, "batch must be an integer from 1"),
        ((qkv, ctx, 2, 3), ValueError, "do not split into 3 sequences"),
        ((qkv, ctx, 2, 2, np.zeros((2, 4), np.float32)), ValueError, r"mask must have shape \(2, 5\)"),
        ((qkv, ctx, 2, 2, mask.astype(np.float64)), TypeError, "mask must be float32"),
        ((qkv, ctx, 2, 2, mask, 0), ValueError, "threads must be an integer from 1"),
        ((shared[:12], shared[12:], 2, 2), None, None),        # adjacent, not overlapping: fine
        ((shared[:12], shared[8:12], 2, 2), ValueError, "ctx must not overlap qkv"),
        ((qkv, ctx, 2.5, 2), TypeError, "integer"),
        ((qkv, ctx, 2, 2, None, 2 ** 40), ValueError, "threads must be an integer from 1"),
    ]
    for args, error, message in cases:
        if error is None:
            ops.attention(*args)
            continue
        with pytest.raises(error, match=message):
            ops.attention(*args)


# -- module choice --------------------------------------------------------------------------------

def test_encoder_module_is_the_best_isa_and_never_one_the_cpu_lacks(no_cpu_features):
    assert cpu.encoder_module().ISA == "generic"
    if "avx2" in BUILD["encoder_isas"]:
        with pytest.raises(UnsupportedISAError, match="lacks"):
            cpu.encoder_module("avx2")


def test_encoder_module_default_is_first_available():
    module = cpu.encoder_module()
    assert module.ISA == ISAS[0] and module.QUERY_TILE == 2 * module.VECTOR_WIDTH
    # the best module runs int8 attention exactly where the CPU has VNNI
    assert hasattr(module, "attention_int8") == bool(cpu.available_isas("int8"))


def test_encoder_module_honours_the_forced_isa(clean_cpu_caches):
    isa = cpu.available_isas()[-1]
    clean_cpu_caches.setenv(cpu.ENV_ISA, isa)
    assert cpu.encoder_isas() == [isa] and cpu.encoder_module().ISA == isa


def test_int8_attention_needs_vnni(no_cpu_features):
    with pytest.raises(UnsupportedISAError, match="VNNI|no int8"):
        cpu.int8_attention()


def test_encoder_workers_that_sleep_at_once_are_woken_for_every_call(clean_cpu_caches):
    """SPARSEBENCH_SPIN_US applies to the encoder pool too; with 0 every call wakes the workers."""
    clean_cpu_caches.setenv(cpu.ENV_SPIN_US, "0")
    ops = cpu.encoder_module()
    rng = np.random.default_rng(6)
    qkv = random_qkv(rng, 4, 8, 2, 40)
    ref, bound = attention_reference(qkv, 4, 2)
    x = rng.standard_normal((16, 1500)).astype(np.float32)
    g, b = np.ones(16, np.float32), np.zeros(16, np.float32)
    ln_ref, ln_bound = layer_norm_reference(x, g, b, 1e-5)
    try:
        assert _pool.spin_us() == 0
        for _ in range(100):
            ctx = np.empty((32, 80), np.float32)
            assert_within(ops.attention(qkv, ctx, 4, 2, None, 3), ref, bound)
            assert_within(ops.add_layer_norm(x.copy(), g, b, 1e-5, None, 3), ln_ref, ln_bound)
    finally:
        _pool.set_spin_us(_pool.DEFAULT_SPIN_US)


def test_bad_spin_setting_is_explained_for_the_encoder_ops(clean_cpu_caches):
    clean_cpu_caches.setenv(cpu.ENV_SPIN_US, "soon")
    with pytest.raises(ValueError, match="SPARSEBENCH_SPIN_US='soon' must be a whole number"):
        cpu.encoder_module()
