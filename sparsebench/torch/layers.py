"""Whole transformer layers of transformers' models on sparsebench's kernels (sparsify's fuse_layers).

A BertLayer, RobertaLayer or DistilBERT TransformerBlock whose six linear layers are SparseLinear
(GELU fused into the first feed-forward one) becomes an instance of Sparse<its class>, a subclass:
its parameters, state_dict names, isinstance and pickling stay as they were. Its forward
transposes the hidden states into features x tokens once (on the kernels' pool), runs the layer
body of sparsebench's own BertEncoder (models.bert.EncoderLayer.forward: the kernels, the fused
attention, the residual adds in the kernels' store step, LayerNorm) and transposes the result back: no PyTorch op, no
per-linear call and no per-linear transpose inside the layer.

Their encoder (BertEncoder, RobertaEncoder, DistilBERT's Transformer) becomes Sparse<its class>
too when all its layers are fused: it then runs the whole stack in passes of whole sequences of
at most tokens_per_pass tokens (default 128, an attribute of the encoder), as sparsebench's
BertEncoder does: a pass's activations stay in the caches and are transposed once.

transformers' own forward runs instead whenever a call needs what the fused body does not do:
gradients, cross-attention or a cache, attention weights being recorded (output_attentions), a
mask that is not a per-key padding mask (causal, or a bias). Forward hooks on the layer run;
hooks on the modules inside it do not, as in any fused kernel; when the encoder runs the stack
in passes, the layers' own hooks see the final hidden states passed through (hidden states
being recorded, output_hidden_states, take the layer-by-layer path).
"""
import importlib
import threading

import numpy as np

import torch

from ..cpu import best_isa, encoder_module, kernel_module
from ..models.bert import (_DISTILBERT_NAMES, _LINEARS, DEFAULT_TOKENS_PER_PASS, EncoderLayer, Workspace,
                           attention_kernel, forward_layers, key_mask_into, sequences_per_pass)
from .linear import SparseLinear, _version, register_handle, registered, sources, state_without

__all__ = ["FUSABLE_LAYERS", "fuse_layers"]

_BERT_PATHS = dict(_LINEARS, ln1="attention.output.LayerNorm", ln2="output.LayerNorm",
                   attention="attention.self", act="intermediate.intermediate_act_fn")
_DISTILBERT_PATHS = {name: _DISTILBERT_NAMES.get(path, path) for name, path in _BERT_PATHS.items()}
_DISTILBERT_PATHS.update(attention="attention", act="ffn.activation")
for _paths_of in (_BERT_PATHS, _DISTILBERT_PATHS):
    # the six linear layers, ln1, ln2 and the attention module, as attribute chains
    _paths_of["parts"] = tuple(tuple(_paths_of[name].split(".")) for name in
                               [name for name, _ in _LINEARS] + ["ln1", "ln2", "attention"])

#: class name -> (its transformers module, paths of its parts): query ... ffn_out (the linear
#: layers, EncoderLayer's names), ln1 and ln2, the self-attention module (heads, scaling), the
#: activation after ffn_in; "parts": linears, LayerNorms and attention as attribute chains
FUSABLE_LAYERS = {
    "BertLayer": ("transformers.models.bert.modeling_bert", _BERT_PATHS),
    "RobertaLayer": ("transformers.models.roberta.modeling_roberta", _BERT_PATHS),
    "TransformerBlock": ("transformers.models.distilbert.modeling_distilbert", _DISTILBERT_PATHS),
}
#: encoder class name -> its transformers module: a stack of layers in a ModuleList `layer`
FUSABLE_ENCODERS = {
    "BertEncoder": "transformers.models.bert.modeling_bert",
    "RobertaEncoder": "transformers.models.roberta.modeling_roberta",
    "Transformer": "transformers.models.distilbert.modeling_distilbert",
}
#: layer keyword arguments that are harmless when set (the rest, when not None or False, fall back)
_IGNORED_KWARGS = frozenset({"output_hidden_states", "return_dict", "use_cache", "cache_position", "position_ids"})

