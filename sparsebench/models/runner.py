"""End-to-end timing of the BERT encoder: latency, throughput, baselines, per-op breakdown.

Every method gets the same input (random token ids, no padding) and the same weights (the
pruned ones, dense where the method is dense): our encoder on the sparse kernels, the same
runner with numpy dense matmuls, and optionally PyTorch (the transformers model of the model
type: BertModel, DistilBertModel or RobertaModel), that model after sparsebench.torch.sparsify,
and ONNX Runtime (that model exported with torch.onnx). Each forward pass is one latency sample.
Each latency row also says what share of the machine's measured peak its useful work reached
(pct_peak, see forward_ops and sparsebench.peak) and whether a peak probe before or after the
sampling found the machine degraded.
"""
import csv
import dataclasses
import json
import os
import platform
import tempfile
import time
import warnings

import numpy as np

from .. import __version__
from ..errors import MethodUnavailable
from ..peak import PeakMonitor
from ..store import atomic_file
from ..bench.timing import Stats
from .bert import CATEGORIES

#: methods `compare` can add beside ours ("sparsebench"); "fp32" is our runner on the float32
#: sparse kernels, the yardstick of an int8 encoder; "torch-sparsify" is the transformers model
#: on our kernels (sparsebench.torch.sparsify), "torch-sparsify-fp32" the same on the float32
#: kernels (int8 sparsify's yardstick); "whole-batch" is ours with the batch in one pass
#: (tokens_per_pass None), "one-by-one" ours called on one sequence at a time (what batching must beat)
BASELINES = ("dense", "fp32", "torch", "torch-sparsify", "torch-sparsify-fp32", "onnxruntime", "whole-batch",
             "one-by-one")
#: methods that compute in the encoder's dtype (the others are float32)
IN_ENCODER_DTYPE = ("sparsebench", "whole-batch", "one-by-one", "torch-sparsify")
#: methods that run every linear layer dense (their useful work is 2*M*K per token)
DENSE_RUNNERS = ("dense", "torch", "onnxruntime")
#: the transformers class of each model type, and whether it takes add_pooling_layer
_HF_MODELS = {"bert": ("BertModel", True), "roberta": ("RobertaModel", True), "distilbert": ("DistilBertModel", False)}
_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
_OURS = {"sparsebench": "block-sparse kernels", "dense": "numpy dense matmul for every linear layer",
         "fp32": "float32 block-sparse kernels", "whole-batch": "block-sparse kernels, the whole batch in one pass",
         "one-by-one": "block-sparse kernels, called on one sequence at a time"}


@dataclasses.dataclass
class Method:
    name: str
    description: str
    run: object                 # zero-argument callable: one forward pass, returns (batch, seq, hidden)
    version: str = ""


