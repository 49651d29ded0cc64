"""A BERT encoder in numpy whose linear layers run on the block-sparse kernels.

Activations stay features x tokens (hidden x batch*seq) from the embeddings to the last
LayerNorm, the layout the kernels compute in, so the 6 linear layers of a transformer layer
chain with no transposes or copies. The output projections add into the residual stream in the
kernels' store step; LayerNorm and self-attention run fused in compiled kernels (kernels/encoder/,
sparsebench.cpu.encoder_module). Buffers are
allocated once per (batch, seq).
"""
import collections
import copy
import dataclasses
import operator
import os
import time
import zlib
from collections.abc import Mapping

import numpy as np

from ..arrays import activations
from ..cpu import default_threads, encoder_module, int8_attention
from ..dispatch import default_config
from ..errors import UnsupportedISAError
from ..dtypes import check_dtype
from ..prune import check_sparsity
from ..quant import layer_norm_quantized, quantize_activations
from ..spmm import spmm_into
from .config import BertConfig, ModelError, model_config
from .linear import SparseLinear, detect_block

#: block used for a dense checkpoint kept as it is (sparsity=None) when no block is given
DEFAULT_BLOCK = (4, 1)
#: per-op categories of BertEncoder.profile, in report order ("sparse GEMMs" includes the GELU
#: the kernels apply in their epilogue, "GELU" is the compiled GELU of dense FFN layers, "attention"
#: is the fused scores-softmax-context kernel; the residual adds are in the GEMMs' store step)
CATEGORIES = ("sparse GEMMs", "dense GEMMs", "attention", "GELU", "LayerNorm", "embeddings",
              "copies/other")
_LINEARS = (("query", "attention.self.query"), ("key", "attention.self.key"),
            ("value", "attention.self.value"), ("attn_out", "attention.output.dense"),
            ("ffn_in", "intermediate.dense"), ("ffn_out", "output.dense"))
#: DistilBERT's names for the sublayers of a transformer layer
_DISTILBERT_NAMES = {"attention.self.query": "attention.q_lin", "attention.self.key": "attention.k_lin",
                     "attention.self.value": "attention.v_lin", "attention.output.dense": "attention.out_lin",
                     "attention.output.LayerNorm": "sa_layer_norm", "intermediate.dense": "ffn.lin1",
                     "output.dense": "ffn.lin2", "output.LayerNorm": "output_layer_norm"}


def parameter_shapes(config):
    """Hugging Face BertModel parameter names (no "bert." prefix, no pooler) -> shapes; no token
    type embeddings for a model without token types (DistilBERT)."""
    H, I = config.hidden, config.intermediate
    shapes = {"embeddings.word_embeddings.weight": (config.vocab_size, H),
              "embeddings.position_embeddings.weight": (config.max_positions, H),
              "embeddings.token_type_embeddings.weight": (config.type_vocab_size, H),
              "embeddings.LayerNorm.weight": (H,), "embeddings.LayerNorm.bias": (H,)}
    if not config.type_vocab_size:
        del shapes["embeddings.token_type_embeddings.weight"]
    for i in range(config.layers):
        p = f"encoder.layer.{i}."
        for _, hf in _LINEARS:
            out_f, in_f = {"intermediate.dense": (I, H), "output.dense": (H, I)}.get(hf, (H, H))
            shapes[p + hf + ".weight"] = (out_f, in_f)
            shapes[p + hf + ".bias"] = (out_f,)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes[p + ln + ".weight"] = (H,)
            shapes[p + ln + ".bias"] = (H,)
    return shapes


def checkpoint_name(name, model_type):
    """The name a `model_type` checkpoint gives the parameter `name` of parameter_shapes."""
    if model_type != "distilbert" or not name.startswith("encoder.layer."):
        return name
    _, _, index, rest = name.split(".", 3)
    sublayer, leaf = rest.rsplit(".", 1)
    return f"transformer.layer.{index}.{_DISTILBERT_NAMES[sublayer]}.{leaf}"


class _RandomWeights(Mapping):
    """Seeded random weights (normal, std 0.02; LayerNorm 1 and 0), made when first read."""

    def __init__(self, config, seed):
        self._shapes = parameter_shapes(config)
        self._seed = seed

    def __getitem__(self, name):
        shape = self._shapes[name]
        if ".LayerNorm." in name:
            return np.ones(shape, np.float32) if name.endswith(".weight") else np.zeros(shape, np.float32)
        rng = np.random.default_rng([self._seed, zlib.crc32(name.encode())])
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02))

    def __iter__(self):
        return iter(self._shapes)

    def __len__(self):
        return len(self._shapes)