_workspaces = threading.local()                   # this thread's buffers, shared by every fused layer
_pass = threading.local()                         # this thread's forward pass: its converted mask


def fuse_layers(model):
    """Turn every fusable transformer layer of `model` into its Sparse<class> (in place); return
    {layer name: why it was not fused} for the layers of FUSABLE_LAYERS' classes left as they were."""
    skipped = {}
    for name, module in model.named_modules():
        paths = _paths(module)
        if paths is None or isinstance(module, _FusedLayer):
            continue
        why = _unfusable(module, paths)
        if why:
            skipped[name] = why
            continue
        module.__class__ = fused_class(type(module))
        module._sb_handle = register_handle(module)
    for module in model.modules():
        base = type(module)
        layers = getattr(module, "layer", None)
        if (FUSABLE_ENCODERS.get(base.__name__) == base.__module__ and isinstance(layers, torch.nn.ModuleList)
                and len(layers) and all(isinstance(layer, _FusedLayer) for layer in layers)):
            module.__class__ = fused_class(base)
    fusable = [m for m in model.modules() if _paths(m) is not None]
    fused = [m for m in fusable if isinstance(m, _FusedLayer)]
    if fused and not getattr(model, "_sb_hooked", False):
        model.register_forward_pre_hook(_forward_starts)
        model.register_forward_hook(_forward_ends, always_call=True)
        fused[0].register_forward_hook(_torch_threads_back, always_call=True)
        model._sb_hooked = True
    model._sb_one_torch_thread = bool(fused) and len(fused) == len(fusable)
    return skipped


# A fused model's hooks, at its start and end, and after its first fused layer. From the start
# to the end of the first fused layer, when every layer was fused, PyTorch's own ops (the
# embeddings) run on one thread: after each op PyTorch's OpenMP workers spin for milliseconds
# (libgomp's default GOMP_SPINCOUNT) on the cores our pool needs. BERT-Base after sparsify, torch
# imported first, 2 threads: 1.32x our BertEncoder's time with the embeddings on 2 torch
# threads, 1.14-1.17x on one (side by side, 2 runs). torch.set_num_threads is process-wide, so
# only the main thread changes it; a fallback to transformers' forward gets the count back first.
_saved_threads = None


def _forward_starts(model, args):
    if torch.compiler.is_compiling():
        return
    _pass.mask = None
    global _saved_threads
    if (model._sb_one_torch_thread and _saved_threads is None
            and threading.current_thread() is threading.main_thread()):
        _saved_threads = torch.get_num_threads()
        torch.set_num_threads(1)


def _forward_ends(model, args, output):
    if torch.compiler.is_compiling():
        return
    _pass.mask = None
    _restore_torch_threads()


def _torch_threads_back(layer, args, output):
    if not torch.compiler.is_compiling():
        _restore_torch_threads()


def _restore_torch_threads():
    global _saved_threads
    if _saved_threads is not None and threading.current_thread() is threading.main_thread():
        torch.set_num_threads(_saved_threads)
        _saved_threads = None


def _paths(module):
    """The FUSABLE_LAYERS paths of `module`'s class, None for any other module."""
    base = type(module)
    if isinstance(module, _FusedLayer):
        base = base.__mro__[2]
    entry = FUSABLE_LAYERS.get(base.__name__)
    return entry[1] if entry and base.__module__ == entry[0] else None


