"""int8 self-attention (kernels/encoder/attention_int8.h, in the avx512vnni encoder module): exact against a numpy emulation of its
quantization, close to float64 attention, and bad input refused before the kernel runs."""
import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsebench import cpu
from sparsebench.models import BertEncoder, ModelError
from sparsebench.models.config import model_config

from conftest import examples

pytestmark = pytest.mark.skipif(not cpu.available_isas("int8"), reason="no AVX512-VNNI on this CPU")
F32_MIN = np.finfo(np.float32).min


@pytest.fixture(scope="module")
def attention():
    return cpu.int8_attention()


def _per_column(x):
    """s8 values and scales of x quantized per column (symmetric, max |x| / 127)."""
    amax = np.abs(x).max(axis=0)
    scale = np.where(amax > 0, amax * np.float32(1 / 127), np.float32(1)).astype(np.float32)
    return np.rint(x * (np.float32(1) / scale)).astype(np.int64), scale


def emulate(qkv, heads, batch, mask=None):
    """The kernel's arithmetic in numpy: Q, K per token and V per row to 8 bits, integer
    products, P = rint(255 exp(s - max)) normalised by its integer sum."""
    H, T = qkv.shape[0] // 3, qkv.shape[1]
    seq, d = T // batch, H // heads
    out = np.empty((H, T), np.float64)
    for b in range(batch):
        cols = slice(b * seq, (b + 1) * seq)
        for h in range(heads):
            rows = slice(h * d, (h + 1) * d)
            q, sq = _per_column(qkv[:H][rows, cols])
            k, sk = _per_column(qkv[H:2 * H][rows, cols])
            v = qkv[2 * H:][rows, cols]
            vmax = np.abs(v).max(axis=1)
            sv = np.where(vmax > 0, vmax / np.float32(127), np.float32(1)).astype(np.float32)
            vq = np.rint(v * (np.float32(1) / sv[:, None])).astype(np.int64)
            acc = (k.T @ q).astype(np.float32)                    # keys x queries, exact
            s = acc * (sk[:, None] * sq[None, :])
            if mask is not None:
                s = s + mask[b][:, None]
            p = np.rint(255 * np.exp(s.astype(np.float64) - s.max(axis=0))).astype(np.int64)
            out[rows, cols] = (vq @ p) * sv[:, None].astype(np.float64) / p.sum(axis=0)
    return out


def reference(qkv, heads, batch, mask=None):
    """float64 attention."""
    H, T = qkv.shape[0] // 3, qkv.shape[1]
    seq, d = T // batch, H // heads
    x = qkv.astype(np.float64)
    out = np.empty((H, T))
    for b in range(batch):
        cols = slice(b * seq, (b + 1) * seq)
        for h in range(heads):
            q, k, v = (x[i * H + h * d:i * H + (h + 1) * d, cols] for i in range(3))
            s = k.T @ q + (0 if mask is None else mask[b][:, None].astype(np.float64))
            p = np.exp(s - s.max(axis=0))
            out[h * d:(h + 1) * d, cols] = v @ (p / p.sum(axis=0))
    return out


def make(rng, heads, d, batch, seq, padded=0, q_scale=0.5):
    H = heads * d
    qkv = rng.standard_normal((3 * H, batch * seq)).astype(np.float32)
    qkv[:H] *= q_scale
    mask = None
    if padded:
        mask = np.zeros((batch, seq), np.float32)
        mask[:, seq - padded:] = F32_MIN
    return qkv, mask


def check_emulated(attention, qkv, heads, batch, mask, threads=2):
    H, T = qkv.shape[0] // 3, qkv.shape[1]
    ctx = np.full((H, T), np.nan, np.float32)
    attention(qkv, ctx, heads, batch, mask, threads)
    want = emulate(qkv, heads, batch, mask)
    # the kernel's exp differs from float64's in the last bits, which can move rint(255 p) of an
    # entry by 1: each such move shifts the context by at most max|V| / (sum of P) <= max|V| / 255
    vmax = np.abs(qkv[2 * H:]).max()
    np.testing.assert_allclose(ctx, want, rtol=0, atol=3 * vmax / 255 + 1e-6)
    return ctx


@pytest.mark.parametrize("heads,d,batch,seq,padded", [
    (12, 64, 1, 128, 0),      # BERT-Base
    (12, 32, 2, 37, 11),      # MiniLM: d 32, seq not a multiple of 4, padded keys
    (4, 64, 3, 16, 5),        # BERT-Mini
    (2, 8, 1, 1, 0),          # one token
    (3, 4, 2, 33, 0),         # smallest head; one query past a tile
    (1, 64, 1, 200, 150),     # mostly padding
])
def test_matches_the_emulated_quantization(attention, heads, d, batch, seq, padded):
    rng = np.random.default_rng(seq)
    qkv, mask = make(rng, heads, d, batch, seq, padded)
    ctx = check_emulated(attention, qkv, heads, batch, mask)
    # and close to float64 attention: every token's context vector within 0.995 cosine (random
    # scores of standard deviation 4: peaked softmaxes, where 8-bit P loses the most)
    want = reference(qkv, heads, batch, mask)
    cos = np.sum(ctx * want, axis=0) / np.linalg.norm(ctx, axis=0) / np.linalg.norm(want, axis=0)
    assert cos.min() >= 0.995, cos.min()


