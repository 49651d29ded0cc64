"""sparsebench's block-sparse kernels inside PyTorch models (inference on CPU, float32 tensors).

``SparseLinear`` is an ``nn.Linear`` whose product runs ``sparsebench.spmm``; ``sparsify(model)``
swaps it in for every linear layer that is sparse enough (or prunes them). The product is the
custom op ``torch.ops.sparsebench.spmm_linear`` with a fake implementation, so
``torch.compile(model, fullgraph=True)`` traces through it.

Layout: PyTorch activations are token-major (N x K); the kernels compute features x tokens.
spmm's token-major entry (layout="tokens") transposes X and Y on the kernels' pool, 8x8 tiles
through registers, into per-thread buffers: no copies in PyTorch.
"""
import dataclasses
import fnmatch
import itertools
import math
import warnings
import weakref

try:
    import torch
except ImportError as e:
    raise ImportError(f'sparsebench.torch needs PyTorch ({e}): pip install "sparsebench[torch]" '
                      "(torch==2.13.0, the CPU build)") from e

from .blocks import SUPPORTED_BLOCKS, check_block
from .cpu import default_threads
from .dtypes import check_dtype
from .models.bert import DEFAULT_BLOCK, tuned_table
from .models.linear import SparseLinear as KernelLinear, detect_block
from .prune import prune
from .quant import INT8_BLOCKS

__all__ = ["LayerSummary", "SparseLinear", "SparsifySummary", "sparsify"]

#: handle -> SparseLinear; the custom op reaches its layer through this (ops take no objects)
_LAYERS = weakref.WeakValueDictionary()
_NEXT_HANDLE = itertools.count(1)


@torch.library.custom_op("sparsebench::spmm_linear", mutates_args=())
def spmm_linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    """x @ W.T + b for the SparseLinear registered under `handle`; x is (..., in_features)."""
    layer = _LAYERS.get(handle)
    if layer is None:
        raise RuntimeError(f"sparsebench::spmm_linear: no live SparseLinear has handle {handle}")
    return layer._compute(x)


@torch.library.register_fake("sparsebench::spmm_linear")
def _spmm_linear_fake(x, handle, out_features):
    return x.new_empty((*x.shape[:-1], out_features))


def _version(tensor):
    """The in-place modification counter of `tensor` (-1 for None and for inference tensors,
    which have none)."""
    try:
        return -1 if tensor is None else tensor._version
    except RuntimeError:
        return -1


