"""int8 beyond the kernels: the autotuner and its database, the tuned file, compare, the CLI,
SparseLinear and the BERT encoder (MiniLM checkpoint: int8 vs float32 cosine >= 0.99)."""
import json
import warnings

import numpy as np
import pytest

import sparsebench as sb
from sparsebench import cpu
from sparsebench.cli.main import main
from sparsebench.bench.compare import Compare
from sparsebench.dtypes import check_dtype_blocks, reference, sparse_matrix
from sparsebench.models import BertEncoder
from sparsebench.models.config import ModelError
from sparsebench.models.linear import SparseLinear
from sparsebench.bench.shapes import Shape
from sparsebench.tune.apply import TunedFallbackWarning, export, load_tuned
from sparsebench.tune import Autotuner, TuningDB
from test_models import TINY, minilm_path

needs_vnni = pytest.mark.skipif(not cpu.available_isas("int8"),
                                reason="this CPU (or build) has no AVX512-VNNI kernels")
pytestmark = needs_vnni
SMALL = Shape("small", 64, 52, 24)


def _pruned(M, K, sparsity=0.8, block=(4, 1), seed=0):
    W = np.random.default_rng(seed).standard_normal((M, K), dtype=np.float32)
    return sb.prune(W, sparsity, block)


def _records(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# -- dtypes -------------------------------------------------------------------------------------

def test_dtype_checks_and_matrices():
    with pytest.raises(ValueError, match="unknown dtype 'int4'"):
        check_dtype_blocks("int4", [(4, 1)])
    with pytest.raises(ValueError, match="no int8 kernels for 1x1, 1x16 blocks"):
        check_dtype_blocks("int8", [(4, 1), (1, 1), (8, 1), (1, 16)])
    check_dtype_blocks("float32", [(1, 1)])
    Wp = _pruned(40, 36)
    assert isinstance(sparse_matrix(Wp, (4, 1)), sb.BSRMatrix)
    Aq = sparse_matrix(Wp, (4, 1), "int8")
    assert isinstance(Aq, sb.QuantizedBSRMatrix) and Aq.dtype == "int8"


def test_int8_reference_is_exact_for_the_kernel_and_not_for_float32():
    Wp = _pruned(64, 100, 0.7, (4, 4))
    X = np.random.default_rng(1).standard_normal((100, 33), dtype=np.float32)
    Aq = sparse_matrix(Wp, (4, 4), "int8")
    Y = sb.spmm(Aq, X)
    ok, err = reference(Aq, Wp, X).check(Y)
    assert ok and err < 1e-5
    ok32, err32 = reference(sparse_matrix(Wp, (4, 4)), Wp, X).check(Y)
    assert not ok32 and 1e-4 < err32 < 0.02           # quantization error, not a kernel error


# -- autotuner, database, tuned file -------------------------------------------------------------

def test_autotune_int8_records_export_and_lookup(tmp_path):
    path = tmp_path / "db.jsonl"
    db = TuningDB(str(path), log=lambda *a: None)
    tuner = Autotuner(db, "exhaustive", samples=3, confirm_samples=3, log=lambda *a: None)
    [res] = tuner.tune_all([SMALL], [0.8], [(4, 4)], threads=1, dtype="int8")
    recs = _records(path)
    meas = [r for r in recs if r["kind"] == "measurement"]
    assert {r["task"]["dtype"] for r in recs} == {"int8"}
    sparse = [r for r in meas if r["method"] == "sparse"]
    assert sparse and all(r["status"] == "ok" and r["config"]["dtype"] == "int8" for r in sparse)
    dense = [r for r in meas if r["method"] == "dense"]
    assert len(dense) == 1 and dense[0]["status"] == "ok"     # float32 dense, gated against float32
    assert res["evals"] == res["space_size"] == len(sparse)
    # resume: nothing is measured again
    Autotuner(TuningDB(str(path), log=lambda *a: None), "exhaustive", samples=3, confirm_samples=3,
              log=lambda *a: None).tune_all([SMALL], [0.8], [(4, 4)], threads=1, dtype="int8")
    assert len(_records(path)) == len(recs)
    out = tmp_path / "tuned.json"
    export(TuningDB(str(path)), str(out))
    tuned = load_tuned(str(out))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        choice = tuned.lookup(64, 52, 24, 0.8, (4, 4), dtype="int8", threads=1)
    assert choice.exact and choice.method == res["method"]
    if choice.method == "sparse":
        assert choice.config.dtype == "int8"
        Aq = sparse_matrix(_pruned(64, 52, 0.8, (4, 4)), (4, 4), "int8")
        assert sb.spmm(Aq, np.ones((52, 24), np.float32), choice.config).shape == (64, 24)
    with pytest.warns(TunedFallbackWarning, match="float32 was not tuned"):
        assert tuned.lookup(64, 52, 24, 0.8, (4, 4), dtype="float32").config is None


def test_wrong_int8_candidates_are_recorded(tmp_path, monkeypatch):
    from sparsebench.tune import autotune
    real = autotune.sparse_runner

    def wrong_when_prefetching(A, X, config, layout):
        run = real(A, X, config, layout)
        if config.prefetch:
            def wrong(out):
                run(out)
                out[-1, -1] *= 1.001
                return out
            return wrong
        return run
    monkeypatch.setattr(autotune, "sparse_runner", wrong_when_prefetching)
    db = TuningDB(str(tmp_path / "db.jsonl"), log=lambda *a: None)
    [res] = Autotuner(db, "exhaustive", samples=3, confirm_samples=3, log=lambda *a: None).tune_all(
        [SMALL], [0.8], [(4, 1)], threads=1, dtype="int8")
    wrong = [r for r in _records(tmp_path / "db.jsonl") if r.get("status") == "wrong"]
    assert wrong and all(r["config"]["prefetch"] for r in wrong)
    assert "float64 reference of its int8 operands" in wrong[0]["reason"]
    assert res["method"] == "dense" or res["config"]["prefetch"] == 0 or \
        res["config"] == res["default_config"]


# -- compare --------------------------------------------------------------------------------------

def test_compare_int8_gates_each_method_against_its_own_arithmetic(steady_machine):
    cmp = Compare(["dense", "sparsebench-fp32", "sparsebench"], threads=1, samples=3, log=lambda *a: None,
                  dtype="int8")
    rows = {r["method"]: r for r in cmp.run([SMALL], [0.8], [(4, 1)])}
    assert all(r["status"] == "ok" and r["dtype"] == "int8" for r in rows.values())
    assert rows["sparsebench"]["config"].startswith("int8/avx512vnni/b4x1")
    assert not rows["sparsebench-fp32"]["config"].startswith("int8")
    assert float(rows["sparsebench-fp32"]["max_rel_error"]) < 1e-5
    assert 1e-4 < float(rows["sparsebench"]["max_rel_error"]) < 0.02     # the quantization error


def test_compare_int8_kernel_alone_and_the_heuristic_rows(steady_machine):
    methods = ["dense", "sparsebench", "sparsebench-int8-kernel", "sparsebench-default"]
    cmp = Compare(methods, threads=1, samples=3, log=lambda *a: None, dtype="int8",
                  config_for=lambda A, n, s, layout="features": sb.KernelConfig((4, 1), "avx512vnni", 64, 0, 0, 1, 0, 1, "int8")
                  if A.dtype == "int8" else None)
    rows = {r["method"]: r for r in cmp.run([SMALL], [0.8], [(4, 1)])}
    assert all(rows[m]["status"] == "ok" for m in methods)
    # the kernel alone computes exactly what the quantize-included row does
    assert rows["sparsebench-int8-kernel"]["max_rel_error"] == rows["sparsebench"]["max_rel_error"]
    assert rows["sparsebench-int8-kernel"]["config"] == rows["sparsebench"]["config"]
    assert rows["sparsebench-default"]["config"] != rows["sparsebench"]["config"]     # tuned is ignored
    float32 = Compare(["sparsebench-int8-kernel"], threads=1, samples=3, log=lambda *a: None)
    (row,) = float32.run([SMALL], [0.8], [(4, 1)])
    assert row["status"] == "skipped" and "--dtype int8" in row["reason"]


def test_compare_int8_uses_the_tuned_config_of_each_dtype(tmp_path, steady_machine):
    int8_cfg = sb.KernelConfig((4, 1), "avx512vnni", 64, 0, 0, 4, 0, 1, "int8")
    fp32_cfg = sb.default_config(sparse_matrix(_pruned(64, 52), (4, 1)), 24, 1)
    seen = []

    def config_for(A, n, s, layout="features"):
        seen.append(A.dtype)
        return int8_cfg if A.dtype == "int8" else fp32_cfg
    cmp = Compare(["sparsebench-fp32", "sparsebench"], threads=1, samples=3, log=lambda *a: None,
                  dtype="int8", config_for=config_for)
    rows = {r["method"]: r for r in cmp.run([SMALL], [0.8], [(4, 1)])}
    assert sorted(seen) == ["float32", "int8"]
    assert rows["sparsebench"]["config"] == str(int8_cfg)
    assert rows["sparsebench-fp32"]["config"] == str(fp32_cfg)


def test_cli_int8_compare_autotune_and_bad_blocks(tmp_path, capsys):
    out = tmp_path / "cmp.csv"
    assert main(["compare", "--dtype", "int8", "--shapes", "40x32x16", "--sparsity", "0.8", "--threads", "1",
                 "--samples", "3", "--methods", "dense,sparsebench-fp32,sparsebench", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "int8 against our float32 kernels" in printed and "int8 speedup" in printed
    db = tmp_path / "t.jsonl"
    assert main(["autotune", "--dtype", "int8", "--block", "4x4", "--shapes", "40x32x16", "--sparsity", "0.8",
                 "--threads", "1", "--samples", "3", "--db", str(db)]) == 0
    assert "int8/avx512vnni/b4x4" in capsys.readouterr().out or "dense" in _records(db)[-1]["method"]
    assert main(["autotune", "--dtype", "int8", "--block", "4x4", "--shapes", "40x32x16", "--sparsity", "0.8",
                 "--threads", "1", "--samples", "3", "--db", str(db), "--strategy", "exhaustive"]) == 0
    capsys.readouterr()
    assert main(["check-strategy", "--dtype", "int8", "--block", "4x4", "--shapes", "40x32x16", "--sparsity",
                 "0.8", "--threads", "1", "--db", str(db), "--samples", "5", "--processes", "2"]) == 0
    checked = capsys.readouterr().out
    assert "40x32x16" in checked and "worst slowdown" in checked and "not tuned" not in checked
    for cmd in (["compare", "--out", str(tmp_path / "x.csv")], ["autotune", "--db", str(db)]):
        assert main(cmd + ["--dtype", "int8", "--block", "1x1", "--shapes", "40x32x16"]) == 2
        assert "no int8 kernels for 1x1 blocks" in capsys.readouterr().err


# -- models -----------------------------------------------------------------------------------

def test_sparse_linear_int8_matches_float32_and_takes_quantized_input():
    W = np.random.default_rng(0).standard_normal((96, 80), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal(96, dtype=np.float32)
    X = np.random.default_rng(2).standard_normal((80, 21), dtype=np.float32)
    fp32 = SparseLinear(W, b, sparsity=0.75, block=(4, 1), activation="gelu", threads=1)
    int8 = SparseLinear(W, b, sparsity=0.75, block=(4, 1), activation="gelu", threads=1, dtype="int8")
    y32, y8 = fp32(X), int8(X)
    assert int8.kernel.startswith("int8/") and "int8" in repr(int8)
    assert np.abs(y8 - y32).max() <= 0.02 * np.abs(y32).max()
    Xq = sb.quantize_activations(X, (4, 1), threads=1)
    np.testing.assert_array_equal(int8(Xq), y8)
    back = int8.as_float32()
    assert back.dtype == "float32" and back.A.dtype == "float32"
    np.testing.assert_array_equal(back.dense_weight()[0], int8.dense_weight()[0])
    with pytest.raises(ModelError, match="no int8 kernels for 1x1"):
        SparseLinear(W, b, sparsity=0.75, block=(1, 1), dtype="int8")
    with pytest.raises(ModelError, match="QuantizedActivations"):
        int8(X.tolist())
    with pytest.raises(ModelError, match="2-D numpy array"):
        fp32(Xq)


def test_int8_encoder_is_close_to_float32_and_its_layer_norms_quantize(monkeypatch):
    """Every int8 linear layer reading a LayerNorm's output gets it quantized by that LayerNorm
    (Q, K and V one quantization for the three); spmm quantizes the inputs of attn_out and
    ffn_out, and nothing else is quantized."""
    import sys
    from sparsebench.models import bert
    spmm_module = sys.modules["sparsebench.spmm"]
    calls, fused, packs = [], [], []
    real, real_ln, real_pack = bert.quantize_activations, bert.layer_norm_quantized, spmm_module.pack
    monkeypatch.setattr(bert, "quantize_activations", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(bert, "layer_norm_quantized", lambda *a, **k: fused.append(1) or real_ln(*a, **k))
    monkeypatch.setattr(spmm_module, "pack", lambda *a, **k: packs.append(1) or real_pack(*a, **k))
    enc8 = BertEncoder.random(TINY, seed=3, sparsity=0.8, block=(4, 4), dtype="int8", threads=1)
    enc32 = BertEncoder.random(TINY, seed=3, sparsity=0.8, block=(4, 4), threads=1)
    ids = np.random.default_rng(0).integers(0, TINY.vocab_size, size=(2, 19))
    y8, y32 = enc8(ids), enc32(ids)
    # the embeddings' LayerNorm and each layer's first, and every last one but the last layer's
    assert len(calls) == 0 and len(fused) == 2 * TINY.layers and len(packs) == 2 * TINY.layers
    assert cosine(y8, y32) >= 0.99
    assert "int8 kernels" in enc8.describe()
    assert all(r["kernel"].startswith("int8/") for r in enc8.kernel_report(38))
    back = enc8.as_float32()
    assert back.dtype == "float32" and all(not r["kernel"].startswith("int8") for r in back.kernel_report(38))
    assert cosine(back(ids), y8) >= 0.99


@pytest.mark.parametrize("block", [(4, 1), (4, 4)], ids=lambda b: "%dx%d" % b)
def test_layer_norms_that_quantize_give_the_same_bits_as_quantizing_after(block, monkeypatch):
    """The int8 encoder with its LayerNorms quantizing for the next layers, and with every
    layer quantizing its own input after a plain LayerNorm: the same output, bit for bit
    (padded batch, odd length, a pass per sequence, two threads)."""
    from sparsebench.models import bert
    enc = BertEncoder.random(TINY, seed=5, sparsity=0.8, block=block, dtype="int8", threads=2,
                             tokens_per_pass=20)
    ids = np.random.default_rng(1).integers(0, TINY.vocab_size, size=(3, 13))
    mask = np.ones((3, 13), bool)
    mask[1, 9:] = False
    calls = []
    real_ln = bert.layer_norm_quantized
    monkeypatch.setattr(bert, "layer_norm_quantized", lambda *a, **k: calls.append(1) or real_ln(*a, **k))
    fused = enc(ids, mask)
    assert len(calls) == 2 * TINY.layers * 3            # three passes of one sequence
    real = bert.layer_norm
    monkeypatch.setattr(bert, "layer_norm", lambda *a: real(*a[:6]))
    np.testing.assert_array_equal(enc(ids, mask), fused)
    assert len(calls) == 2 * TINY.layers * 3


def test_minilm_int8_cosine_to_the_float32_sparse_runner():
    """int8 (linear layers and attention) vs float32 on the same pruned MiniLM weights: every
    token's hidden state >= 0.99 cosine, sentence embeddings (mean over tokens, as
    sentence-transformers pools) >= 0.995.
    The unpruned checkpoint is harder (one token per sentence carries outliers): its sentence
    embeddings still reach >= 0.99 (measured 0.9917; tokens down to 0.987)."""
    pytest.importorskip("safetensors")
    transformers = pytest.importorskip("transformers")
    path = minilm_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    sentences = ["A sparse kernel makes BERT fast on a small CPU.", "Hello world",
                 "Quantized weights and activations keep the embeddings close to float32."]
    batch = tokenizer(sentences, padding=True, return_tensors="np")
    inputs = (batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    mask = batch["attention_mask"].astype(bool)
    for sparsity, block in ((0.7, (4, 1)), (0.8, (4, 1)), (0.9, (4, 1)), (0.8, (4, 4)), (None, (4, 1))):
        opts = dict(sparsity=sparsity, block=block)
        y32 = BertEncoder.from_pretrained(path, **opts)(*inputs)
        y8 = BertEncoder.from_pretrained(path, dtype="int8", **opts)(*inputs)
        per_token = min(cosine(a, b) for a, b in zip(y8[mask], y32[mask]))
        pooled = min(cosine(y8[i][mask[i]].mean(0), y32[i][mask[i]].mean(0)) for i in range(len(sentences)))
        if sparsity is None:
            assert pooled >= 0.99 and per_token >= 0.98, (pooled, per_token)
        else:
            assert per_token >= 0.99 and pooled >= 0.995, (sparsity, block, per_token, pooled)


def test_bert_cli_int8_compares_with_the_float32_runner(tmp_path, capsys):
    assert main(["bert", "--model", "bert-mini", "--dtype", "int8", "--seq", "16", "--samples", "3",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "int8 kernels" in printed and "fp32" in printed and "dense" in printed
    latency = next(tmp_path.glob("*-int8-*latency.csv")).read_text()
    assert "fp32" in latency and "int8" in latency
    assert main(["bert", "--model", "bert-mini", "--dtype", "int8", "--block", "1x1", "--out", str(tmp_path)]) == 2
    assert "no int8 kernels for 1x1" in capsys.readouterr().err