def _unfusable(module, paths):
    """Why `module` cannot run fused, or "" if it can."""
    linears = [module.get_submodule(paths[name]) for name, _ in _LINEARS]
    if not all(isinstance(lin, SparseLinear) for lin in linears):
        return "not every linear layer is a SparseLinear"
    if len({(lin.dtype, lin.threads) for lin in linears}) > 1:
        return "its linear layers differ in dtype or threads"
    lns = [module.get_submodule(paths[name]) for name in ("ln1", "ln2")]
    hidden = linears[0].in_features
    if not all(isinstance(ln, torch.nn.LayerNorm) and tuple(ln.normalized_shape) == (hidden,)
               and ln.weight is not None and ln.bias is not None for ln in lns) or lns[0].eps != lns[1].eps:
        return "its LayerNorms are not two affine nn.LayerNorm over the hidden size with one eps"
    ffn_in, act = linears[4], module.get_submodule(paths["act"])
    if ffn_in.activation != "gelu" or not isinstance(act, torch.nn.Identity):
        return "its GELU is not fused into the first feed-forward layer (sparsify(..., fuse_gelu=True))"
    if linears[3].activation is not None or linears[5].activation is not None:
        return "an output projection has an activation (the fused layer adds them into the residual stream)"
    attention = module.get_submodule(paths["attention"])
    if getattr(attention, "is_causal", False) or getattr(module, "is_decoder", False):
        return "it is a decoder layer (causal attention)"
    return ""


class _FusedLayer:
    """The forward of every Sparse<layer class> (first base of each, see fused_class)."""

    def __getstate__(self):
        return state_without(super().__getstate__(), ("_sb_handle", "_sb_cache"))

    def __setstate__(self, state):
        super().__setstate__(state)
        self._sb_handle = register_handle(self)

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        if getattr(_pass, "identity", False):
            return hidden_states              # its encoder has run the whole stack already
        if self._sb_fusable_call(hidden_states, args, kwargs):
            if torch.compiler.is_compiling():
                return torch.ops.sparsebench.encoder_layer(hidden_states, attention_mask, self._sb_handle)
            y = self._sb_compute(hidden_states, attention_mask)
            if y is not None:
                return y
            _restore_torch_threads()
        return super().forward(hidden_states, attention_mask, *args, **kwargs)

    def _sb_fusable_call(self, x, args, kwargs):
        if self.training or (torch.is_grad_enabled() and x.requires_grad) or _recording("attentions"):
            return False
        if x.dim() != 3 or x.dtype != torch.float32 or x.device.type != "cpu" or x.numel() == 0:
            return False
        return all(a is None for a in args) and all(
            v is None or v is False for k, v in kwargs.items() if k not in _IGNORED_KWARGS)

    def _sb_compute(self, x, attention_mask, strict=False):
        """The fused layer on x (batch, seq, hidden); None if it cannot run it (a mask that is
        not a per-key padding mask, parts changed since fusing), strict: raise instead."""
        y = _in_passes([self], x, attention_mask, None)
        if y is None and strict:
            raise ValueError("this call needs transformers' own forward (a mask other than a per-key "
                             "padding mask, or parts changed since sparsify): sparsify(..., fuse_layers=False)")
        return y

    def _sb_layer(self):
        """(EncoderLayer, heads) over the current weights, or None if the layer no longer fuses
        (_unfusable): made again when a part, a parameter or its contents, an activation or an
        eps changed, or a linear was refresh()ed (checked on every call, as SparseLinear does)."""
        paths = _paths(self)
        parts = [_part(self, path) for path in paths["parts"]]
        tensors = [t for m in parts[:8] for name in ("weight", "bias") for t in sources(m, name)]
        key = (tuple(map(id, parts + tensors)) + tuple(map(_version, tensors))
               + tuple((getattr(m, "activation", None), getattr(m, "_generation", 0)) for m in parts[:6])
               + tuple(getattr(m, "eps", None) for m in parts[6:8]))
        cached = self.__dict__.get("_sb_cache")
        if cached is None or cached[0] != key:
            self._sb_cache = None
            if _unfusable(self, paths):
                return None
            *linears, ln1, ln2, attention = parts
            scale = float(attention.scaling)
            lins = {name: lin._kernel_layer(scale if name == "query" else 1.0)
                    for (name, _), lin in zip(_LINEARS, linears)}
            linears[0]._kernels.pop(1.0, None)     # the query's unscaled matrix: not needed while fused
            layer = EncoderLayer(**lins, ln1=_layer_norm(ln1), ln2=_layer_norm(ln2), eps=ln1.eps)
            # the parts and tensors stay referenced with the key, so their ids are not reused
            cached = self._sb_cache = (key, layer, _heads(attention, linears[0].in_features), parts, tensors)
        return cached[1], cached[2]


