"""SparseLinear: an nn.Linear for inference on sparsebench's kernels, and its custom op.

Layout: PyTorch activations are token-major (N x K); the kernels compute features x tokens.
spmm's token-major entry (layout="tokens") transposes X on the kernels' pool (whole, or a panel
of tokens a task, as the config says) and stores the register tiles into Y transposed (16x1
blocks: a direct kernel reads X as it is; int8: X quantized and packed from token-major): no
copies in PyTorch. The product is the custom op
``torch.ops.sparsebench.spmm_linear`` with a fake implementation, so
``torch.compile(model, fullgraph=True)`` traces through it.
"""
import itertools
import weakref

import torch

from ..blocks import SUPPORTED_BLOCKS, check_block
from ..cpu import default_threads
from ..dtypes import check_dtype
from ..models.bert import DEFAULT_BLOCK, tuned_table
from ..models.linear import SparseLinear as KernelLinear, detect_block
from ..prune import prune
from ..quant import INT8_BLOCKS

#: handle -> module (SparseLinear, fused layer): custom ops reach their module through this (ops take no objects)
_MODULES = weakref.WeakValueDictionary()
_NEXT_HANDLE = itertools.count(1)


def register_handle(module):
    """A new handle for `module` (held weakly), for the custom ops."""
    handle = next(_NEXT_HANDLE)
    _MODULES[handle] = module
    return handle


def state_without(state, names):
    """A module's pickled state without `names` (handles and caches, made again on unpickling)."""
    return {k: v for k, v in state.items() if k not in names}


def registered(handle, op):
    """The live module registered under `handle`, for custom op `op`."""
    module = _MODULES.get(handle)
    if module is None:
        raise RuntimeError(f"sparsebench::{op}: no live sparsebench module has handle {handle}")
    return module


@torch.library.custom_op("sparsebench::spmm_linear", mutates_args=())
def spmm_linear(x: torch.Tensor, handle: int, out_features: int) -> torch.Tensor:
    """x @ W.T + b for the SparseLinear registered under `handle`; x is (..., in_features)."""
    return registered(handle, "spmm_linear")._compute(x)


@torch.library.register_fake("sparsebench::spmm_linear")
def _spmm_linear_fake(x, handle, out_features):
    return x.new_empty((*x.shape[:-1], out_features))


def _version(tensor):
    """The in-place modification counter of `tensor` (-1 for None and for inference tensors,
    which have none)."""
    try:
        return -1 if tensor is None else tensor._version
    except (RuntimeError, AttributeError):
        return -1


def sources(module, name):
    """The tensors `module`'s parameter `name` is computed from, for a cache key of what it holds
    (each tensor's identity and _version): the parameter itself; with torch.nn.utils.prune, the
    original and the mask it keeps (the attribute is a new tensor every forward); with a
    parametrization, its original. () without one (a bias of None)."""
    params = module._parameters              # not nn.Module's __getattr__: this runs every call
    if name in params:
        return (params[name],) if params[name] is not None else ()
    if name + "_orig" in params:
        return params[name + "_orig"], module._buffers.get(name + "_mask")
    parametrized = module._modules.get("parametrizations")
    if parametrized is not None and name in parametrized:
        return (parametrized[name].original,)
    value = getattr(module, name, None)
    return (value,) if isinstance(value, torch.Tensor) else ()


def current(module, name):
    """`module`'s parameter `name` as it is now: with torch.nn.utils.prune, the original times
    the mask (prune recomputes the attribute only in the module's own forward, which a fused
    layer does not call), else the attribute."""
    params = module._parameters
    if name not in params and name + "_orig" in params:
        return params[name + "_orig"] * module._buffers[name + "_mask"]
    return getattr(module, name, None)


class SparseLinear(torch.nn.Module):
    """``nn.Linear`` for inference on sparsebench's kernels: (..., in_features) float32 CPU
    tensors in, (..., out_features) out, 1-D input included.

    `weight` (out x in, already pruned) and `bias` are kept dense as frozen parameters named as
    nn.Linear's, so state_dicts load either way; the kernel matrix (a BSRMatrix, or a
    QuantizedBSRMatrix with dtype "int8") is rebuilt on the next call whenever they change
    (load_state_dict, assignment, unpickling, in-place ops PyTorch counts in `_version`);
    after changes it does not count (writes through `.data` or `.numpy()`, in-place ops on
    inference tensors) call refresh(). `tuned` (a tuned-config file path or the table
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
        self._handle = register_handle(self)
        self._kernels = {}                  # scale -> (what it was built from, kernel layer)

    def refresh(self):
        """Rebuild the kernel matrix from the weight and bias at the next call: after changes to
        them that PyTorch's version counter does not see (sparsebench.torch.refresh does it for
        a whole model, fused layers included)."""
        self._kernels = {}
        self._generation = getattr(self, "_generation", 0) + 1      # fused layers' caches follow it

    def _kernel_layer(self, scale=1.0):
        """The numpy SparseLinear (sparsebench.models) on the current weights, rebuilt if they
        changed; `scale` multiplies its output (a fused attention layer's query, see .layers)."""
        tensors = sources(self, "weight") + sources(self, "bias")
        now = (tuple(map(id, tensors)), tuple(map(_version, tensors)), self.activation, tensors)
        built, kernel = self._kernels.get(scale, (None, None))
        if built is None or built[:3] != now[:3]:     # (the tensors stay referenced: ids not reused)
            self._kernels.pop(scale, None)            # free the old matrix first
            weight, bias = current(self, "weight"), current(self, "bias")
            bias = None if bias is None else bias.detach().numpy()
            kernel = KernelLinear(weight.detach().numpy(), bias, block=self.block, dtype=self.dtype,
                                  tuned=self.tuned, threads=self.threads, name="SparseLinear",
                                  activation=self.activation, scale=scale)
            self._kernels[scale] = (now, kernel)
        return kernel

    @property
    def sparsity(self):
        """Fraction of the weight's block grid that is zero."""
        return self._kernel_layer().sparsity

    def kernel(self, tokens):
        """What a call on `tokens` rows runs: "dense" or the kernel config string."""
        return self._kernel_layer().plan(tokens, "tokens").kernel

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
        if n == 0 or layer.plan(n, "tokens").method == "dense":
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
        return state_without(super().__getstate__(), ("_handle", "_kernels"))

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