@settings(max_examples=examples(40), deadline=None)
@given(heads=st.integers(1, 4), d=st.sampled_from([4, 8, 12, 32, 64]), batch=st.integers(1, 3),
       seq=st.integers(1, 70), padded=st.integers(0, 70), threads=st.integers(1, 3),
       q_scale=st.sampled_from([0.0, 0.1, 1.0, 4.0]), seed=st.integers(0, 2 ** 16))
def test_random_shapes_match_the_emulation(attention, heads, d, batch, seq, padded, threads, q_scale, seed):
    qkv, mask = make(np.random.default_rng(seed), heads, d, batch, seq, min(padded, seq), q_scale)
    check_emulated(attention, qkv, heads, batch, mask, threads)


def test_all_padding_sequence_attends_uniformly(attention):
    rng = np.random.default_rng(3)
    qkv, _ = make(rng, 2, 8, 2, 9)
    mask = np.zeros((2, 9), np.float32)
    mask[1] = F32_MIN
    ctx = check_emulated(attention, qkv, 2, 2, mask)
    H = 16
    v = qkv[2 * H:, 9:].astype(np.float64)
    vmax = np.abs(v).max(axis=1, keepdims=True)
    vq = np.rint(v / (vmax / 127)) * (vmax / 127)       # the uniform mean of the quantized V
    np.testing.assert_allclose(ctx[:, 9:], np.repeat(vq.mean(axis=1, keepdims=True), 9, axis=1), atol=1e-6)


def test_zero_and_constant_inputs(attention):
    qkv = np.zeros((3 * 8, 5), np.float32)
    ctx = np.full((8, 5), np.nan, np.float32)
    attention(qkv, ctx, 2, 1, None, 2)
    assert np.all(ctx == 0)
    qkv[16:] = 2.5                                        # V constant: every context is V
    attention(qkv, ctx, 2, 1, None, 2)
    np.testing.assert_allclose(ctx, 2.5, rtol=1e-6)


@pytest.mark.parametrize("change,error,match", [
    (lambda a: dict(a, qkv=a["qkv"].astype(np.float64)), TypeError, "qkv must be float32"),
    (lambda a: dict(a, qkv=np.asfortranarray(a["qkv"])), ValueError, "qkv must have contiguous rows"),
    (lambda a: dict(a, ctx=a["ctx"][:, ::2]), ValueError, "ctx must have contiguous rows"),
    (lambda a: dict(a, ctx=np.zeros((24, 8), np.float32)[:, :6]), ValueError, "same row stride"),
    (lambda a: dict(a, heads=4), ValueError, "multiple of 4"),        # head size 6
    (lambda a: dict(a, heads=0), ValueError, "heads must be an integer from 1"),
    (lambda a: dict(a, batch=4), ValueError, "do not split into 4 sequences"),
    (lambda a: dict(a, qkv=a["qkv"][:30]), ValueError, "qkv must have shape"),
    (lambda a: dict(a, mask=np.zeros((1, 5), np.float32)), ValueError, "mask must have shape"),
    (lambda a: dict(a, mask=np.zeros((2, 3), np.float64)), TypeError, "mask must be float32"),
    (lambda a: dict(a, ctx=a["qkv"][:24]), ValueError, "overlap"),
    (lambda a: dict(a, threads=0), ValueError, "threads must be an integer from 1"),
])
def test_bad_arguments_raise(attention, change, error, match):
    H, T = 24, 6
    args = dict(qkv=np.zeros((3 * H, T), np.float32), ctx=np.zeros((H, T), np.float32), heads=2,
                batch=2, mask=None, threads=2)
    args = change(args)
    with pytest.raises(error, match=match):
        attention(args["qkv"], args["ctx"], args["heads"], args["batch"], args["mask"], args["threads"])


def test_encoder_attention_option():
    enc = BertEncoder.random("bert-mini", sparsity=0.9, dtype="int8")
    assert enc.attention == "int8" and "int8 attention" in enc.describe()
    assert enc.as_float32().attention == "float32" and enc.as_dense().attention == "float32"
    ids = np.random.default_rng(0).integers(0, 1000, (2, 20))
    y8 = enc(ids)
    y32 = BertEncoder.random("bert-mini", sparsity=0.9, dtype="int8", attention="float32")(ids)
    cos = np.sum(y8 * y32, axis=-1) / np.linalg.norm(y8, axis=-1) / np.linalg.norm(y32, axis=-1)
    assert cos.min() >= 0.99
    with pytest.raises(ModelError, match="'float32' or 'int8'"):
        BertEncoder.random("bert-mini", attention="bf16")
    odd = dataclasses.replace(model_config("bert-mini"), hidden=264, heads=4)      # head size 66
    with pytest.raises(ModelError, match="multiple of 4"):
        BertEncoder.random(odd, attention="int8")
