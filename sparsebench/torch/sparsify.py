"""sparsify: swap sparsebench's kernels into a PyTorch model in place, with a summary of what changed."""
import dataclasses
import fnmatch
import math
import warnings

import torch

from ..blocks import SUPPORTED_BLOCKS, check_block
from ..idle_spin import LOADED_FIRST
from ..models.bert import tuned_table
from ..models.linear import detect_block
from ..quant import INT8_BLOCKS
from .layers import _FusedLayer, _paths, fuse_layers as fuse_layer_modules
from .linear import SparseLinear, _check_weight


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """What sparsify did with one nn.Linear."""

    name: str
    shape: tuple                # (out_features, in_features)
    block: tuple                # None when the weight has no block pattern (dense)
    sparsity: float             # block sparsity of the weight (after pruning)
    kernel: str                 # "dense", or the kernel per tuned token count, or "default heuristic"
    note: str = ""              # why a layer stayed dense


class SparsifySummary(list):
    """The LayerSummary of every nn.Linear sparsify looked at; str() is a table. `fused_layers`:
    the transformer layers that run whole on our kernels; `unfused_layers`: {name: why not}."""

    def __init__(self, rows=()):
        super().__init__(rows)
        self.fused_layers, self.unfused_layers = [], {}

    @property
    def replaced(self):
        return [row for row in self if row.kernel != "dense"]

    def __str__(self):
        head = ("layer", "shape", "block", "sparsity", "kernel")
        body = [(r.name, "%dx%d" % r.shape, "-" if r.block is None else "%dx%d" % r.block, f"{r.sparsity:.1%}",
                 r.kernel + (f" ({r.note})" if r.note else "")) for r in self]
        widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in [head] + body]
        lines.append(f"{len(self.replaced)} of {len(self)} linear layers on sparsebench's kernels")
        if self.fused_layers or self.unfused_layers:
            lines.append(f"{len(self.fused_layers)} of {len(self.fused_layers) + len(self.unfused_layers)} "
                         "transformer layers run whole on sparsebench's kernels")
        lines += [f"  {name} not fused: {why}" for name, why in self.unfused_layers.items()]
        return "\n".join(lines)


