"""sparsebench.torch: SparseLinear and sparsify against float64 and dense PyTorch, torch.compile,
pickling, error cases, and Hugging Face models (tiny random configs built offline, MiniLM)."""
import copy
import dataclasses
import importlib
import io
import pickle
import sys
import threading
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsebench as sb
from sparsebench import cpu
from conftest import examples
from test_models import minilm_path, rel_diff, write_tuned

INSTALL_HINT = 'needs PyTorch: pip install "sparsebench[torch]"'
try:
    import torch
    import sparsebench.torch as sbt
except ImportError:
    torch = sbt = None
needs_torch = pytest.mark.skipif(torch is None, reason=INSTALL_HINT)
needs_vnni = pytest.mark.skipif(not cpu.available_isas("int8"), reason="this CPU (or build) has no AVX512-VNNI kernels")


def cosine_per_row(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def linear(in_features, out_features, bias=True, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Linear(in_features, out_features, bias=bias).eval()


def reference(layer, x):
    """float64 x @ W.T + b with the layer's (pruned) weights."""
    b = None if layer.bias is None else layer.bias.double()
    return torch.nn.functional.linear(x.double(), layer.weight.double(), b).detach().numpy()


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.GELU(), torch.nn.Linear(96, 40)).eval()


def test_import_without_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)              # `import torch` fails
    monkeypatch.delitem(sys.modules, "sparsebench.torch", raising=False)
    with pytest.raises(ImportError, match=r'pip install "sparsebench\[torch\]" \(torch==2\.13\.0'):
        importlib.import_module("sparsebench.torch")


# -- SparseLinear -----------------------------------------------------------------------------------