def make_inputs(config, batch, seq, seed=0):
    """Token ids (int64, no padding), an all-ones attention mask and zero token types (None for a
    model without token types)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, config.vocab_size, size=(batch, seq), dtype=np.int64)
    return ids, np.ones_like(ids), np.zeros_like(ids) if config.type_vocab_size else None


def named_inputs(inputs):
    """make_inputs' arrays by transformers' argument names (token types only where there are some)."""
    return {name: a for name, a in zip(_INPUT_NAMES, inputs) if a is not None}


# -- methods ------------------------------------------------------------------------------------

def ours(enc, inputs, name="sparsebench"):
    ids, mask, types = inputs
    out = np.empty(ids.shape + (enc.config.hidden,), np.float32)
    what = _OURS[name] + (f" ({enc.dtype})" if name in ("sparsebench", "whole-batch", "one-by-one") else "")
    if name in ("whole-batch", "one-by-one"):
        enc = enc.with_tokens_per_pass(None)
    if name == "one-by-one":
        def run():
            for s in range(ids.shape[0]):
                part = slice(s, s + 1)
                enc(ids[part], mask[part], None if types is None else types[part], out=out[part])
            return out
    else:
        def run():
            return enc(ids, mask, types, out=out)
    return Method(name, "sparsebench encoder, " + what, run, f"sparsebench {__version__}, numpy {np.__version__}")


def torch_model(enc):
    """The transformers model of `enc`'s model type (no pooler, eval mode) holding its weights."""
    from ..idle_spin import tame_torch_idle_spin

    tame_torch_idle_spin()       # idle torch threads would spin on the cores of the next method
    try:
        import torch
        import transformers
    except ImportError as e:
        raise MethodUnavailable(f"needs torch and transformers ({e.name} is not installed): "
                                "pip install \"sparsebench[torch]\" transformers") from None
    class_name, has_pooler = _HF_MODELS[enc.config.model_type]
    config = transformers.AutoConfig.for_model(**enc.config.to_hf())
    model_class = getattr(transformers, class_name)
    model = model_class(config, add_pooling_layer=False) if has_pooler else model_class(config)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in enc.state_dict().items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MethodUnavailable(f"transformers' {class_name} does not match our parameters "
                                f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def torch_method(enc, inputs, threads, sparsify=False, name=None):
    """PyTorch eager on `enc`'s weights: dense, or with sparsify its linear layers on our kernels
    (the layers whose weights have a block pattern; with enc's tuned table, dtype and threads)."""
    model = torch_model(enc)             # MethodUnavailable without torch and transformers
    import torch

    torch.set_num_threads(threads)
    what = "dense"
    if sparsify:
        from ..torch import sparsify as sparsify_model

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # the tuned file's fallbacks were reported for our runner
            summary = sparsify_model(model, block=enc.block, dtype=enc.dtype, tuned=enc.tuned, min_sparsity=0.0,
                                     threads=threads)
        what = (f"after sparsebench.torch.sparsify ({len(summary.replaced)} of {len(summary)} linear layers on "
                f"the {enc.dtype} kernels, {len(summary.fused_layers)} transformer layers run whole)")
    feeds = {name: torch.from_numpy(a) for name, a in named_inputs(inputs).items()}

    def run():
        with torch.inference_mode():
            return model(**feeds).last_hidden_state.numpy()

    import transformers
    return Method(name or ("torch-sparsify" if sparsify else "torch"),
                  f"PyTorch eager, transformers {type(model).__name__} ({model.config._attn_implementation} "
                  f"attention), {what}", run, f"torch {torch.__version__}, transformers {transformers.__version__}")


def onnxruntime_method(enc, inputs, threads, workdir):
    try:
        import onnxruntime as ort
    except ImportError:
        raise MethodUnavailable("needs onnxruntime (not installed)") from None
    try:
        import torch
        import onnx  # noqa: F401  (torch.onnx.export needs it)
    except ImportError as e:
        raise MethodUnavailable(f"needs torch and onnx to export the model ({e.name} is not installed)") from None
    model = torch_model(enc)

    feeds = named_inputs(inputs)
    names = list(feeds)

    class LastHiddenState(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, *tensors):
            return self.bert(**dict(zip(names, tensors))).last_hidden_state

    wrapper = LastHiddenState(model).eval()
    path = os.path.join(workdir, "bert.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, tuple(torch.from_numpy(a) for a in feeds.values()), path, input_names=names,
                          output_names=["last_hidden_state"], dynamo=False, opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # its idle intra-op threads would spin on the cores of the method timed next, as torch's and
    # MKL's do (tamed likewise); measured here, this costs ONNX Runtime itself 0-4% (123-127 ms)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return Method("onnxruntime", "ONNX Runtime CPU, the transformers model exported with torch.onnx, dense "
                  "(intra-op spinning off)",
                  lambda: session.run(None, feeds)[0], f"onnxruntime {ort.__version__}")


# -- timing -------------------------------------------------------------------------------------

def sample_latencies(methods, samples=30, warmup=3, block_time=0.25, time_limit=None):
    """Stats (seconds per forward pass) per method name.

    Methods are sampled in blocks of about `block_time` seconds (at least 5 passes), rotating
    the order every round so drift on a shared machine hits them alike; each block starts with
    one untimed pass so that the previous method's idle threads (OpenMP, OpenBLAS, ONNX Runtime
    spin) and its evictions from the caches are behind us. Stops early, with at least one block
    each, once `time_limit` seconds have passed.
    """
    blocks = {}
    for m in methods:
        t0 = time.perf_counter()
        for _ in range(warmup):
            m.run()
        per_pass = (time.perf_counter() - t0) / max(warmup, 1)
        blocks[m.name] = max(5, min(samples, int(block_time / max(per_pass, 1e-6))))
    times = {m.name: [] for m in methods}
    start = time.perf_counter()
    r = 0
    while min(len(t) for t in times.values()) < samples:
        k = r % len(methods)
        for m in methods[k:] + methods[:k]:
            m.run()
            for _ in range(blocks[m.name]):
                t0 = time.perf_counter()
                m.run()
                times[m.name].append(time.perf_counter() - t0)
        r += 1
        if time_limit and time.perf_counter() - start > time_limit:
            break
    return {name: Stats(np.array(t)) for name, t in times.items()}


def latency_row(stats, batch):
    p50, p90 = stats.median, float(np.percentile(stats.samples, 90))
    return {"p50_ms": p50 * 1e3, "p90_ms": p90 * 1e3, "p20_ms": stats.p20 * 1e3, "p80_ms": stats.p80 * 1e3,
            "throughput_seq_s": batch / p50, "samples": stats.n, "unstable": stats.unstable}


def max_rel_diff(y, ref):
    ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(np.asarray(y, dtype=np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def forward_ops(enc, batch, seq, dense=False):
    """Useful operations of one forward pass: 2 * nnz (dense: 2 * M * K) per token in every linear
    layer, and the attention's two batched products (4 * seq^2 * hidden per sequence and layer)."""
    linear = sum(lin.A.shape[0] * lin.A.shape[1] if dense else lin.A.nnz
                 for layer in enc.layers for _, lin in layer.linears())
    return 2 * linear * batch * seq + 4 * batch * seq * seq * enc.config.hidden * len(enc.layers)


def compare(enc, batch, seq, baselines=("dense",), threads=None, samples=30, time_limit=60.0, log=print,
            monitor=None):
    """Latency rows (one per method, ours first), with speedups of ours over each, pct_peak and
    degraded (peak probes of `monitor`, default a new PeakMonitor, before and after the sampling).

    `threads` (default: the encoder's) is given to PyTorch and ONNX Runtime. Baselines that
    cannot run here are skipped with one line each through `log`.
    """
    threads = threads or enc.threads
    monitor = monitor or PeakMonitor(threads)
    inputs = make_inputs(enc.config, batch, seq)
    methods = [ours(enc, inputs)]
    with tempfile.TemporaryDirectory(prefix="sparsebench-bert-") as workdir:
        for name in baselines:
            try:
                if name == "dense":
                    methods.append(ours(enc.as_dense(), inputs, name="dense"))
                elif name == "fp32":
                    methods.append(ours(enc.as_float32(), inputs, name="fp32"))
                elif name in ("whole-batch", "one-by-one"):
                    methods.append(ours(enc, inputs, name=name))
                elif name in ("torch", "torch-sparsify"):
                    methods.append(torch_method(enc, inputs, threads, sparsify=name == "torch-sparsify"))
                elif name == "torch-sparsify-fp32":
                    methods.append(torch_method(enc.as_float32(), inputs, threads, sparsify=True, name=name))
                elif name == "onnxruntime":
                    methods.append(onnxruntime_method(enc, inputs, threads, workdir))
                else:
                    raise MethodUnavailable(f"unknown method; choose from {', '.join(BASELINES)}")
            except MethodUnavailable as e:
                log(f"{name}: skipped, {e}")
        reference = methods[0].run().copy()
        diffs = {m.name: max_rel_diff(m.run(), reference) for m in methods}
        stats, degraded = monitor.around(f"bert batch {batch} seq {seq}", lambda: sample_latencies(
            methods, samples=samples, time_limit=time_limit))
    rows = []
    for m in methods:
        dense = m.name in DENSE_RUNNERS
        dtype = enc.dtype if m.name in IN_ENCODER_DTYPE else "float32"
        row = {"method": m.name, "description": m.description, "version": m.version, "batch": batch,
               "seq": seq, "threads": threads, **latency_row(stats[m.name], batch),
               "max_rel_diff_vs_ours": diffs[m.name],
               "pct_peak": monitor.pct(forward_ops(enc, batch, seq, dense), stats[m.name].median, dtype),
               "peak_gflops": monitor.rate(dtype), "degraded": degraded}
        rows.append(row)
    for row in rows:
        row["ours_speedup"] = row["p50_ms"] / rows[0]["p50_ms"]
    return rows


def breakdown(enc, batch, seq, repeats=10):
    """Rows (category, ms per forward, share) from the encoder's profiling mode."""
    ids, mask, types = make_inputs(enc.config, batch, seq)
    seconds = enc.profile(ids, mask, types, repeats=repeats)
    total = sum(seconds.values())
    return [{"category": c, "ms": seconds[c] * 1e3, "share": seconds[c] / total if total else 0.0}
            for c in CATEGORIES]


# -- results ------------------------------------------------------------------------------------

def machine_info():
    """Where a result was measured: the CPU (label, identity, hardware id), build id, versions, time."""
    from .. import fingerprint
    from ..cpu import available_isas
    from ..machine import cpu_identity, cpu_label
    return {"cpu": cpu_label(), "cpu_identity": cpu_identity(), "hardware_id": fingerprint.hardware_id(),
            "build_id": fingerprint.build_id(), "isas": available_isas(), "cpus": os.cpu_count(),
            "python": platform.python_version(), "numpy": np.__version__,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_results(out_dir, stem, tables, meta):
    """tables: name -> list of row dicts, each written as `{stem}-{name}.csv`; everything
    (with `meta`) also goes to `{stem}.json`. Files are replaced atomically. Returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, rows in tables.items():
        if rows:
            path = os.path.join(out_dir, f"{stem}-{name}.csv")
            with atomic_file(path) as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            paths.append(path)
    path = os.path.join(out_dir, f"{stem}.json")
    with atomic_file(path) as f:
        json.dump({"meta": meta, **tables}, f, indent=1, default=str)
    paths.append(path)
    return paths