def sparsify(model, sparsity=None, block=None, dtype="float32", tuned=None, min_sparsity=0.5,
             include=None, exclude=None, threads=None, fuse_gelu=True, fuse_layers=True):
    """Replace, in place, the nn.Linear layers of `model` by SparseLinear; return a SparsifySummary.

    With sparsity=None a layer is replaced when its weight is at least `min_sparsity` block
    sparse (its block pattern detected, or in `block` blocks); with a sparsity every layer is
    pruned to it (in `block` blocks, default 4x1). `include` / `exclude` are shell-style patterns
    (fnmatch, e.g. "encoder.layer.*.intermediate.*"), one or a list, on the names of
    model.named_modules(). With `tuned` (path or table), a layer whose tuned verdict is "dense" at
    every token count tuned for its shape stays an nn.Linear (with the pruned weight when
    pruning); other layers still ask the table per N at call time. `threads` as for SparseLinear.
    Nothing is changed if a layer
    cannot be converted; a layer whose weight is tied to another parameter (a language-model
    decoder to the word embeddings) stays as it is; a model with nothing sparse enough is left
    alone with a warning. `fuse_gelu`: where transformers' feed-forward block applies an exact
    GELU right after a replaced layer (FUSABLE_GELU), the kernel applies it in its epilogue and
    the activation module becomes nn.Identity. `fuse_layers`: every transformer layer of BERT,
    RoBERTa (MiniLM) or DistilBERT whose linear layers were all replaced runs whole on our
    kernels, as sparsebench's BertEncoder does (see sparsebench.torch.layers; transformers' own
    forward still runs for calls the fused layer does not cover); their encoder then runs the
    whole stack in passes of at most `encoder.tokens_per_pass` tokens (default 128; None: the
    whole batch at once).
    """
    if isinstance(model, torch.nn.Linear):
        raise TypeError("sparsify replaces the linear layers inside a model; for one nn.Linear use "
                        "SparseLinear.from_linear(linear, ...)")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"sparsify takes a torch.nn.Module, got {type(model).__name__}")
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be in [0, 1], got {min_sparsity!r}")
    table = tuned_table(tuned)
    include, exclude = _patterns(include, "include"), _patterns(exclude, "exclude")
    names = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(parameter, []).append(name)
    planned, summary = [], SparsifySummary()
    for name, linear in model.named_modules():
        if not isinstance(linear, torch.nn.Linear) or (include and not _matches(name, include)) \
                or _matches(name, exclude):
            continue
        shape = tuple(linear.weight.shape)
        tied = [other for other in names[linear.weight] if other != f"{name}.weight"]
        if tied:
            summary.append(LayerSummary(name, shape, None, 0.0, "dense", f"weight tied to {tied[0]}"))
            continue
        if sparsity is None:
            _check_weight(linear.weight, f"{name}.weight")
            found, measured = _weight_blocks(linear.weight.detach().numpy(), block, dtype)
            if found is None or measured < min_sparsity:
                summary.append(LayerSummary(name, shape, found, measured, "dense",
                                            f"{measured:.1%} block sparse < min_sparsity {min_sparsity:g}"))
                continue
        layer = SparseLinear.from_linear(linear, sparsity, block, dtype, table, threads)
        kernel = _kernels_text(_tuned_plans(layer))
        row = LayerSummary(name, shape, layer.block, layer.sparsity, kernel or "default heuristic")
        if kernel == "dense":
            row = dataclasses.replace(row, note="tuned: dense is faster")
        planned.append((name, linear, layer, kernel == "dense"))
        summary.append(row)
    for name, linear, layer, stays_dense in planned:
        if not stays_dense:
            model.set_submodule(name, layer)
        elif sparsity is not None:     # a new parameter, so that weights tied to the old one stay
            linear.weight = torch.nn.Parameter(layer.weight, requires_grad=linear.weight.requires_grad)
    if fuse_gelu:
        fused = _fuse_gelu(model)
        summary[:] = [dataclasses.replace(row, note=(row.note + "; " if row.note else "") + "GELU fused")
                      if row.name in fused else row for row in summary]
    if fuse_layers:
        summary.unfused_layers = fuse_layer_modules(model)
        summary.fused_layers = [name for name, module in model.named_modules() if isinstance(module, _FusedLayer)]
        # a fused layer's linear layers run feature-major, as our encoder computes, and its Q,
        # K and V in one call where they can (EncoderLayer.fused_qkv: query's config). Their
        # plans first: building a fused layer frees its query's unscaled matrix, which a plan
        # would build again
        inside = tuple(f"{name}." for name in summary.fused_layers)
        layers = {name: layer for name, _, layer, stays_dense in planned if not stays_dense}
        rows = [i for i, row in enumerate(summary) if row.name in layers and row.name.startswith(inside)]
        plans = {i: _tuned_plans(layers[summary[i].name], "features") for i in rows}
        modules = dict(model.named_modules())
        qkv = {}                                   # name of a fused layer's Q, K or V: its EncoderLayer
        for name in summary.fused_layers:
            built, paths = modules[name]._sb_layer(), _paths(modules[name])
            if built is not None:
                qkv.update(dict.fromkeys((f"{name}.{paths[n]}" for n in ("query", "key", "value")), built[0]))
        for i in rows:
            row, encoder = summary[i], qkv.get(summary[i].name)
            fused = {n: f[2] for n in plans[i] if encoder is not None and (f := encoder.fused_qkv(n)) is not None}
            plans[i].update(fused)
            note = "; ".join(filter(None, [row.note, "Q, K and V in one call" if fused else ""]))
            summary[i] = dataclasses.replace(row, kernel=_kernels_text(plans[i]) or "default heuristic", note=note)
    if summary.replaced:
        _warn_if_torch_spins()
    if not summary.replaced:
        warnings.warn(f"sparsify: no linear layer of {type(model).__name__} is sparse enough "
                      f"(min_sparsity {min_sparsity:g}); the model is unchanged. Pass sparsity=0.9 to prune it.",
                      stacklevel=2)
    return summary


_warned_spin = []