@needs_torch
@pytest.mark.parametrize("block", [(4, 1), (1, 1), (4, 4), (16, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_matches_float64_for_any_leading_dims(block, bias):
    dense = linear(50, 70, bias)                                  # neither a multiple of any block
    layer = sbt.SparseLinear.from_linear(dense, sparsity=0.8, block=block)
    assert (layer.in_features, layer.out_features, layer.block) == (50, 70, block)
    assert layer.sparsity == pytest.approx(0.8, abs=0.02)
    assert (layer.bias is None) == (not bias) and not layer.weight.requires_grad
    x = torch.randn(3, 13, 50)
    for inputs in (x, x[0], x[0, 0], x.reshape(3, 13, 1, 50), x[:, :0]):
        with torch.inference_mode():
            y = layer(inputs)
        assert y.shape == inputs.shape[:-1] + (70,) and y.dtype == torch.float32 and y.is_contiguous()
        if inputs.numel():
            assert rel_diff(y.numpy(), reference(layer, inputs)) <= 1e-5
    with torch.no_grad():                                          # a non-contiguous view, no_grad
        assert rel_diff(layer(x.transpose(0, 1)).numpy(), reference(layer, x.transpose(0, 1))) <= 1e-5


@needs_torch
def test_pruned_weights_keep_their_detected_block_and_are_shared():
    dense = linear(64, 96)
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(sb.prune(dense.weight.numpy(), 0.75, (8, 1))))
    layer = sbt.SparseLinear.from_linear(dense)
    assert layer.block == (8, 1) and layer.sparsity == pytest.approx(0.75, abs=0.01)
    assert layer.weight.data_ptr() == dense.weight.data_ptr()       # kept weights are not copied
    assert "block=8x1, sparsity=0.750" in repr(layer)
    pruned = sbt.SparseLinear.from_linear(dense, sparsity=0.9)
    assert pruned.block == (4, 1) and pruned.weight.data_ptr() != dense.weight.data_ptr()
    x = torch.randn(5, 64)
    assert rel_diff(layer(x).numpy(), reference(dense, x)) <= 1e-5


@needs_torch
@needs_vnni
def test_int8_sparse_linear_is_close_to_float32():
    dense = linear(256, 192)
    layer8 = sbt.SparseLinear.from_linear(dense, sparsity=0.8, dtype="int8")
    assert layer8.kernel(37).startswith("int8/")
    x = torch.randn(37, 256)
    with torch.inference_mode():
        y = layer8(x).numpy()
    assert cosine_per_row(y, reference(layer8, x)).min() >= 0.99
    with pytest.raises(ValueError, match="no int8 kernels for 1x1"):
        sbt.SparseLinear.from_linear(dense, sparsity=0.8, block=(1, 1), dtype="int8")


@needs_torch
def test_tuned_dense_verdict_runs_torch_linear_per_token_count(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEBENCH_NUM_THREADS", "2")
    config = sb.KernelConfig((4, 1), cpu.best_isa(), 16, threads=2)
    path = write_tuned(tmp_path / "tuned.json", [(96, 48, 10, 0.75, "dense", None),
                                                 (96, 48, 16, 0.75, "sparse", config)])
    layer = sbt.SparseLinear.from_linear(linear(48, 96), sparsity=0.75, tuned=path)
    assert layer.kernel(10) == "dense" and layer.kernel(16) == str(config)
    inputs = [torch.randn(n, 48) for n in (10, 16, 10)]
    expected = [reference(layer, x) for x in inputs]
    calls = []
    real_linear = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear", lambda *a: calls.append(1) or real_linear(*a))
    with torch.inference_mode():
        for x, y in zip(inputs, expected):
            assert rel_diff(layer(x).numpy(), y) <= 1e-5
    assert len(calls) == 2                                          # N = 10 twice, N = 16 on the kernels


@needs_torch
def test_errors_say_what_is_wrong():
    layer = sbt.SparseLinear.from_linear(linear(48, 96), sparsity=0.8)
    x = torch.randn(4, 48)
    with pytest.raises(ValueError, match="runs on the CPU only.*on meta"):     # as a CUDA tensor would
        layer(x.to("meta"))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        with pytest.raises(TypeError, match=f"takes float32 input, got {dtype}"):
            layer(x.to(dtype))
    with pytest.raises(ValueError, match=r"expects input of shape \(\.\.\., 48\), got \(4, 47\)"):
        layer(x[:, :47])
    with pytest.raises(TypeError, match="takes a torch.Tensor, got ndarray"):
        layer(x.numpy())
    with pytest.raises(RuntimeError, match="inference only.*model.eval()"):
        layer(x.clone().requires_grad_())                            # grad mode on
    with torch.no_grad():
        layer(x.clone().requires_grad_())                            # fine without grad
    layer.train()
    with pytest.raises(RuntimeError, match="inference only"):
        layer(x)
    layer.eval()
    with pytest.raises(ValueError, match="float32 on the CPU only.*on meta"):  # .cuda() on a CPU-only machine
        layer.to("meta")
    with pytest.raises(ValueError, match="cannot move to torch.float16"):
        layer.half()
    assert layer.weight.dtype == torch.float32 and layer(x).shape == (4, 96)   # left as it was
    with pytest.raises(ValueError, match="float16 on cpu; .*model.float"):
        sbt.SparseLinear.from_linear(linear(48, 96).half())
    with pytest.raises(TypeError, match="takes a torch.nn.Linear, got Conv1d"):
        sbt.SparseLinear.from_linear(torch.nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="sparsity must be in"):
        sbt.SparseLinear.from_linear(linear(48, 96), sparsity=1.5)
    with pytest.raises(ValueError, match="unsupported block shape 3x3"):
        sbt.SparseLinear.from_linear(linear(48, 96), sparsity=0.5, block=(3, 3))
    with pytest.raises(ValueError, match=r"weight must be 2-D, got shape \(4,\)"):
        sbt.SparseLinear(torch.zeros(4))
    with pytest.raises(ValueError, match=r"bias has shape \(5,\), needs \(4,\)"):
        sbt.SparseLinear(torch.zeros(4, 4), torch.zeros(5))
    assert sbt.SparseLinear.from_linear(linear(48, 96), sparsity=0.5, threads=1).kernel(16).endswith("/t1")


@needs_torch
def test_the_op_refuses_a_freed_handle():
    layer = sbt.SparseLinear.from_linear(linear(8, 8), sparsity=0.5)
    handle = layer._handle
    del layer
    with pytest.raises(RuntimeError, match=f"no live sparsebench module has handle {handle}"):
        torch.ops.sparsebench.spmm_linear(torch.randn(2, 8), handle, 8)


# -- state: pickles, state_dicts, torch.compile --------------------------------------------------------

@needs_torch
def test_pickle_state_dict_and_deepcopy_round_trip():
    model = mlp()
    sbt.sparsify(model, sparsity=0.9)
    x = torch.randn(2, 7, 48)
    with torch.no_grad():
        y = model(x)
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model), torch.load(buffer, weights_only=False)):
            assert isinstance(other[0], sbt.SparseLinear) and other[0]._handle != model[0]._handle
            assert torch.equal(other(x), y)
        dense = mlp(seed=1)
        dense.load_state_dict(model.state_dict())                   # the same names as nn.Linear
        assert rel_diff(dense(x).numpy(), y.numpy()) <= 1e-5
        model.load_state_dict(mlp(seed=2).state_dict())              # the kernels follow new weights
        assert rel_diff(model(x).numpy(), mlp(seed=2)(x).numpy()) <= 1e-5
        model[0].weight.mul_(2)                                       # and in-place edits
        assert rel_diff(model[0](x).numpy(), reference(model[0], x)) <= 1e-5


@needs_torch
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    model = mlp()
    sbt.sparsify(model, sparsity=0.8)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.inference_mode():
        for seq in (7, 9):                                          # a second shape recompiles, still one graph
            x = torch.randn(2, seq, 48)
            try:
                y = compiled(x)
            except torch._dynamo.exc.BackendCompilerFailed as e:
                pytest.skip(f"the inductor toolchain is not usable here: {str(e).splitlines()[0]}")
            assert rel_diff(y.numpy(), model(x).numpy()) <= 1e-5


# -- sparsify ---------------------------------------------------------------------------------------------

@needs_torch
def test_sparsify_replaces_what_is_sparse_enough():
    model = torch.nn.Sequential(mlp(), torch.nn.Linear(40, 8)).eval()
    with torch.no_grad():
        first = model[0][0].weight
        first.copy_(torch.from_numpy(sb.prune(first.numpy(), 0.7, (4, 4))))
    x = torch.randn(3, 48)
    with torch.no_grad():
        expected = model(x)
    summary = sbt.sparsify(model)
    assert isinstance(model[0][0], sbt.SparseLinear) and type(model[0][2]) is torch.nn.Linear
    assert [(r.name, r.block, r.kernel) for r in summary.replaced] == [("0.0", (4, 4), "default heuristic")]
    assert "0.0% block sparse < min_sparsity 0.5" in summary[1].note
    table = str(summary)
    assert table.splitlines()[0].split() == ["layer", "shape", "block", "sparsity", "kernel"]
    assert "0.0    96x48  4x4    70.1%" in table and table.endswith("1 of 3 linear layers on sparsebench's kernels")
    with torch.no_grad():
        assert rel_diff(model(x).numpy(), expected.numpy()) <= 1e-5


@needs_torch
def test_sparsify_include_exclude_and_nothing_sparse():
    model = mlp()
    with pytest.warns(UserWarning, match="no linear layer of Sequential is sparse enough"):
        summary = sbt.sparsify(model)
    assert not summary.replaced and all(type(m) is not sbt.SparseLinear for m in model)
    summary = sbt.sparsify(model, sparsity=0.9, include="*", exclude=["2"])
    assert [r.name for r in summary.replaced] == ["0"] and type(model[2]) is torch.nn.Linear
    with pytest.raises(TypeError, match="SparseLinear.from_linear"):
        sbt.sparsify(torch.nn.Linear(4, 4))
    with pytest.raises(TypeError, match="fnmatch patterns"):
        sbt.sparsify(mlp(), include=[3])
    half = mlp().half()
    with pytest.raises(ValueError, match="float16 on cpu"):
        sbt.sparsify(half, sparsity=0.5, exclude="2")
    assert all(type(m) is not sbt.SparseLinear for m in half)       # nothing changed


@needs_torch
def test_sparsify_keeps_layers_dense_where_tuning_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEBENCH_NUM_THREADS", "2")
    config = sb.KernelConfig((4, 1), cpu.best_isa(), 16, threads=2)
    path = write_tuned(tmp_path / "tuned.json", [(96, 48, 16, 0.8, "dense", None), (96, 48, 64, 0.8, "dense", None),
                                                 (40, 96, 16, 0.8, "sparse", config), (40, 96, 64, 0.8, "dense", None)])
    model = mlp()
    tied = model[0].weight
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # no fallback warnings from the summary
        summary = sbt.sparsify(model, sparsity=0.8, tuned=path)
    assert type(model[0]) is torch.nn.Linear and isinstance(model[2], sbt.SparseLinear)
    assert summary[0].kernel == "dense" and summary[0].note == "tuned: dense is faster"
    assert summary[1].kernel == f"N=16: {config}, N=64: dense"
    assert (model[0].weight == 0).float().mean() == pytest.approx(0.8, abs=0.01)   # pruned all the same
    assert tied.count_nonzero() == tied.numel()                     # a weight tied to it is untouched


@needs_torch
def test_sparsify_summary_names_the_kernels_that_run_in_each_layout(monkeypatch):
    """A fused layer's linear layers run feature-major (our encoder's layer body), its Q, K and V
    in one call, an unfused SparseLinear token-major: the summary shows the config each one runs."""
    from sparsebench.tune.apply import TunedConfigs
    monkeypatch.setenv("SPARSEBENCH_NUM_THREADS", "2")
    features = sb.KernelConfig((4, 1), cpu.best_isa(), 16, prefetch=0, threads=2)
    tokens = dataclasses.replace(features, prefetch=4)
    shapes = [(64, 64), (128, 64), (64, 128)]
    table = TunedConfigs({"entries": [
        {"M": M, "K": K, "N": 16, "sparsity": 0.8, "block": [4, 1], "dtype": "float32", "threads": 2,
         "method": "sparse", "config": config.to_dict(), "layout": layout}
        for M, K in shapes for layout, config in (("features", features), ("tokens", tokens))]})
    query = "encoder.layer.0.attention.self.query"
    for fuse, expected in ((True, features), (False, tokens)):
        model = tiny_hf("bert")
        summary = sbt.sparsify(model, sparsity=0.8, tuned=table, fuse_layers=fuse)
        assert bool(summary.fused_layers) == fuse
        rows = {r.name: r for r in summary}
        assert rows[query].kernel == f"N=16: {expected}"
        assert rows["pooler.dense"].kernel == f"N=16: {tokens}"          # never inside a fused layer
        for name in ("query", "key", "value", "output.dense"):
            row = rows[f"encoder.layer.1.attention.{'self.' * (name != 'output.dense')}{name}"]
            assert row.kernel == f"N=16: {expected}"
            assert ("Q, K and V in one call" in row.note) == (fuse and name != "output.dense")
        if fuse:      # the fused layer runs the query's scaled matrix: the summary keeps no other
            assert 1.0 not in model.get_submodule(query)._kernels


# -- Hugging Face -------------------------------------------------------------------------------------------

TINY_HF = {"bert": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
           "roberta": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                           pad_token_id=1, type_vocab_size=1),
           "distilbert": dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128)}


