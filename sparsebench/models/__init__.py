"""BERT-family encoders whose linear layers run on sparsebench's block-sparse kernels."""
from .bert import CATEGORIES, BertEncoder, parameter_shapes
from .config import MODELS, BertConfig, ModelError, model_config
from .linear import KernelPlan, SparseLinear, detect_block, gelu_

__all__ = ["BertConfig", "BertEncoder", "CATEGORIES", "KernelPlan", "MODELS", "ModelError", "SparseLinear",
           "detect_block", "gelu_", "model_config", "parameter_shapes"]
