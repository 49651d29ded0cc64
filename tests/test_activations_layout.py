"""Activations with rows padded apart (sparsebench.arrays.activations): every op gives the same
bits on them as on C-contiguous arrays, and the padding is never read or written."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsebench as sb
from sparsebench import cpu
from sparsebench.arrays import ALIASING_STRIDE, activations, padded_columns
from sparsebench.quant import quantize_activations

from conftest import examples

SENTINEL = np.float32(1234.5)


def padded_copy(a, pad=16):
    """a copied into rows `pad` floats wider, the padding filled with SENTINEL; returns the view."""
    wide = np.full((a.shape[0], a.shape[1] + pad), SENTINEL, np.float32)
    view = wide[:, :a.shape[1]]
    view[...] = a
    return view


def padding_untouched(view):
    wide = np.lib.stride_tricks.as_strided(view, (view.shape[0], view.strides[0] // 4), view.strides)
    return bool(np.all(wide[:, view.shape[1]:] == SENTINEL))


@pytest.mark.parametrize("cols, stride", [(1, 1), (100, 100), (128, 128), (384, 384), (512, 528),
                                          (1024, 1040), (3072, 3072 + 16)])
def test_rows_are_padded_only_where_they_would_alias(cols, stride):
    assert padded_columns(cols) == stride
    a = activations(7, cols)
    assert a.shape == (7, cols) and a.strides == (4 * stride, 4) and a.dtype == np.float32
    assert (a.strides[0] % ALIASING_STRIDE != 0)
    assert padded_columns(2048, 1) == 2048 + 64 and padded_columns(1024, 1) == 1024


@pytest.fixture(params=cpu.encoder_isas())
def ops(request):
    return cpu.encoder_module(request.param)


@settings(max_examples=examples(15), deadline=None)
@given(H=st.integers(1, 70), T=st.integers(1, 90), residual=st.booleans(), threads=st.integers(1, 3),
       seed=st.integers(0, 2 ** 32 - 1))
def test_layer_norm_and_gelu_on_padded_rows(H, T, residual, threads, seed):
    for isa in cpu.encoder_isas():
        _layer_norm_and_gelu(cpu.encoder_module(isa), H, T, residual, threads, seed)


def _layer_norm_and_gelu(ops, H, T, residual, threads, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((H, T)).astype(np.float32)
    r = rng.standard_normal((H, T)).astype(np.float32) if residual else None
    g, b = rng.standard_normal(H).astype(np.float32), rng.standard_normal(H).astype(np.float32)
    want = ops.add_layer_norm(x.copy(), g, b, 1e-5, r, threads)
    xp = padded_copy(x)
    got = ops.add_layer_norm(xp, g, b, 1e-5, None if r is None else padded_copy(r, 48), threads)
    assert got is xp and np.array_equal(got, want) and padding_untouched(xp)
    want = ops.gelu_(x.copy(), threads)
    xp = padded_copy(x, 32)
    assert np.array_equal(ops.gelu_(xp, threads), want) and padding_untouched(xp)


@pytest.mark.parametrize("heads, d, batch, seq", [(2, 64, 3, 17), (1, 64, 2, 128), (3, 16, 2, 5)])
def test_attention_on_padded_rows(ops, heads, d, batch, seq):
    rng = np.random.default_rng(heads * d + seq)
    qkv = (rng.standard_normal((3 * heads * d, batch * seq)) * 0.5).astype(np.float32)
    want = ops.attention(qkv, np.empty((heads * d, batch * seq), np.float32), heads, batch, None, 2)
    qp = padded_copy(qkv)
    ctx = padded_copy(np.zeros_like(want))
    assert np.array_equal(ops.attention(qp, ctx, heads, batch, None, 2), want)
    assert padding_untouched(ctx)
    if hasattr(ops, "attention_int8"):
        want = ops.attention_int8(qkv, np.empty_like(want), heads, batch, None, 2)
        assert np.array_equal(ops.attention_int8(qp, ctx, heads, batch, None, 2), want)
        assert padding_untouched(ctx)


@pytest.mark.parametrize("M, K, N", [(8, 12, 1024), (13, 9, 512), (6, 4, 33)])
@pytest.mark.parametrize("block", [(4, 1), (1, 4), (4, 4)])
def test_spmm_on_padded_rows(M, K, N, block):
    rng = np.random.default_rng(M * K + N)
    W = rng.standard_normal((M, K)).astype(np.float32)
    W[rng.random((M, K)) < 0.5] = 0
    X = rng.standard_normal((K, N)).astype(np.float32)
    A = sb.BSRMatrix.from_dense(W, block)
    out = padded_copy(np.zeros((M, N), np.float32))
    np.testing.assert_array_equal(sb.spmm(A, padded_copy(X), out=out), sb.spmm(A, X))
    assert padding_untouched(out)
    if cpu.available_isas("int8"):
        Aq = sb.QuantizedBSRMatrix.from_dense(W, block)
        q = quantize_activations(padded_copy(X), block)
        np.testing.assert_array_equal(q.to_uint8(), quantize_activations(X, block).to_uint8())
        np.testing.assert_array_equal(sb.spmm(Aq, q, out=out), sb.spmm(Aq, X))
        assert padding_untouched(out)


def test_layer_norm_refuses_a_residual_overlapping_x(ops):
    buf = np.zeros((8, 20), np.float32)
    g = np.ones(8, np.float32)
    with pytest.raises(ValueError, match="must not overlap"):
        ops.add_layer_norm(buf[:, :10], g, g, 1e-5, buf[:, 1:11])