def tiny_hf(kind, head="Model", vocab_size=100, seed=0):
    """A random transformers model of `kind` (bert, roberta, distilbert) with 2 layers of hidden 64,
    built offline; weights drawn wider than the default init so that pruning shows."""
    transformers = pytest.importorskip("transformers", reason="needs transformers: pip install transformers")
    prefix = {"bert": "Bert", "roberta": "Roberta", "distilbert": "DistilBert"}[kind]
    config = getattr(transformers, prefix + "Config")(vocab_size=vocab_size, max_position_embeddings=64,
                                                      **TINY_HF[kind])
    torch.manual_seed(seed)
    model = getattr(transformers, prefix + head)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    return model


def padded_inputs(vocab_size=100, batch=3, seq=13, seed=0):
    """input_ids and an attention mask with padding (rows 1 and 2 padded), odd sequence length."""
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(rng.integers(2, vocab_size, (batch, seq)))
    mask = torch.ones_like(ids)
    mask[1, seq - 4:] = 0
    mask[2, 5:] = 0
    return ids, mask


def sparsified_and_dense(model, **options):
    """`model` sparsified in place, and a dense copy holding the same (pruned) weights."""
    dense = copy.deepcopy(model)
    summary = sbt.sparsify(model, **options)
    dense.load_state_dict(model.state_dict())
    return summary, dense


@needs_torch
@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta"])
@pytest.mark.parametrize("block", [(4, 1), (1, 1)])
def test_hugging_face_models_match_dense_with_the_same_pruned_weights(kind, block):
    model = tiny_hf(kind)
    summary, dense = sparsified_and_dense(model, sparsity=0.8, block=block)
    assert len(summary.replaced) == len(summary) == (12 if kind == "distilbert" else 13)     # 6 a layer, pooler
    assert all(isinstance(model.get_submodule(r.name), sbt.SparseLinear) for r in summary)
    fused = [r.name for r in summary if "GELU fused" in r.note]
    assert fused == ([f"transformer.layer.{i}.ffn.lin1" for i in range(2)] if kind == "distilbert" else
                     [f"encoder.layer.{i}.intermediate.dense" for i in range(2)])
    assert all(model.get_submodule(n).activation == "gelu" for n in fused)
    ids, mask = padded_inputs()
    for args in ((ids, mask), (ids[:1, :7], None)):
        with torch.inference_mode():
            y = model(input_ids=args[0], attention_mask=args[1]).last_hidden_state
            ref = dense(input_ids=args[0], attention_mask=args[1]).last_hidden_state
        assert rel_diff(y.numpy(), ref.numpy()) <= 1e-4