class _CheckpointWeights(Mapping):
    """Tensors of an open safetensors file by the names of parameter_shapes: the model type's
    prefix ("bert.", "roberta.", "distilbert.") stripped, DistilBERT's names mapped to BERT's and
    old LayerNorm names (gamma, beta) to weight and bias."""

    def __init__(self, handle, path, config):
        self._handle = handle
        self._path = path
        self._model_type = config.model_type
        ours = {checkpoint_name(name, config.model_type): name for name in parameter_shapes(config)}
        prefix = config.model_type + "."
        self._names = {}
        for key in handle.keys():
            name = key[len(prefix):] if key.startswith(prefix) else key
            if "LayerNorm." in name or "layer_norm." in name:
                name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
            self._names[ours.get(name, name)] = key

    def __getitem__(self, name):
        try:
            key = self._names[name]
        except KeyError:
            raise ModelError(f"{self._path} lacks the parameter {checkpoint_name(name, self._model_type)!r} "
                             f"(Hugging Face {self._model_type} names, optionally prefixed "
                             f"'{self._model_type}.')") from None
        try:
            return self._handle.get_tensor(key)
        except (TypeError, ValueError) as e:
            raise ModelError(f"{self._path}: cannot read {key!r} as a numpy array ({e}); "
                             "only float32/float16 checkpoints are supported") from None

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)


