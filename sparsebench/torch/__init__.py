"""sparsebench's block-sparse kernels inside PyTorch models (inference on CPU, float32 tensors).

``SparseLinear`` (.linear) is an ``nn.Linear`` whose product runs ``sparsebench.spmm``;
``sparsify(model)`` (.sparsify) swaps it in for every linear layer that is sparse enough (or
prunes them) and, in transformers' BERT, RoBERTa and DistilBERT models, runs each whole
transformer layer as sparsebench's own encoder does (.layers).
"""
from ..idle_spin import tame_torch_idle_spin

#: GOMP_SPINCOUNT set before torch loads (imported before torch), or why not (see sparsify)
TORCH_SPIN = tame_torch_idle_spin()

try:
    import torch  # noqa: F401
except ImportError as e:
    raise ImportError(f'sparsebench.torch needs PyTorch ({e}): pip install "sparsebench[torch]" '
                      "(torch==2.13.0, the CPU build)") from e

from .layers import refresh
from .linear import SparseLinear
from .sparsify import LayerSummary, SparsifySummary, sparsify

__all__ = ["LayerSummary", "SparseLinear", "SparsifySummary", "refresh", "sparsify"]