@needs_torch
@pytest.mark.parametrize("kind, head", [("bert", "ForSequenceClassification"), ("distilbert", "ForQuestionAnswering"),
                                        ("roberta", "ForMaskedLM")])
def test_task_heads_are_sparsified_too(kind, head):
    model = tiny_hf(kind, head)
    summary, dense = sparsified_and_dense(model, sparsity=0.7, exclude="*classifier*")
    assert not any("classifier" in r.name for r in summary) and len(summary.replaced) >= 12
    if head == "ForMaskedLM":                                      # the decoder shares the word embeddings
        assert summary[-1].name == "lm_head.decoder" and summary[-1].note == \
            "weight tied to roberta.embeddings.word_embeddings.weight"
    ids, mask = padded_inputs()
    with torch.no_grad():
        for y, ref in zip(model(input_ids=ids, attention_mask=mask).values(),
                          dense(input_ids=ids, attention_mask=mask).values()):
            assert rel_diff(y.numpy(), ref.numpy()) <= 1e-4


def minilm_tokenizer(monkeypatch):
    transformers = pytest.importorskip("transformers", reason="needs transformers: pip install transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return transformers.AutoTokenizer.from_pretrained(minilm_path())


SENTENCES = ["A sparse kernel makes BERT fast on a small CPU.", "Hello world",
             "Pruned transformers run their linear layers on block-sparse kernels."]


@needs_torch
def test_pipeline_with_a_sparsified_classifier(monkeypatch):
    transformers = pytest.importorskip("transformers")
    tokenizer = minilm_tokenizer(monkeypatch)
    model = tiny_hf("bert", "ForSequenceClassification", vocab_size=tokenizer.vocab_size)
    summary, dense = sparsified_and_dense(model, sparsity=0.8)
    classify = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None)
    reference = transformers.pipeline("text-classification", model=dense, tokenizer=tokenizer, top_k=None)
    for got, want in zip(classify(SENTENCES), reference(SENTENCES)):
        assert [g["label"] for g in got] == [w["label"] for w in want]
        assert np.allclose([g["score"] for g in got], [w["score"] for w in want], rtol=1e-4)


@needs_torch
def test_sentence_transformers_minilm(monkeypatch):
    sentence_transformers = pytest.importorskip("sentence_transformers", reason="needs sentence-transformers")
    minilm_tokenizer(monkeypatch)
    model = sentence_transformers.SentenceTransformer(minilm_path(), device="cpu").eval()
    with pytest.warns(UserWarning, match="no linear layer .* is sparse enough"):
        assert not sbt.sparsify(model).replaced                     # the checkpoint is dense
    summary, dense = sparsified_and_dense(model, sparsity=0.9, block=(4, 1))
    assert len(summary.replaced) == 37                               # 6 a layer and the pooler
    y, ref = model.encode(SENTENCES), dense.encode(SENTENCES)
    assert rel_diff(y, ref) <= 1e-4


@needs_torch
@needs_vnni
def test_minilm_int8_every_token_close_to_float32(monkeypatch):
    transformers = pytest.importorskip("transformers")
    tokenizer = minilm_tokenizer(monkeypatch)
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    fp32 = transformers.BertModel.from_pretrained(minilm_path(), add_pooling_layer=False).eval()
    int8 = copy.deepcopy(fp32)
    sbt.sparsify(fp32, sparsity=0.8, block=(4, 1))
    sbt.sparsify(int8, sparsity=0.8, block=(4, 1), dtype="int8")   # the same pruning
    assert all(m.dtype == "int8" for m in int8.modules() if isinstance(m, sbt.SparseLinear))
    with torch.inference_mode():
        y8, y32 = (m(**batch).last_hidden_state.numpy() for m in (int8, fp32))
    tokens = batch["attention_mask"].numpy().astype(bool)
    assert cosine_per_row(y8[tokens], y32[tokens]).min() >= 0.99


# -- our BertEncoder on DistilBERT and RoBERTa checkpoints ------------------------------------------------

@needs_torch
@pytest.mark.parametrize("kind", ["distilbert", "roberta"])
def test_bert_encoder_reads_distilbert_and_roberta_checkpoints(kind, tmp_path):
    pytest.importorskip("safetensors", reason="needs safetensors: pip install safetensors")
    from sparsebench.models import BertEncoder, ModelError

    model = tiny_hf(kind)
    model.save_pretrained(tmp_path)
    enc = BertEncoder.from_pretrained(tmp_path)
    assert enc.config.model_type == kind and enc.config.type_vocab_size == (0 if kind == "distilbert" else 1)
    ids, mask = padded_inputs()
    ids[2, 5:] = model.config.pad_token_id                          # padding tokens, as a tokenizer pads
    for args in ((ids, mask), (ids[:1, :7], None)):
        with torch.no_grad():
            ref = model(input_ids=args[0], attention_mask=args[1]).last_hidden_state.numpy()
        assert rel_diff(enc(args[0].numpy(), None if args[1] is None else args[1].numpy()), ref) <= 1e-4
    assert set(enc.state_dict()) == {k for k in model.state_dict() if not k.startswith("pooler.")}
    longest = 64 - enc.config.position_offset
    enc(np.ones((1, longest), np.int64))
    with pytest.raises(ModelError, match=f"exceeds the model's {longest} positions"):
        enc(np.ones((1, longest + 1), np.int64))
    if kind == "distilbert":
        with pytest.raises(ModelError, match=r"has no token types: pass token_type_ids=None"):
            enc(ids.numpy(), mask.numpy(), np.zeros_like(ids.numpy()))


# -- the CLI: sparsebench bert --compare torch-sparsify ------------------------------------------------------