def refresh(model):
    """Make every SparseLinear and fused layer of `model` rebuild its kernels from the current
    parameters at its next call: after changes PyTorch's version counters do not see (writes
    through `.data` or `.numpy()`, in-place ops on inference tensors). Returns model."""
    for module in model.modules():
        if isinstance(module, SparseLinear):
            module.refresh()
        elif isinstance(module, _FusedLayer):
            module._sb_cache = None         # also its LayerNorms' parameters
    return model


def _part(module, path):
    for name in path:
        module = module._modules[name]
    return module


class _FusedEncoder:
    """The forward of every Sparse<encoder class> whose layers are all fused: the whole stack runs
    in passes of as many sequences as fit in tokens_per_pass tokens (as BertEncoder does: a
    pass's activations stay in the caches, and are transposed once, not at every layer), then
    transformers' own forward builds its output around the result with every layer passing it
    through. Anything the passes do not cover (a call a fused layer would not take, hidden
    states being recorded) goes layer by layer."""

    tokens_per_pass = DEFAULT_TOKENS_PER_PASS

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        layers = list(self.layer)
        if (not torch.compiler.is_compiling() and all(isinstance(layer, _FusedLayer) for layer in layers)
                and not _recording("hidden_states") and layers[0]._sb_fusable_call(hidden_states, args, kwargs)):
            y = _in_passes(layers, hidden_states, attention_mask, self.tokens_per_pass)
            if y is not None:
                _pass.identity = True
                try:
                    return super().forward(y, attention_mask, *args, **kwargs)
                finally:
                    _pass.identity = False
        return super().forward(hidden_states, attention_mask, *args, **kwargs)