class SparseLinear(torch.nn.Module):
    """``nn.Linear`` for inference on sparsebench's kernels: (..., in_features) float32 CPU
    tensors in, (..., out_features) out, 1-D input included.

    `weight` (out x in, already pruned) and `bias` are kept dense as frozen parameters named as
    nn.Linear's, so state_dicts load either way; the kernel matrix (a BSRMatrix, or a
    QuantizedBSRMatrix with dtype "int8") is rebuilt on the next call whenever they change
    (load_state_dict, assignment, unpickling). `tuned` (a tuned-config file path or the table
    load_tuned returns) picks the kernel per token count N = prod(x.shape[:-1]), once per N;
    where it says "dense", torch.nn.functional.linear runs on the dense weight. Without it the
    default heuristic picks. `threads`: the kernels' threads (default: sparsebench's default
    thread count). `activation` "gelu" applies the exact (erf) GELU in the kernel's epilogue, as
    sparsify does for the layer an nn.GELU follows. X and Y stay token-major (see the module
    docstring).
    """

    def __init__(self, weight, bias=None, *, block=DEFAULT_BLOCK, dtype="float32", tuned=None, threads=None,
                 activation=None):
        super().__init__()
        _check_weight(weight, "weight")
        self.out_features, self.in_features = weight.shape
        self.weight = torch.nn.Parameter(weight.detach(), requires_grad=False)
        if bias is None:
            self.register_parameter("bias", None)
        else:
            _check_weight(bias, "bias", ndim=1)
            if bias.shape != (self.out_features,):
                raise ValueError(f"bias has shape {tuple(bias.shape)}, needs ({self.out_features},)")
            self.bias = torch.nn.Parameter(bias.detach(), requires_grad=False)
        self.block = check_block(block)
        self.dtype = check_dtype(dtype)
        self.tuned = tuned_table(tuned)
        self.threads = threads or default_threads()
        if activation not in (None, "gelu"):
            raise ValueError(f"activation must be None or 'gelu', got {activation!r}")
        self.activation = activation
        self._register()
        self._kernel_layer()                 # refuse an unusable block or dtype now, not at the first call

    @classmethod
    def from_linear(cls, linear, sparsity=None, block=None, dtype="float32", tuned=None, threads=None):
        """A SparseLinear with `linear`'s weights: pruned to `sparsity` in `block` blocks (default
        4x1), or kept as they are with sparsity=None (then their block pattern is detected unless
        `block` is given). Unpruned weights are shared with `linear`, pruned ones are a copy."""
        if not isinstance(linear, torch.nn.Linear):
            raise TypeError(f"from_linear takes a torch.nn.Linear, got {type(linear).__name__}")
        _check_weight(linear.weight, "the linear layer's weight")
        weight = linear.weight.detach()
        if sparsity is not None:
            block = check_block(block or DEFAULT_BLOCK)
            weight = torch.from_numpy(prune(weight.numpy(), sparsity, block))
        elif block is None:
            candidates = INT8_BLOCKS if dtype == "int8" else SUPPORTED_BLOCKS
            block = detect_block(weight.numpy(), candidates)[0] or DEFAULT_BLOCK
        return cls(weight, linear.bias, block=block, dtype=dtype, tuned=tuned, threads=threads).train(linear.training)

    # -- the kernel matrix, keyed to the current weights -------------------------------------------
    def _register(self):
        self._handle = next(_NEXT_HANDLE)
        _LAYERS[self._handle] = self
        self._kernel, self._built_from = None, None

    def _kernel_layer(self):
        """The numpy SparseLinear (sparsebench.models) on the current weights, rebuilt if they changed."""
        now = (self.weight, self.bias, _version(self.weight), _version(self.bias), self.activation)
        built = self._built_from
        if built is None or built[0] is not now[0] or built[1] is not now[1] or built[2:] != now[2:]:
            self._kernel = None                       # free the old matrix first
            bias = None if self.bias is None else self.bias.detach().numpy()
            self._kernel = KernelLinear(self.weight.detach().numpy(), bias, block=self.block, dtype=self.dtype,
                                        tuned=self.tuned, threads=self.threads, name="SparseLinear",
                                        activation=self.activation)
            self._built_from = now
        return self._kernel

    @property
    def sparsity(self):
        """Fraction of the weight's block grid that is zero."""
        return self._kernel_layer().sparsity

    def kernel(self, tokens):
        """What a call on `tokens` rows runs: "dense" or the kernel config string."""
        return self._kernel_layer().plan(tokens).kernel

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x):
        _check_input(x, self.in_features)
        if self.training or (torch.is_grad_enabled() and x.requires_grad):
            raise RuntimeError("SparseLinear is inference only (the kernels have no backward): call "
                               "model.eval() and run under torch.inference_mode() or torch.no_grad()")
        if torch.compiler.is_compiling():      # the custom op, so the graph does not break
            return torch.ops.sparsebench.spmm_linear(x, self._handle, self.out_features)
        return self._compute(x)                # eager: the op's dispatch cost ~30 us a call here

    def _compute(self, x):
        """The eager body of the custom op."""
        layer = self._kernel_layer()
        rows = x.detach().reshape(-1, self.in_features)
        n = rows.shape[0]
        if n == 0 or layer.plan(n).method == "dense":
            y = torch.nn.functional.linear(x.detach(), self.weight, self.bias)
            return y if self.activation is None else torch.nn.functional.gelu(y)
        y = torch.empty((n, self.out_features), dtype=torch.float32)
        layer.matmul(rows.contiguous().numpy(), out=y.numpy(), layout="tokens")
        return y.view(*x.shape[:-1], self.out_features)

    # -- device, dtype, pickling ----------------------------------------------------------------
    def _apply(self, fn, recurse=True):
        probe = fn(torch.zeros(1))
        if probe.device.type != "cpu" or probe.dtype != torch.float32:
            raise ValueError(f"SparseLinear runs float32 on the CPU only (sparsebench's kernels); it cannot "
                             f"move to {probe.dtype} on {probe.device}: keep the model on the CPU in float32 "
                             "(dtype='int8' quantizes inside the kernels)")
        return super()._apply(fn, recurse)

    def __getstate__(self):
        state = super().__getstate__().copy()
        for name in ("_handle", "_kernel", "_built_from"):
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("activation", None)      # pickled before activations existed
        self._register()

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"block={self.block[0]}x{self.block[1]}, sparsity={self.sparsity:.3f}, dtype={self.dtype}"
                + (f", activation={self.activation}" if self.activation else ""))