@needs_torch
def test_bert_cli_compares_torch_sparsify(tmp_path, capsys):
    pytest.importorskip("transformers", reason="needs transformers: pip install transformers")
    from sparsebench.cli.main import main

    assert main(["bert", "--model", "bert-mini", "--seq", "16", "--samples", "3", "--compare",
                 "dense,torch,torch-sparsify", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in printed.splitlines() if line.startswith("  torch")}
    assert set(rows) == {"torch", "torch-sparsify"} and float(rows["torch-sparsify"][5]) <= 1e-4     # max rel diff
    latency = next(tmp_path.glob("*latency.csv")).read_text()
    assert "after sparsebench.torch.sparsify (24 of 24 linear layers on the float32 kernels, 4 transformer layers run whole)" in latency


@needs_torch
@pytest.mark.parametrize("kind", ["distilbert", "roberta"])
def test_runner_baselines_on_distilbert_and_roberta_checkpoints(kind, tmp_path):
    pytest.importorskip("safetensors", reason="needs safetensors: pip install safetensors")
    from sparsebench.models import BertEncoder, runner

    tiny_hf(kind).save_pretrained(tmp_path)
    enc = BertEncoder.from_pretrained(tmp_path, sparsity=0.8, block=(4, 1))
    rows = runner.compare(enc, 2, 11, ["dense", "torch", "torch-sparsify"], samples=2, time_limit=5)
    assert [r["method"] for r in rows] == ["sparsebench", "dense", "torch", "torch-sparsify"]
    assert all(r["max_rel_diff_vs_ours"] <= 1e-4 for r in rows)


@needs_torch
def test_gelu_fusion_is_optional_and_exact():
    model = tiny_hf("bert")
    plain = copy.deepcopy(model)
    summary = sbt.sparsify(model, sparsity=0.8, fuse_gelu=False)
    assert not any("GELU fused" in r.note for r in summary)
    assert isinstance(model.encoder.layer[0].intermediate.intermediate_act_fn, type(plain.encoder.layer[0].intermediate.intermediate_act_fn))
    fused = copy.deepcopy(plain)
    sbt.sparsify(fused, sparsity=0.8)
    assert isinstance(fused.encoder.layer[0].intermediate.intermediate_act_fn, torch.nn.Identity)
    ids, mask = padded_inputs()
    with torch.inference_mode():
        a = model(input_ids=ids, attention_mask=mask).last_hidden_state
        b = fused(input_ids=ids, attention_mask=mask).last_hidden_state
    assert rel_diff(a.numpy(), b.numpy()) <= 1e-5
    restored = pickle.loads(pickle.dumps(fused))
    with torch.inference_mode():
        assert torch.equal(restored(input_ids=ids, attention_mask=mask).last_hidden_state, b)


@needs_torch
def test_tanh_gelu_is_not_fused():
    model = tiny_hf("bert")
    for layer in model.encoder.layer:
        layer.intermediate.intermediate_act_fn = torch.nn.GELU(approximate="tanh")
    summary = sbt.sparsify(model, sparsity=0.8)
    assert not any("GELU fused" in r.note for r in summary)


@needs_torch
@pytest.mark.parametrize("n", [0, 1, 7, 33])
def test_sparse_linear_gelu_matches_torch(n):
    rng = np.random.default_rng(n)
    W = rng.standard_normal((24, 20)).astype(np.float32)
    W[rng.random((24, 20)) < 0.7] = 0
    b = rng.standard_normal(24).astype(np.float32)
    layer = sbt.SparseLinear(torch.from_numpy(W), torch.from_numpy(b), block=(1, 1), activation="gelu").eval()
    x = torch.from_numpy(rng.standard_normal((n, 20)).astype(np.float32))
    with torch.inference_mode():
        want = torch.nn.functional.gelu(torch.nn.functional.linear(x, layer.weight, layer.bias))
        np.testing.assert_allclose(layer(x).numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="activation"):
        sbt.SparseLinear(torch.from_numpy(W), activation="relu")


# -- whole transformer layers on our kernels (sparsebench.torch.layers) -----------------------------------

def count_linear_calls(monkeypatch):
    """The out_features of every SparseLinear forward that run (a fused layer runs its linears itself)."""
    calls, compute = [], sbt.SparseLinear._compute

    def counted(self, x):
        calls.append(self.out_features)
        return compute(self, x)
    monkeypatch.setattr(sbt.SparseLinear, "_compute", counted)
    return calls


@needs_torch
@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_fused_layers_run_whole_and_match_dense(kind, attention, monkeypatch):
    model = tiny_hf(kind)
    model.config._attn_implementation = attention
    summary, dense = sparsified_and_dense(model, sparsity=0.8)
    prefix = "transformer.layer" if kind == "distilbert" else "encoder.layer"
    assert summary.fused_layers == [f"{prefix}.0", f"{prefix}.1"] and not summary.unfused_layers
    assert "2 of 2 transformer layers run whole" in str(summary)
    layer = model.get_submodule(f"{prefix}.0")
    assert type(layer).__name__ == "Sparse" + type(dense.get_submodule(f"{prefix}.0")).__name__
    assert isinstance(layer, type(dense.get_submodule(f"{prefix}.0")))
    assert list(model.state_dict()) == list(dense.state_dict())
    calls = count_linear_calls(monkeypatch)
    ids, mask = padded_inputs()
    for args in ((ids, mask), (ids[:1, :7], None), (ids[:, :1], mask[:, :1])):
        with torch.inference_mode():
            y = model(input_ids=args[0], attention_mask=args[1]).last_hidden_state
            ref = dense(input_ids=args[0], attention_mask=args[1]).last_hidden_state
        assert rel_diff(y.numpy(), ref.numpy()) <= 1e-4
    assert calls == ([] if kind == "distilbert" else [64] * 3)      # the pooler only
    seen = []                                       # torch's own ops run on one thread up to the first fused layer
    for i in range(2):
        model.get_submodule(f"{prefix}.{i}").register_forward_pre_hook(
            lambda m, a: seen.append(torch.get_num_threads()))
    threads = torch.get_num_threads()
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)
    assert seen == [1, threads] and torch.get_num_threads() == threads
    seen.clear()                                    # but only the main thread changes the process-wide count
    def forward():
        with torch.inference_mode():                # grad mode is per thread
            model(input_ids=ids, attention_mask=mask)
    worker = threading.Thread(target=forward)
    worker.start()
    worker.join()
    assert seen == [threads, threads]