def _in_passes(layers, x, attention_mask, tokens_per_pass):
    """The fused `layers` (one, or an encoder's stack) on x (batch, seq, hidden), in passes of
    whole sequences (tokens_per_pass None: one pass), one transpose in and one out per pass; None
    where transformers' forward must run (a mask other than padding, a layer that no longer fuses)."""
    batch, seq, hidden = x.shape
    per = sequences_per_pass(batch, seq, tokens_per_pass)
    keep = _pass_key_mask(attention_mask, batch, seq)
    fused = [layer._sb_layer() for layer in layers]
    if keep is False or any(f is None for f in fused):
        return None
    first = fused[0][0]
    threads, heads = first.query.threads, fused[0][1]
    ws = _workspace(hidden, first.ffn_in.out_features, per, seq)
    ops = encoder_module()
    attend = attention_kernel(_attention_dtype(first, hidden // heads), ops)
    transpose = kernel_module(best_isa()).transpose
    tokens = x.detach().reshape(batch * seq, hidden).contiguous().numpy()
    y = torch.empty((batch, seq, hidden), dtype=torch.float32)
    out = y.numpy().reshape(batch * seq, hidden)
    for s in range(0, batch, per):
        n = min(per, batch - s)
        part, rows = ws.first(n), slice(s * seq, (s + n) * seq)
        transpose(tokens[rows], part.hidden, threads)
        mask = None if keep is None else key_mask_into(keep[s:s + n], part.mask)
        forward_layers(fused, part, mask, ops, attend, threads)
        transpose(part.hidden, out[rows], threads)
    return y


def _layer_norm(ln):
    """(gamma, beta) as the LayerNorm kernel takes them: contiguous float32 arrays (copies of a
    strided parameter, views otherwise)."""
    return tuple(np.ascontiguousarray(p.detach().numpy()) for p in (ln.weight, ln.bias))


def _heads(attention, hidden):
    heads = getattr(attention, "num_attention_heads", None) or getattr(attention, "n_heads")
    if hidden % heads:
        raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
    return heads


def _attention_dtype(layer, head_dim):
    """int8 attention with int8 linear layers where the head size allows (as BertEncoder)."""
    return "int8" if layer.query.dtype == "int8" and head_dim % 4 == 0 else "float32"


def _workspace(hidden, intermediate, batch, seq):
    """This thread's Workspace for that shape (one at a time: a new shape replaces it)."""
    key = (hidden, intermediate, batch, seq)
    if getattr(_workspaces, "key", None) != key:
        _workspaces.ws = None                      # free the old buffers first
        _workspaces.ws, _workspaces.key = Workspace(hidden, intermediate, batch, seq), key
    return _workspaces.ws


def _pass_key_mask(mask, batch, seq):
    """_key_mask, worked out once per forward pass of a fused model for the mask object all its
    layers are given (the model's hooks forget it at the start and end of each pass)."""
    last = getattr(_pass, "mask", None)
    if last is None or last[0] is not mask or last[1:3] != (batch, seq):
        last = _pass.mask = (mask, batch, seq, _key_mask(mask, batch, seq))
    return last[3]


def _key_mask(mask, batch, seq):
    """Which keys transformers' attention mask lets every query see, numpy bool (batch, seq):
    None when it masks nothing, False when it is not a per-key padding mask. Takes (batch, seq)
    0/1, (batch, 1, 1 or seq, seq) bool (True: attend) or additive float (0 or the dtype's
    minimum)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor):
        return False                               # e.g. a flex-attention BlockMask
    if mask.dim() == 4:
        if mask.shape[0] != batch or mask.shape[1] != 1 or mask.shape[3] != seq or not (
                mask.dtype == torch.bool or mask.dtype.is_floating_point):
            return False
        if mask.shape[2] > 1 and not bool((mask == mask[:, :, :1]).all()):
            return False                           # rows differ: causal, or not a padding mask
        mask = mask[:, 0, 0]
        if mask.dtype != torch.bool:
            if not bool(((mask == 0) | (mask <= torch.finfo(mask.dtype).min / 2)).all()):
                return False                       # an additive bias, not a mask
            mask = mask == 0
    elif mask.dim() == 2 and tuple(mask.shape) == (batch, seq):
        mask = mask != 0
    else:
        return False
    return None if bool(mask.all()) else mask.numpy()


def _recording(what):
    """Whether transformers is collecting `what` ("attentions", "hidden_states": output_attentions,
    output_hidden_states) right now."""
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return False
    collected = _active_collector.get()
    return collected is not None and what in collected


_CLASSES = {}


def fused_class(base):
    """Sparse<base>: `base` (a FUSABLE_LAYERS or FUSABLE_ENCODERS class) with the fused forward
    (made once per class, found by pickle through this module's __getattr__)."""
    cls = _CLASSES.get(base.__name__)
    if cls is None:
        mixin = _FusedEncoder if base.__name__ in FUSABLE_ENCODERS else _FusedLayer
        cls = type(f"Sparse{base.__name__}", (mixin, base), {"__module__": __name__})
        _CLASSES[base.__name__] = cls
    return cls


def __getattr__(name):
    """Sparse<class> for pickle and copy (made on first use from FUSABLE_LAYERS and FUSABLE_ENCODERS)."""
    base = name[len("Sparse"):] if name.startswith("Sparse") else None
    modules = {**{n: m for n, (m, _) in FUSABLE_LAYERS.items()}, **FUSABLE_ENCODERS}
    if base in modules:
        return fused_class(getattr(importlib.import_module(modules[base]), base))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@torch.library.custom_op("sparsebench::encoder_layer", mutates_args=())
def encoder_layer(x: torch.Tensor, attention_mask: torch.Tensor | None, handle: int) -> torch.Tensor:
    """The fused layer registered under `handle` on x (batch, seq, hidden)."""
    return registered(handle, "encoder_layer")._sb_compute(x, attention_mask, strict=True)


@torch.library.register_fake("sparsebench::encoder_layer")
def _encoder_layer_fake(x, attention_mask, handle):
    return x.new_empty(x.shape)