def _check_weight(tensor, name, ndim=2):
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.device.type != "cpu" or tensor.dtype != torch.float32:
        raise ValueError(f"{name} is {tensor.dtype} on {tensor.device}; sparsebench's kernels take float32 "
                         "CPU weights: convert the model with model.float().cpu() first")
    if tensor.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(tensor.shape)}")


def _check_input(x, in_features):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"SparseLinear takes a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"SparseLinear runs on the CPU only (sparsebench's kernels), got a tensor on "
                         f"{x.device}: move it with x.cpu()")
    if x.dtype != torch.float32:
        raise TypeError(f"SparseLinear takes float32 input, got {x.dtype}: convert with x.float() "
                        "(dtype='int8' layers quantize float32 input inside the kernels)")
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise ValueError(f"SparseLinear expects input of shape (..., {in_features}), got {tuple(x.shape)}")


# -- sparsify ---------------------------------------------------------------------------------------

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
    """The LayerSummary of every nn.Linear sparsify looked at; str() is a table."""

    @property
    def replaced(self):
        return [row for row in self if row.kernel != "dense"]

    def __str__(self):
        head = ("layer", "shape", "block", "sparsity", "kernel")
        body = [(r.name, "%dx%d" % r.shape, "-" if r.block is None else "%dx%d" % r.block, f"{r.sparsity:.1%}",
                 r.kernel + (f" ({r.note})" if r.note else "")) for r in self]
        widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in [head] + body]
        return "\n".join(lines + [f"{len(self.replaced)} of {len(self)} linear layers on sparsebench's kernels"])


def sparsify(model, sparsity=None, block=None, dtype="float32", tuned=None, min_sparsity=0.5,
             include=None, exclude=None, threads=None, fuse_gelu=True):
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
    the activation module becomes nn.Identity.
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
        kernel = _tuned_kernels(layer)
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
    if not summary.replaced:
        warnings.warn(f"sparsify: no linear layer of {type(model).__name__} is sparse enough "
                      f"(min_sparsity {min_sparsity:g}); the model is unchanged. Pass sparsity=0.9 to prune it.",
                      stacklevel=2)
    return summary


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


def _tuned_kernels(layer):
    """"N=128: config, N=384: dense" for every token count tuned for exactly this layer, "dense"
    if all of them say dense, None without a tuned table (or with nothing tuned for it)."""
    if layer.tuned is None:
        return None
    M, K = layer.out_features, layer.in_features
    tokens = sorted({e["N"] for e in getattr(layer.tuned, "entries", ())
                     if (e["M"], e["K"], tuple(e["block"]), e["dtype"]) == (M, K, layer.block, layer.dtype)})
    kernel_layer = layer._kernel_layer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")           # the nearest-shape fallbacks are not listed
        plans = {n: kernel_layer.plan(n) for n in tokens}
    exact = {n: p.kernel for n, p in plans.items() if p.source == "tuned"}
    if not exact:
        return None
    if set(exact.values()) == {"dense"}:
        return "dense"
    return ", ".join(f"N={n}: {kernel}" for n, kernel in exact.items())