@needs_torch
def test_fused_layers_fall_back_to_transformers_where_they_must():
    model = tiny_hf("bert")
    model.config._attn_implementation = "eager"          # the attention that returns its weights
    summary, dense = sparsified_and_dense(model, sparsity=0.8)
    ids, mask = padded_inputs()
    with torch.inference_mode():                    # attention weights asked for: transformers' forward
        got = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        want = dense(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert len(got.attentions) == 2 and rel_diff(got.attentions[1].numpy(), want.attentions[1].numpy()) <= 1e-4
    assert rel_diff(got.last_hidden_state.numpy(), want.last_hidden_state.numpy()) <= 1e-4
    threads = torch.get_num_threads()
    model.train()                                   # training: transformers' forward, whose linears refuse
    with pytest.raises(RuntimeError, match="inference only"):
        model(input_ids=ids, attention_mask=mask)
    assert torch.get_num_threads() == threads       # torch's threads given back, even after an error
    for options, why in (({"fuse_layers": False}, None), ({"fuse_gelu": False}, "GELU is not fused"),
                         ({"exclude": "*.output.dense"}, "not every linear layer")):
        other = tiny_hf("bert")
        summary = sbt.sparsify(other, sparsity=0.8, **options)
        assert not summary.fused_layers
        assert all(why in w for w in summary.unfused_layers.values()) if why else not summary.unfused_layers
    decoder = tiny_hf("bert")
    decoder.config.is_decoder = True
    for layer in decoder.encoder.layer:
        layer.is_decoder = True
    assert "decoder" in sbt.sparsify(decoder, sparsity=0.8).unfused_layers["encoder.layer.0"]


@needs_torch
def test_fused_masks_are_per_key_padding_or_refused():
    from sparsebench.torch.layers import _key_mask
    keep = torch.tensor([[True, True, False], [True, True, True]])
    lowest = torch.finfo(torch.float32).min
    square = keep[:, None, None, :].expand(2, 1, 3, 3)
    for mask in (keep.long(), keep[:, None, None, :], square, torch.where(square, 0.0, lowest)):
        assert np.array_equal(_key_mask(mask, 2, 3), keep.numpy())
    assert _key_mask(None, 2, 3) is None and _key_mask(torch.ones(2, 1, 3, 3, dtype=torch.bool), 2, 3) is None
    causal = torch.ones(3, 3, dtype=torch.bool).tril()[None, None].expand(2, 1, 3, 3)
    assert _key_mask(causal, 2, 3) is False                          # rows differ
    assert _key_mask(torch.full((2, 1, 1, 3), -2.0), 2, 3) is False  # a bias, not a mask
    assert _key_mask(keep[:, None, None, :], 2, 4) is False          # another shape
    assert _key_mask(keep[:, None, None, :].long(), 2, 3) is False   # neither bool nor float
    assert _key_mask(object(), 2, 3) is False                        # not a tensor (flex attention's BlockMask)


@needs_torch
def test_fused_models_pickle_copy_and_compile(tmp_path):
    model = tiny_hf("distilbert")
    summary, dense = sparsified_and_dense(model, sparsity=0.8)
    ids, mask = padded_inputs()
    with torch.inference_mode():
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert "_sb_cache" in model.transformer.layer[0].__dict__ and b"_sb_cache" not in pickle.dumps(model)
    torch.save(model, tmp_path / "model.pt")
    for restored in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model),
                     torch.load(tmp_path / "model.pt", weights_only=False)):
        assert type(restored.transformer.layer[0]).__name__ == "SparseTransformerBlock"
        with torch.inference_mode():
            assert torch.equal(restored(input_ids=ids, attention_mask=mask).last_hidden_state, want)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.inference_mode():
        got = compiled(input_ids=ids, attention_mask=mask).last_hidden_state
    assert rel_diff(got.numpy(), want.numpy()) <= 1e-6


@needs_torch
def test_fused_layers_fall_back_on_empty_input_and_changed_parts():
    model = tiny_hf("bert")
    summary, dense = sparsified_and_dense(model, sparsity=0.8)
    for layer in (model.encoder.layer[0], dense.encoder.layer[0]):      # no tokens: what transformers does
        with torch.inference_mode(), pytest.raises(RuntimeError, match="tensor of 0 elements"):
            layer(torch.zeros(1, 0, 64))
    ids, mask = padded_inputs()
    model.encoder.layer[1].output.dense = copy.deepcopy(dense.encoder.layer[1].output.dense)   # nn.Linear again
    with torch.inference_mode():
        y, want = (m(input_ids=ids, attention_mask=mask).last_hidden_state for m in (model, dense))
    assert rel_diff(y.numpy(), want.numpy()) <= 1e-4