@dataclasses.dataclass
class EncoderLayer:
    """One transformer layer on the kernels: six linear layers (query's weights scaled by
    1/sqrt(head size), ffn_in with GELU in its epilogue, attn_out and ffn_out adding into the
    residual stream) and two LayerNorms. forward() is the layer's body for BertEncoder and for sparsebench.torch's fused layers."""

    query: SparseLinear
    key: SparseLinear
    value: SparseLinear
    attn_out: SparseLinear
    ffn_in: SparseLinear
    ffn_out: SparseLinear
    ln1: tuple                  # (gamma, beta), each (hidden,) float32
    ln2: tuple
    eps: float                  # of both LayerNorms
    #: Q, K and V stacked by rows, their layers computing on views of its rows (see _stack_qkv):
    #: (matrix, bias, {n: KernelPlan or None}, the three SparseLinears, their matrices), or None
    _qkv: tuple = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        self._stack_qkv()

    def __copy__(self):
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)     # the same layers on the same stack
        return other

    def __getstate__(self):
        return {**self.__dict__, "_qkv": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._stack_qkv()

    def _stack_qkv(self):
        """Stack the matrices and biases of query, key and value by rows, and have the three layers
        compute on views of them (no copy of the weights), where they are of one dtype, block and
        K with no activation (else _qkv is None)."""
        self._qkv = None
        lins = (self.query, self.key, self.value)
        if not all(type(lin.A) is type(self.query.A) and lin.activation is None for lin in lins):
            return
        try:
            stacked = type(self.query.A).vstack([lin.A for lin in lins])
        except ValueError:                      # other blocks, K, or rows not whole blocks
            return
        bias = None if all(lin.bias is None for lin in lins) else np.concatenate(
            [np.zeros(lin.out_features, np.float32) if lin.bias is None else lin.bias for lin in lins])
        br, i, r = stacked.block[0], 0, 0
        for lin in lins:
            rows = -(-lin.out_features // br)
            lin.share(stacked.block_rows(i, i + rows), None if lin.bias is None else bias[r:r + lin.out_features])
            i, r = i + rows, r + lin.out_features
        self._qkv = (stacked, bias, {}, lins, tuple(lin.A for lin in lins))

    def fused_qkv(self, n):
        """(stacked matrix, stacked bias, KernelPlan) to compute Q, K and V for n tokens in one
        kernel call, or None (chosen once per n): when all three run the sparse kernels for n
        tokens with the same compiled variant (ISA and N-tile: then the same bits as three
        calls). The plan is query's (tuned or given), or the default heuristic's for the stacked
        matrix (whose threads count its whole work). Stacked again if a layer was replaced; three
        calls if their matrices were. BERT-Base, 90% 4x1, 2 threads, side by side in one process:
        one call of 2304 rows ran 1.09x (float32) and 1.12x (int8) faster than three of 768 at
        128 tokens, 1.24x and 1.58x at 8 tokens."""
        lins = (self.query, self.key, self.value)
        if self._qkv is not None and any(a is not b for a, b in zip(lins, self._qkv[3])):
            self._stack_qkv()                   # a layer was replaced
        elif self._qkv is not None and any(lin.A is not A for lin, A in zip(lins, self._qkv[4])):
            # their matrices were replaced, or stacked again by another layer that shares them
            # (restacking here would take turns with it): three calls from now on
            self._qkv = None
        if self._qkv is None:
            return None
        stacked, bias, plans = self._qkv[:3]
        if n not in plans:
            own = [lin.plan(n) for lin in lins]
            plan = None
            variant = lambda p: (p.config.isa, p.config.n_tile)      # noqa: E731
            if all(p.method == "sparse" for p in own) and len({variant(p) for p in own}) == 1:
                plan = own[0] if not own[0].is_default else dataclasses.replace(
                    own[0], config=default_config(stacked, n, self.query.threads))
            plans[n] = plan
        return None if plans[n] is None else (stacked, bias, plans[n])

    def linears(self):
        return [(name, getattr(self, name)) for name, _ in _LINEARS]

    def forward(self, ws, heads, key_mask, ops, attend, threads, timer=None, x=None, quantize_for=None):
        """ws.hidden (hidden x tokens, the residual stream) <- this layer applied to it, in place;
        ws: a Workspace of exactly these tokens, key_mask: additive (batch, seq) or None.

        x: what Q, K and V read when the LayerNorm that wrote ws.hidden already quantized it for
        them (qkv_block), else None. quantize_for: an int8 block, to have the last LayerNorm
        quantize its output for it (the next layer's qkv_block). Returns that
        QuantizedActivations, or None."""
        timer = timer or _NO_TIMER
        n = ws.hidden.shape[1]
        if x is None:
            block = self.qkv_block(n)
            x = ws.hidden if block is None else quantize_activations(ws.hidden, block, threads=threads)
        fused = self.fused_qkv(n)
        if fused is not None:
            A, bias, plan = fused
            spmm_into(A, x, plan.config, ws.qkv, bias)
            for lin in (self.query, self.key, self.value):
                lin.ran(plan)
            timer.lap("sparse GEMMs")
        else:
            for lin, buf in ((self.query, ws.q), (self.key, ws.k), (self.value, ws.v)):
                lin.matmul_into(x, buf)
                timer.lap(_GEMM_CATEGORY[lin.method])
        attend(ws.qkv, ws.ctx, heads, ws.shape[0], key_mask, threads)
        timer.lap("attention")
        # hidden += attn_out(ctx) in the kernel's store step, while the GEMM runs: the LayerNorm then
        # reads one array, not two (quantized for ffn_in in the same pass when it reads int8)
        self.attn_out.matmul_into(ws.ctx, ws.hidden, accumulate=True)
        timer.lap(_GEMM_CATEGORY[self.attn_out.method])
        x = layer_norm(ops, ws.hidden, self.ln1, self.eps, None, threads, _int8_block(self.ffn_in, n))
        timer.lap("LayerNorm")
        self.ffn_in.matmul_into(ws.hidden if x is None else x, ws.inter)     # sparse: GELU fused in the kernel
        timer.lap(_GEMM_CATEGORY[self.ffn_in.method])
        if self.ffn_in.method == "numpy":
            self.ffn_in.activate(ws.inter)
            timer.lap("GELU")
        self.ffn_out.matmul_into(ws.inter, ws.hidden, accumulate=True)
        timer.lap(_GEMM_CATEGORY[self.ffn_out.method])
        x = layer_norm(ops, ws.hidden, self.ln2, self.eps, None, threads, quantize_for)
        timer.lap("LayerNorm")
        return x

    def qkv_block(self, n):
        """The int8 block Q, K and V read one quantization of their input in (all three on the int8
        kernels, sparse for n tokens, with the same block), or None."""
        blocks = {_int8_block(lin, n) for lin in (self.query, self.key, self.value)}
        return blocks.pop() if len(blocks) == 1 else None


def _int8_block(linear, n):
    """linear's block if it runs the int8 sparse kernels for n tokens (it reads quantized X), else None."""
    return linear.block if linear.dtype == "int8" and linear.plan(n).method == "sparse" else None


def layer_norm(ops, hidden, ln, eps, residual, threads, block=None):
    """hidden <- LayerNorm(hidden + residual) in place with ln = (gamma, beta); with an int8
    `block`, also quantized for its kernels in the same pass: returns that QuantizedActivations
    (else None)."""
    if block is None:
        ops.add_layer_norm(hidden, *ln, eps, residual, threads)
        return None
    return layer_norm_quantized(hidden, *ln, eps, residual, block, threads)


def forward_layers(layers, ws, key_mask, ops, attend, threads, timer=None, x=None):
    """ws.hidden <- `layers` ((EncoderLayer, heads) pairs) applied in turn; x: ws.hidden already
    quantized for the first layer's Q, K and V (its qkv_block), or None. Each layer's last
    LayerNorm quantizes its output for the next layer's Q, K and V when they read int8."""
    n = ws.hidden.shape[1]
    for i, (layer, heads) in enumerate(layers):
        after = layers[i + 1][0].qkv_block(n) if i + 1 < len(layers) else None
        x = layer.forward(ws, heads, key_mask, ops, attend, threads, timer, x, after)


#: tokens a forward pass takes at once. BERT-Base, batch 8 x 128 tokens, 90% 4x1, 2 threads, side by
#: side in one process: passes of 128 tokens ran 1.19x (float32) and 1.30x (int8) faster than the
#: whole batch at once, 256 tokens 1.08x and 1.26x (the activations of 1024 tokens, 31 MB, do not
#: stay in a 32 MB L3 shared with other tenants); per sequence, as fast as batch 1.
DEFAULT_TOKENS_PER_PASS = 128


class Workspace:
    """Every buffer of one forward pass of up to `batch` sequences of `seq` tokens, for a
    model of width `hidden` and feed-forward width `intermediate`."""

    #: the features x tokens buffers (a pass over fewer tokens uses their first columns)
    BY_TOKEN_COLUMN = ("hidden", "qkv", "ctx", "inter")

    def __init__(self, hidden, intermediate, batch, seq):
        H, I, T = hidden, intermediate, batch * seq
        self.shape = (batch, seq)
        f32 = np.float32
        # activations: rows padded apart where they would alias in the caches (at T = 1024 the
        # sparse GEMMs and attention run 1.2x faster than on 4 KiB rows)
        # hidden: the residual stream (the output projections add into it); qkv: Q, K, V
        # stacked, the attention kernel's input; ctx: its output; inter: the feed-forward's
        for name, rows in zip(self.BY_TOKEN_COLUMN, (H, 3 * H, H, I)):
            setattr(self, name, activations(rows, T))
        self.rows = np.empty((T, H), f32)        # embeddings, token-major
        self.gathered = np.empty((T, H), f32)    # position or token-type embeddings, token-major
        self.mask = np.empty((batch, seq), f32)  # additive: 0 or float32 min per key
        self._views()

    def _views(self):
        H = self.hidden.shape[0]
        self.q, self.k, self.v = self.qkv[:H], self.qkv[H:2 * H], self.qkv[2 * H:]

    def first(self, batch):
        """The buffers of the first `batch` sequences (views; self when that is all of them)."""
        if batch == self.shape[0]:
            return self
        part = copy.copy(self)
        T = batch * self.shape[1]
        part.shape = (batch, self.shape[1])
        for name in self.BY_TOKEN_COLUMN:
            setattr(part, name, getattr(self, name)[:, :T])
        part.rows, part.gathered, part.mask = self.rows[:T], self.gathered[:T], self.mask[:batch]
        part._views()
        return part


class _NoTimer:
    def start(self):
        pass

    def lap(self, category):
        pass


class _OpTimer:
    """Wall time per op category (perf_counter between consecutive laps)."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self._last = time.perf_counter()

    def start(self):
        self._last = time.perf_counter()

    def lap(self, category):
        now = time.perf_counter()
        self.seconds[category] += now - self._last
        self._last = now


_NO_TIMER = _NoTimer()
_GEMM_CATEGORY = {"sparse": "sparse GEMMs", "dense": "dense GEMMs", "numpy": "dense GEMMs"}


class BertEncoder:
    """BERT encoder: ``enc(input_ids, attention_mask=None, token_type_ids=None)`` returns
    numpy (batch, seq, hidden) float32, what Hugging Face ``BertModel(...).last_hidden_state``
    returns.

    `weights` maps Hugging Face parameter names (no "bert." prefix) to arrays. Linear weights are
    pruned to `sparsity` in `block` blocks (default 4x1), or kept as they are with sparsity=None
    (then each layer's block pattern is detected unless `block` is given). `tuned`, a path to a
    tuned-config file (or a table from sparsebench.tune.apply.load_tuned), picks each linear layer's
    kernel; without it the default heuristic runs (kernel_report says so). `linear_config`
    ("dense", "numpy" or a KernelConfig) forces one kernel on every linear layer. `threads`: threads of
    the sparse kernels, of the fused LayerNorm, GELU and attention kernels, and BLAS threads of
    dense linear layers. `dtype` "int8" runs the linear layers on the int8
    kernels (AVX512-VNNI; s8 weights per row, activations quantized per token as each layer
    reads them, once for Q, K and V). `attention` "int8" (the default with dtype "int8") runs
    both products of self-attention on VNNI too (kernels/encoder/attention_int8.h); "float32" keeps the
    float32 kernel. LayerNorm stays float32. `tokens_per_pass` (default DEFAULT_TOKENS_PER_PASS;
    None: a whole batch at once) splits a larger batch into passes of as many whole sequences as
    fit in that many tokens (at least one), so that a pass's activations stay in the caches.
    """

    def __init__(self, config, weights, *, sparsity=None, block=None, tuned=None, linear_config=None,
                 threads=None, dtype="float32", attention=None, tokens_per_pass=DEFAULT_TOKENS_PER_PASS):
        if not isinstance(config, BertConfig):
            raise ModelError(f"config must be a BertConfig, got {type(config).__name__}")
        self.config = config
        self.dtype = check_dtype(dtype)
        self.attention = _check_attention(attention or self.dtype, config)
        self.threads = threads or default_threads()
        self.tokens_per_pass = _tokens_per_pass(tokens_per_pass)
        self.sparsity = None if sparsity is None else check_sparsity(sparsity)
        self.block = None if block is None else tuple(block)
        self.tuned_source = None if tuned is None else (tuned if isinstance(tuned, (str, os.PathLike))
                                                       else type(tuned).__name__)
        self.tuned = table = tuned_table(tuned)
        shapes = parameter_shapes(config)

        def param(name):
            a = np.asarray(weights[name])
            if a.shape != shapes[name]:
                raise ModelError(f"parameter {name!r} has shape {a.shape}, the {config.name} "
                                 f"config needs {shapes[name]}")
            if not np.issubdtype(a.dtype, np.floating):
                raise ModelError(f"parameter {name!r} has dtype {a.dtype}, needs floating point")
            return a.astype(np.float32, copy=False)

        def vector(name):
            return np.ascontiguousarray(param(name), dtype=np.float32)

        self.word_embeddings = np.ascontiguousarray(param("embeddings.word_embeddings.weight"))
        self.position_embeddings = np.ascontiguousarray(param("embeddings.position_embeddings.weight"))
        self.token_type_embeddings = np.ascontiguousarray(param("embeddings.token_type_embeddings.weight")) \
            if config.type_vocab_size else None
        self.embeddings_ln = (vector("embeddings.LayerNorm.weight"), vector("embeddings.LayerNorm.bias"))
        scale = 1.0 / np.sqrt(config.head_dim)
        self.layers = []
        for i in range(config.layers):
            p = f"encoder.layer.{i}."
            linears = {}
            for name, hf in _LINEARS:
                W = param(p + hf + ".weight")
                blk = self.block
                if blk is None:
                    blk = DEFAULT_BLOCK if self.sparsity is not None else (detect_block(W)[0] or DEFAULT_BLOCK)
                linears[name] = SparseLinear(
                    W, param(p + hf + ".bias"), sparsity=self.sparsity, block=blk,
                    scale=scale if name == "query" else 1.0,
                    activation="gelu" if name == "ffn_in" else None,
                    config=linear_config, tuned=table, threads=self.threads, name=f"layer{i}.{name}",
                    dtype=dtype)
            self.layers.append(EncoderLayer(**linears,
                                      ln1=(vector(p + "attention.output.LayerNorm.weight"),
                                           vector(p + "attention.output.LayerNorm.bias")),
                                      ln2=(vector(p + "output.LayerNorm.weight"),
                                           vector(p + "output.LayerNorm.bias")),
                                      eps=config.layer_norm_eps))
        self._ops = encoder_module()
        self._attend = attention_kernel(self.attention, self._ops)
        self._ws = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def random(cls, name, seed=0, sparsity=0.9, block=(4, 1), tuned=None, **kwargs):
        """A named model size (see config.MODELS) with seeded random weights."""
        config = name if isinstance(name, BertConfig) else model_config(name)
        return cls(config, _RandomWeights(config, seed), sparsity=sparsity, block=block, tuned=tuned,
                   **kwargs)

    @classmethod
    def from_pretrained(cls, path, sparsity=None, block=None, tuned=None, **kwargs):
        """From a Hugging Face BERT, DistilBERT or RoBERTa checkpoint directory (config.json +
        model.safetensors).

        sparsity=None keeps the weights (an already pruned checkpoint: its block pattern is
        detected); a number prunes every linear layer to it on load.
        """
        path = os.fspath(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"checkpoint directory {path} does not exist")
        config = BertConfig.from_json_file(os.path.join(path, "config.json"))
        weights_file = os.path.join(path, "model.safetensors")
        if not os.path.isfile(weights_file):
            raise FileNotFoundError(f"no model.safetensors in {path} (only safetensors checkpoints "
                                    "are read; convert a pytorch_model.bin with transformers first)")
        try:
            from safetensors import safe_open
        except ImportError:
            raise ModelError("reading checkpoints needs the safetensors package: "
                             "pip install safetensors") from None
        with safe_open(weights_file, framework="np") as handle:
            return cls(config, _CheckpointWeights(handle, weights_file, config), sparsity=sparsity, block=block,
                       tuned=tuned, **kwargs)

    def with_tokens_per_pass(self, tokens_per_pass):
        """The same encoder (same layers) with its own buffers and another tokens_per_pass."""
        enc = copy.copy(self)
        enc.tokens_per_pass, enc._ws = _tokens_per_pass(tokens_per_pass), None
        return enc

    def as_dense(self):
        """The same encoder (same pruned weights) with every linear layer on numpy's dense
        matmul: the dense baseline of our own runner."""
        return self._with_linears(SparseLinear.as_dense, "float32")

    def as_float32(self):
        """The same encoder with every linear layer on the float32 sparse kernels (an int8
        encoder's dequantized weights): the yardstick of the int8 runner."""
        return self._with_linears(SparseLinear.as_float32, "float32")

    def _with_linears(self, convert, dtype):
        """A copy with every linear layer converted and float32 attention."""
        enc = copy.copy(self)
        enc.layers = [dataclasses.replace(layer, **{name: convert(lin) for name, lin in layer.linears()})
                      for layer in self.layers]
        enc.dtype = enc.attention = dtype
        enc._attend = attention_kernel(enc.attention, enc._ops)
        enc._ws = None
        return enc

    def state_dict(self):
        """Hugging Face parameter names of the model type (no prefix such as "bert.") -> numpy
        arrays (linear weights as pruned)."""
        out = {"embeddings.word_embeddings.weight": self.word_embeddings,
               "embeddings.position_embeddings.weight": self.position_embeddings,
               "embeddings.token_type_embeddings.weight": self.token_type_embeddings,
               "embeddings.LayerNorm.weight": self.embeddings_ln[0],
               "embeddings.LayerNorm.bias": self.embeddings_ln[1]}
        for i, layer in enumerate(self.layers):
            p = f"encoder.layer.{i}."
            for (_, lin), (_, hf) in zip(layer.linears(), _LINEARS):
                out[p + hf + ".weight"], out[p + hf + ".bias"] = lin.dense_weight()
            for ln, (gamma, beta) in (("attention.output.LayerNorm", layer.ln1), ("output.LayerNorm", layer.ln2)):
                out[p + ln + ".weight"], out[p + ln + ".bias"] = gamma, beta
        return {checkpoint_name(name, self.config.model_type): a for name, a in out.items() if a is not None}

    # -- reports ------------------------------------------------------------------------------
    def kernel_report(self, tokens):
        """One dict per linear layer: shape, block, sparsity and the kernel it runs for `tokens`
        (= batch * seq) columns, with where that choice came from."""
        rows = []
        for i, layer in enumerate(self.layers):
            fused = layer.fused_qkv(tokens)
            for name, lin in layer.linears():
                plan = lin.plan(tokens)
                note = plan.note
                if fused is not None and name in ("query", "key", "value"):
                    plan, note = fused[2], "; ".join(filter(None, [note, "Q, K and V in one call"]))
                rows.append({"layer": i, "linear": name, "M": lin.out_features, "K": lin.in_features,
                             "N": tokens, "block": "%dx%d" % lin.block, "sparsity": round(lin.sparsity, 4),
                             "method": plan.method, "kernel": plan.kernel, "source": plan.source,
                             "note": note})
        return rows

    def describe(self):
        """One line: model, weights and how the kernels are chosen."""
        lins = [lin for layer in self.layers for _, lin in layer.linears()]
        blocks = sorted({"%dx%d" % lin.block for lin in lins})
        mean_sparsity = float(np.mean([lin.sparsity for lin in lins]))
        how = "pruned to" if self.sparsity is not None else "kept, measured"
        tuned = f"tuned configs from {self.tuned_source}" if self.tuned_source else \
            "default kernel heuristic (no tuned file)"
        c = self.config
        return (f"{c.name}: {c.layers} layers, hidden {c.hidden}, {c.heads} heads, intermediate "
                f"{c.intermediate}; linear weights {how} {mean_sparsity:.1%} sparse in "
                f"{','.join(blocks)} blocks, {self.dtype} kernels, {self.attention} attention; {tuned}; {self.threads} threads"
                + (f"; at most {self.tokens_per_pass} tokens a pass" if self.tokens_per_pass else ""))

    # -- forward ------------------------------------------------------------------------------
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, out=None):
        ids, mask, types = self._check_inputs(input_ids, attention_mask, token_type_ids)
        return self._forward(ids, mask, types, out, _NO_TIMER)

    def profile(self, input_ids, attention_mask=None, token_type_ids=None, repeats=10):
        """Mean seconds per forward pass in each op category (CATEGORIES) over `repeats` passes
        after one warm-up; the categories add up to the wall time of a pass."""
        ids, mask, types = self._check_inputs(input_ids, attention_mask, token_type_ids)
        self._forward(ids, mask, types, None, _NO_TIMER)
        timer = _OpTimer()
        for _ in range(repeats):
            self._forward(ids, mask, types, None, timer)
        return {c: timer.seconds.get(c, 0.0) / repeats for c in CATEGORIES}

    def _check_inputs(self, input_ids, attention_mask, token_type_ids):
        c = self.config
        ids = _integer_array(input_ids, "input_ids")
        if ids.ndim != 2 or ids.shape[0] < 1 or ids.shape[1] < 1:
            raise ModelError(f"input_ids must have shape (batch, seq) with batch, seq >= 1, got {ids.shape}")
        if ids.shape[1] > c.max_sequence:
            raise ModelError(f"sequence length {ids.shape[1]} exceeds the model's {c.max_sequence} positions")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ModelError(f"input_ids must be in [0, {c.vocab_size}), got values from "
                             f"{ids.min()} to {ids.max()}")
        mask = None
        if attention_mask is not None:
            mask = np.asarray(attention_mask)
            if mask.shape != ids.shape:
                raise ModelError(f"attention_mask has shape {mask.shape}, input_ids {ids.shape}")
            if mask.dtype.kind not in "biuf" or not np.all((mask == 0) | (mask == 1)):
                raise ModelError("attention_mask must hold only 0 (padding) and 1 (token)")
            mask = None if mask.all() else mask
        types = None
        if token_type_ids is not None:
            if not c.type_vocab_size:
                raise ModelError(f"{c.name} ({c.model_type}) has no token types: pass token_type_ids=None")
            types = _integer_array(token_type_ids, "token_type_ids")
            if types.shape != ids.shape:
                raise ModelError(f"token_type_ids has shape {types.shape}, input_ids {ids.shape}")
            if types.min() < 0 or types.max() >= c.type_vocab_size:
                raise ModelError(f"token_type_ids must be in [0, {c.type_vocab_size})")
        return ids, mask, types

    def _workspace(self, batch, seq):
        if self._ws is None or self._ws.shape != (batch, seq):
            self._ws = None                      # free the old buffers first
            self._ws = Workspace(self.config.hidden, self.config.intermediate, batch, seq)
        return self._ws

    def sequences_per_pass(self, batch, seq):
        """How many of `batch` sequences go through the encoder together."""
        return sequences_per_pass(batch, seq, self.tokens_per_pass)

    def release_buffers(self):
        """Free the forward pass's buffers (they are made again, for the new shape, when needed)."""
        self._ws = None

    def _forward(self, ids, mask, types, out, timer):
        """out (batch, seq, hidden) <- the encoder, sequences_per_pass sequences at a time."""
        batch, seq = ids.shape
        c = self.config
        if out is None:
            out = np.empty((batch, seq, c.hidden), np.float32)
        elif not (isinstance(out, np.ndarray) and out.shape == (batch, seq, c.hidden)
                  and out.dtype == np.float32 and out.flags.c_contiguous):
            raise ModelError(f"out must be a C-contiguous float32 array of shape {(batch, seq, c.hidden)}")
        per = self.sequences_per_pass(batch, seq)
        ws = self._workspace(per, seq)
        for s in range(0, batch, per):
            part = slice(s, s + per)
            self._pass(ws.first(min(per, batch - s)), ids[part], None if mask is None else mask[part],
                       None if types is None else types[part], out[part], timer)
        return out

    def _pass(self, ws, ids, mask, types, out, timer):
        """One pass of the encoder over all of `ids` (ws: buffers of exactly that many tokens)."""
        batch, seq = ids.shape
        c, ops, threads = self.config, self._ops, self.threads
        eps = c.layer_norm_eps
        timer.start()
        self._embed(ws, ids, types)
        timer.lap("embeddings")
        first = self.layers[0].qkv_block(ws.hidden.shape[1]) if self.layers else None
        x = layer_norm(ops, ws.hidden, self.embeddings_ln, eps, None, threads, first)
        timer.lap("LayerNorm")
        key_mask = None if mask is None else key_mask_into(mask, ws.mask)
        forward_layers([(layer, c.heads) for layer in self.layers], ws, key_mask, ops, self._attend, threads,
                       timer, x)
        np.copyto(out.reshape(batch * seq, c.hidden), ws.hidden.T)
        timer.lap("copies/other")

    def _embed(self, ws, ids, types):
        """word + position + token type embeddings, into ws.hidden (hidden x tokens)."""
        batch, seq = ids.shape
        rows, gathered = ws.rows, ws.gathered
        np.take(self.word_embeddings, ids.reshape(-1), axis=0, out=rows)
        by_sequence = rows.reshape(batch, seq, -1)
        if self.config.model_type == "roberta":
            np.take(self.position_embeddings, _roberta_positions(ids, self.config.pad_token_id).reshape(-1),
                    axis=0, out=gathered)
            np.add(rows, gathered, out=rows)
        else:
            np.add(by_sequence, self.position_embeddings[:seq], out=by_sequence)
        if self.token_type_embeddings is not None and types is None:
            np.add(rows, self.token_type_embeddings[0], out=rows)
        elif self.token_type_embeddings is not None:
            np.take(self.token_type_embeddings, types.reshape(-1), axis=0, out=gathered)
            np.add(rows, gathered, out=rows)
        np.copyto(ws.hidden, rows.T)


def sequences_per_pass(batch, seq, tokens_per_pass):
    """How many of `batch` sequences of `seq` tokens go through the layers together: all of them
    (tokens_per_pass None), or as many as fit in tokens_per_pass tokens (at least one)."""
    if not tokens_per_pass:
        return batch
    return max(1, min(batch, tokens_per_pass // seq))


def _tokens_per_pass(value):
    """A checked tokens_per_pass: None, or a positive integer."""
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        n = 0
    if n < 1:
        raise ModelError(f"tokens_per_pass must be a positive integer or None, got {value!r}")
    return n


def key_mask_into(keep, out):
    """`out` (batch, seq) float32 <- the attention kernels' additive mask: 0 for the keys `keep`
    marks (nonzero or True), float32's minimum for the others."""
    return np.multiply(1.0 - np.asarray(keep, np.float32), np.finfo(np.float32).min, out=out)


def _roberta_positions(ids, pad):
    """RoBERTa's position ids (transformers' create_position_ids_from_input_ids): tokens count
    from pad + 1, padding tokens keep pad."""
    tokens = ids != pad
    return np.where(tokens, np.cumsum(tokens, axis=1) + pad, pad)


def _check_attention(attention, config):
    if attention not in ("float32", "int8"):
        raise ModelError(f"attention must be 'float32' or 'int8', got {attention!r}")
    if attention == "int8" and config.head_dim % 4:
        raise ModelError(f"int8 attention needs a head size that is a multiple of 4, {config.name} "
                         f"has {config.head_dim}: use attention='float32'")
    return attention


def attention_kernel(attention, ops):
    """The attention function (qkv, ctx, heads, batch, mask, threads) of `attention`."""
    if attention == "float32":
        return ops.attention
    try:
        return int8_attention()
    except UnsupportedISAError as e:
        raise ModelError(f"int8 attention: {e}; use attention='float32'") from None


def _integer_array(a, name):
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise ModelError(f"{name} must hold integer token ids, got dtype {arr.dtype}")
    return arr


def tuned_table(tuned):
    """A tuned-config table from a path (via sparsebench.tune.apply), or `tuned` itself if it is
    one (or None)."""
    if tuned is None or hasattr(tuned, "lookup"):
        return tuned
    from ..tune.apply import load_tuned

    return load_tuned(os.fspath(tuned))