def _warn_if_torch_spins():
    """Once per process: PyTorch loaded before sparsebench.torch with libgomp's default spinning."""
    from . import TORCH_SPIN

    if LOADED_FIRST in TORCH_SPIN and not _warned_spin:
        _warned_spin.append(True)
        warnings.warn("PyTorch was imported before sparsebench.torch, so its idle OpenMP threads spin for a few "
                      "ms after every torch op, on the cores sparsebench's kernels need (a script doing so ran "
                      "BERT-Base after sparsify 1.5x slower, BERT-Mini 1.3x: python -m sparsebench.bench.plain "
                      "--torch). Import sparsebench.torch before torch, or set GOMP_SPINCOUNT=1000 in the "
                      "environment.", stacklevel=3)


#: (module class, linear attribute, activation attribute) of the transformers blocks whose forward
#: is activation(linear(x)) and nothing else reads the linear's output: BERT's, RoBERTa's (and
#: MiniLM's) intermediate layer, DistilBERT's feed-forward block
FUSABLE_GELU = (("BertIntermediate", "dense", "intermediate_act_fn"),
                ("RobertaIntermediate", "dense", "intermediate_act_fn"),
                ("FFN", "lin1", "activation"))


def _exact_gelu(module):
    """Whether `module` is the exact (erf) GELU: nn.GELU() or transformers' GELUActivation."""
    if isinstance(module, torch.nn.GELU):
        return module.approximate == "none"
    act = getattr(module, "act", None)
    return type(module).__name__ == "GELUActivation" and (
        act is torch.nn.functional.gelu or getattr(act, "__name__", "") == "_gelu_python")


def _fuse_gelu(model):
    """Move the GELU of every FUSABLE_GELU block whose linear is a SparseLinear into its kernel;
    the names of those linear layers."""
    fused = set()
    for name, parent in model.named_modules():
        for cls, linear_name, act_name in FUSABLE_GELU:
            if type(parent).__name__ != cls or not type(parent).__module__.startswith("transformers."):
                continue
            linear, act = getattr(parent, linear_name, None), getattr(parent, act_name, None)
            if isinstance(linear, SparseLinear) and linear.activation is None and _exact_gelu(act):
                linear.activation = "gelu"
                linear._kernel_layer()                 # rebuilt now, not at the first call
                setattr(parent, act_name, torch.nn.Identity())
                fused.add(f"{name}.{linear_name}" if name else linear_name)
    return fused


def _patterns(patterns, what):
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"{what} takes fnmatch patterns (a string or a list of strings), got {patterns!r}")
    return tuple(patterns)


def _matches(name, patterns):
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _weight_blocks(weight, block, dtype):
    """(block, block sparsity) of a weight: `block` as given, else the pattern detect_block finds."""
    if block is None:
        found, measured = detect_block(weight, INT8_BLOCKS if dtype == "int8" else SUPPORTED_BLOCKS)
        return found, float(measured)
    block = check_block(block)
    return block, float(detect_block(weight, (block,), tolerance=math.inf)[1])    # any block fits: its sparsity


def _tuned_plans(layer, layout="tokens"):
    """{N: KernelPlan} for every token count tuned for exactly this layer's shape, block and
    dtype (X in `layout`: token-major as SparseLinear runs, feature-major inside a fused layer);
    {} without a tuned table."""
    if layer.tuned is None:
        return {}
    M, K = layer.out_features, layer.in_features
    tokens = sorted({e["N"] for e in getattr(layer.tuned, "entries", ())
                     if (e["M"], e["K"], tuple(e["block"]), e["dtype"]) == (M, K, layer.block, layer.dtype)})
    kernel_layer = layer._kernel_layer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # the nearest-shape fallbacks are not listed
        return {n: kernel_layer.plan(n, layout) for n in tokens}


def _kernels_text(plans):
    """"N=128: config, N=384: dense" for the plans tuned for exactly their N, "dense" if all of
    them say dense, None if there are none."""
    exact = {n: p.kernel for n, p in plans.items() if p.source.startswith("tuned") and p.source != "tuned (nearest)"}
    if not exact:
        return None
    if set(exact.values()) == {"dense"}:
        return "dense"
    return ", ".join(f"N={n}: {kernel}" for n, kernel in exact.items())