@needs_torch
@pytest.mark.parametrize("kind", ["bert", "distilbert", "roberta"])
def test_fused_encoders_run_a_batch_in_passes(kind, monkeypatch):
    """With every layer fused, the encoder runs a batch larger than tokens_per_pass in passes of
    whole sequences (padding masks per pass); recorded hidden states go layer by layer."""
    from sparsebench.torch import layers
    model = tiny_hf(kind)
    summary, dense = sparsified_and_dense(model, sparsity=0.8)
    encoder = model.transformer if kind == "distilbert" else model.encoder
    assert type(encoder).__name__ == "Sparse" + type(dense.transformer if kind == "distilbert" else dense.encoder).__name__
    passes, run = [], layers._in_passes                       # the encoder's calls (the whole stack)
    monkeypatch.setattr(layers, "_in_passes", lambda *a: (len(a[0]) > 1 and passes.append(a[3])) or run(*a))
    ids, mask = padded_inputs()                               # 3 sequences of 13 tokens
    for tokens_per_pass in (13, 26, None):
        encoder.tokens_per_pass = tokens_per_pass
        with torch.inference_mode():
            y = model(input_ids=ids, attention_mask=mask).last_hidden_state
            ref = dense(input_ids=ids, attention_mask=mask).last_hidden_state
        assert rel_diff(y.numpy(), ref.numpy()) <= 1e-4
    assert passes == [13, 26, None]
    restored = pickle.loads(pickle.dumps(model))
    assert type(restored.transformer if kind == "distilbert" else restored.encoder) is type(encoder)
    with torch.inference_mode():             # (transformers then holds hooks that do not pickle)
        got = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        want = dense(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert passes == [13, 26, None] and len(got.hidden_states) == 3
    assert all(rel_diff(g.numpy(), w.numpy()) <= 1e-4 for g, w in zip(got.hidden_states, want.hidden_states))


SPIN_SCRIPT = """
import os, warnings
{first}
import torch, sparsebench.torch as sbt
warnings.simplefilter("error")
try:
    sbt.sparsify(torch.nn.Sequential(torch.nn.Linear(8, 8)), sparsity=0.5, block=(1, 1))
    print(os.environ.get("GOMP_SPINCOUNT"), "no warning")
except UserWarning as w:
    print(os.environ.get("GOMP_SPINCOUNT"), "warned:", "GOMP_SPINCOUNT=1000" in str(w))
"""


@needs_torch
@pytest.mark.parametrize("first, printed", [("import sparsebench.torch", "1000 no warning"),
                                            ("import torch", "None warned: True")])
def test_torch_imported_first_keeps_its_spinning_and_sparsify_says_so(first, printed):
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = __import__("subprocess").run([sys.executable, "-c", SPIN_SCRIPT.format(first=first)],
                                        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == printed


TORCH_FIRST_INT8 = """
import copy, warnings
import torch                                   # a user's script: PyTorch first, its OpenMP as it is
import sparsebench as sb, sparsebench.torch as sbt
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(), torch.nn.Linear(512, 256))
for lin in (model[0], model[2]):               # pruned, still dense: the float32 reference
    lin.weight.data = torch.from_numpy(sb.prune(lin.weight.detach().numpy(), 0.8, (4, 1)))
int8_model = copy.deepcopy(model).eval()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")            # that PyTorch's workers spin is said, not fatal
    sbt.sparsify(int8_model, dtype="int8")
x, a = torch.randn(3, 37, 256), torch.randn(256, 256)
with torch.inference_mode():
    want = model(x)
    for _ in range(20):                        # alternating with PyTorch's own matmuls
        got = int8_model(x)
        a = torch.tanh(a @ a)
cos = torch.nn.functional.cosine_similarity(got.reshape(-1, 256), want.reshape(-1, 256)).min().item()
print(type(int8_model[0]).__name__, int8_model[0].dtype, tuple(got.shape), cos >= 0.99)
"""


@needs_torch
@needs_vnni
def test_int8_sparsify_in_a_script_that_imports_torch_first():
    """A plain script: torch imported first (its OpenMP workers spinning), int8 sparsify, calls
    alternating with PyTorch's matmuls: it runs to the end and gives finite results."""
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    done = __import__("subprocess").run([sys.executable, "-c", TORCH_FIRST_INT8], capture_output=True, text=True,
                                        env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "SparseLinear int8 (3, 37, 256) True"


_FUSED_MODELS = {}


def _fused_and_dense(kind):
    """One sparsified tiny model of `kind` and its dense twin, made once for the examples below."""
    if kind not in _FUSED_MODELS:
        model = tiny_hf(kind)
        _FUSED_MODELS[kind] = (model, sparsified_and_dense(model, sparsity=0.8)[1])
    return _FUSED_MODELS[kind]


@needs_torch
@settings(max_examples=examples(25), deadline=None)
@given(kind=st.sampled_from(["bert", "distilbert", "roberta"]), batch=st.integers(1, 4), seq=st.integers(1, 20),
       tokens_per_pass=st.sampled_from([None, 1, 7, 40, 128]), seed=st.integers(0, 2**16))
def test_random_padded_batches_through_fused_encoders_match_dense(kind, batch, seq, tokens_per_pass, seed):
    """Any batch and sequence length, padding anywhere but the first token, passes of any size."""
    model, dense = _fused_and_dense(kind)
    (model.transformer if kind == "distilbert" else model.encoder).tokens_per_pass = tokens_per_pass
    rng = np.random.default_rng(seed)
    ids = torch.from_numpy(rng.integers(2, 100, (batch, seq)))
    lengths = rng.integers(1, seq + 1, batch)
    mask = torch.from_numpy((np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64))
    with torch.inference_mode():
        y = model(input_ids=ids, attention_mask=mask).last_hidden_state
        ref = dense(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.numpy().astype(bool)
    assert rel_diff(y.numpy()[keep], ref.numpy()[keep]) <= 1e-4


@needs_torch
def test_fused_layers_follow_new_weights():
    model, other = tiny_hf("roberta"), tiny_hf("roberta", seed=1)
    sbt.sparsify(model, sparsity=0.8)
    ids, mask = padded_inputs()
    with torch.inference_mode():
        before = model(input_ids=ids, attention_mask=mask).last_hidden_state
    sbt.sparsify(other, sparsity=0.8, fuse_layers=False)
    model.load_state_dict(other.state_dict())              # copied into the same parameters
    with torch.no_grad():
        model.encoder.layer[1].output.LayerNorm.weight.mul_(2.0)
        other.encoder.layer[1].output.LayerNorm.weight.mul_(2.0)
        y, want = (m(input_ids=ids, attention_mask=mask).last_hidden_state for m in (model, other))
    assert rel_diff(y.numpy(), want.numpy()) <= 1e-5 and rel_diff(y.numpy(), before.numpy()) > 0.1


@needs_torch
def test_refresh_after_changes_pytorch_does_not_count():
    """Writes through .data (and in-place ops on inference tensors) leave _version alone: the
    cached kernel matrices stay stale until refresh(), layer or whole model."""
    lin = sbt.SparseLinear(torch.randn(32, 24), block=(1, 1)).eval()
    x = torch.randn(5, 24)
    with torch.no_grad():
        lin(x)
        lin.weight.data.mul_(2)
        assert rel_diff(lin(x).numpy(), reference(lin, x)) > 0.1          # stale, as documented
        lin.refresh()
        assert rel_diff(lin(x).numpy(), reference(lin, x)) <= 1e-5
    model, other = tiny_hf("bert"), tiny_hf("bert")
    sbt.sparsify(model, sparsity=0.8)
    sbt.sparsify(other, sparsity=0.8, fuse_layers=False)
    ids, mask = padded_inputs()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
        for m in (model, other):
            m.encoder.layer[0].intermediate.dense.weight.data.mul_(2.0)
            m.encoder.layer[1].attention.self.query.bias.data.add_(0.5)
        assert sbt.refresh(model) is model and sbt.refresh(other) is other
        y, want = (m(input_ids=ids, attention_mask=mask).last_hidden_state for m in (model, other))
        assert rel_diff(y.numpy(), want.numpy()) <= 1e-5
        # one linear of a fused layer, refreshed by itself: the fused layer follows it
        for m in (model, other):
            m.encoder.layer[1].output.dense.weight.data.mul_(0.5)
        model.encoder.layer[1].output.dense.refresh()
        other.encoder.layer[1].output.dense.refresh()
        y, want = (m(input_ids=ids, attention_mask=mask).last_hidden_state for m in (model, other))
    assert rel_diff(y.numpy(), want.numpy()) <= 1e-5


@needs_torch
def test_fused_layer_takes_a_strided_layer_norm_weight():
    model, other = tiny_hf("bert"), tiny_hf("bert")
    for m in (model, other):
        ln = m.encoder.layer[0].output.LayerNorm
        wide = torch.stack([ln.weight.detach(), torch.zeros_like(ln.weight)], 1)
        ln.weight = torch.nn.Parameter(wide[:, 0], requires_grad=False)     # every other float
        assert not ln.weight.is_contiguous()
    sbt.sparsify(model, sparsity=0.8)
    sbt.sparsify(other, sparsity=0.8, fuse_layers=False)
    ids, mask = padded_inputs()
    with torch.no_grad():
        y, want = (m(input_ids=ids, attention_mask=mask).last_hidden_state for m in (model, other))
    assert rel_diff(y.numpy(), want.numpy()) <= 1e-5


@needs_torch
def test_an_output_projection_with_an_activation_does_not_fuse():
    """The fused layer adds attn_out and ffn_out into the residual stream (no activation there):
    a layer whose output projection has one runs transformers' forward instead of failing."""
    model = tiny_hf("bert")
    sbt.sparsify(model, sparsity=0.8)
    layer = model.encoder.layer[0]
    assert layer._sb_layer() is not None
    layer.output.dense.activation = "gelu"
    assert layer._sb_layer() is None
    ids, mask = padded_inputs()
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids, attention_mask=mask).last_hidden_state).all()


@needs_torch
def test_pruning_and_parametrizations_on_sparse_linear_are_followed_without_rebuilding_each_call():
    """torch.nn.utils.prune (weight_orig and weight_mask; the attribute is made anew every forward)
    and parametrizations move the weight out of _parameters: the layer computes with the current
    weight, keeps its kernel matrix while nothing changes and rebuilds it when the mask changes."""
    from torch.nn.utils import parametrize, prune
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 40)
    layer = sbt.SparseLinear.from_linear(lin, sparsity=0.5, block=(4, 1)).eval()
    x = torch.randn(3, 5, 48)
    prune.l1_unstructured(layer, "weight", amount=0.6)
    for step in range(2):
        with torch.inference_mode():
            y = layer(x)
            kernel = layer._kernels[1.0][1]
            assert layer(x) is not None and layer._kernels[1.0][1] is kernel         # not rebuilt
        want = torch.nn.functional.linear(x, layer.weight_orig * layer.weight_mask, layer.bias)
        assert torch.allclose(y, want, rtol=1e-5, atol=1e-5)
        prune.l1_unstructured(layer, "weight", amount=0.3)                           # a second mask
    prune.remove(layer, "weight")

    class Halve(torch.nn.Module):
        def forward(self, w):
            return w * 0.5
    parametrize.register_parametrization(layer, "weight", Halve())
    with torch.inference_mode():
        y = layer(x)
    assert torch.allclose(y, torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(2.0)                              # in place: seen
    with torch.inference_mode():
        y = layer(x)
    assert torch.allclose(y, torch.nn.functional.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


@needs_torch
def test_fused_layers_follow_a_second_pruning_of_their_linears():
    from torch.nn.utils import prune
    model = tiny_hf("bert")
    sbt.sparsify(model, sparsity=0.8)
    ids, mask = padded_inputs()
    for amount in (0.3, 0.5):
        for layer in model.encoder.layer:
            prune.l1_unstructured(layer.output.dense, "weight", amount=amount)
        dense = copy.deepcopy(model)
        for layer in dense.encoder.layer:                       # the same weights, unfused nn.Linear
            for name, lin in [("output.dense", layer.output.dense)]:
                plain = torch.nn.Linear(lin.in_features, lin.out_features)
                with torch.no_grad():
                    plain.weight.copy_(lin.weight_orig * lin.weight_mask)
                    plain.bias.copy_(lin.bias)
                layer.output.dense = plain
        with torch.inference_mode():
            y = model(input_ids=ids, attention_mask=mask).last_hidden_state
            want = dense(input_ids=ids, attention_mask=mask).last_hidden_state
        assert rel_diff(y.numpy(), want.numpy()) <= 1e-4
