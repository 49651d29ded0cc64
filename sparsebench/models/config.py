"""BERT architecture hyperparameters: the named model sizes and Hugging Face config.json files
(BERT, and DistilBERT and RoBERTa, the same encoder with other names and embeddings)."""
import dataclasses
import json
import os

from ..errors import SparsebenchError


class ModelError(SparsebenchError, ValueError):
    """A model name, checkpoint or input the BERT encoder cannot use (the message says why)."""


#: the Hugging Face model types the encoder runs
MODEL_TYPES = ("bert", "distilbert", "roberta")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shape of a BERT encoder (Hugging Face names in comments). `model_type` "distilbert" has no
    token types (type_vocab_size 0); "roberta" numbers positions from pad_token_id + 1."""

    name: str
    layers: int                     # num_hidden_layers
    hidden: int                     # hidden_size
    heads: int                      # num_attention_heads
    intermediate: int               # intermediate_size
    vocab_size: int = 30522
    max_positions: int = 512        # max_position_embeddings
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    model_type: str = "bert"        # bert, distilbert or roberta
    pad_token_id: int = 0           # RoBERTa: padding keeps this position, tokens count from it + 1

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ModelError(f"{self.name}: model_type {self.model_type!r} is not supported, only "
                             + ", ".join(MODEL_TYPES))
        for field in ("layers", "hidden", "heads", "intermediate", "vocab_size", "max_positions",
                      "type_vocab_size"):
            value = getattr(self, field)
            least = 0 if field == "type_vocab_size" and self.model_type == "distilbert" else 1
            if not isinstance(value, int) or value < least:
                raise ModelError(f"{self.name}: {field} must be an integer >= {least}, got {value!r}")
        if self.hidden % self.heads:
            raise ModelError(f"{self.name}: hidden size {self.hidden} is not a multiple of the "
                             f"{self.heads} attention heads")

    @property
    def head_dim(self):
        return self.hidden // self.heads

    @property
    def position_offset(self):
        """Position id of the first token: 0, or pad_token_id + 1 for RoBERTa."""
        return self.pad_token_id + 1 if self.model_type == "roberta" else 0

    @property
    def max_sequence(self):
        return self.max_positions - self.position_offset

    @classmethod
    def from_hf(cls, d, name="checkpoint"):
        """From the dict of a Hugging Face BERT, DistilBERT or RoBERTa config.json; refuses what
        this encoder does not run."""
        model_type = d.get("model_type", "bert")
        if model_type == "distilbert":
            return cls._from_distilbert(d, name)
        if model_type not in MODEL_TYPES:
            raise ModelError(f"{name}: model_type {model_type!r} is not supported, only " + ", ".join(MODEL_TYPES))
        act = d.get("hidden_act", "gelu")
        if act != "gelu":
            raise ModelError(f"{name}: hidden_act {act!r} is not supported, only 'gelu' (exact erf GELU)")
        pos = d.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ModelError(f"{name}: position_embedding_type {pos!r} is not supported, only 'absolute'")
        if d.get("is_decoder") or d.get("add_cross_attention"):
            raise ModelError(f"{name}: decoder / cross-attention BERT models are not supported")
        try:
            return cls(name=name, layers=d["num_hidden_layers"], hidden=d["hidden_size"],
                       heads=d["num_attention_heads"], intermediate=d["intermediate_size"],
                       vocab_size=d.get("vocab_size", 30522),
                       max_positions=d.get("max_position_embeddings", 512),
                       type_vocab_size=d.get("type_vocab_size", 2),
                       layer_norm_eps=float(d.get("layer_norm_eps", 1e-12)), model_type=model_type,
                       pad_token_id=d.get("pad_token_id") or 0)
        except KeyError as e:
            raise ModelError(f"{name}: config.json lacks {e.args[0]!r}") from None

    @classmethod
    def _from_distilbert(cls, d, name):
        act = d.get("activation", "gelu")
        if act != "gelu":
            raise ModelError(f"{name}: activation {act!r} is not supported, only 'gelu' (exact erf GELU)")
        try:
            return cls(name=name, layers=d["n_layers"], hidden=d["dim"], heads=d["n_heads"],
                       intermediate=d["hidden_dim"], vocab_size=d.get("vocab_size", 30522),
                       max_positions=d.get("max_position_embeddings", 512), type_vocab_size=0,
                       model_type="distilbert", pad_token_id=d.get("pad_token_id") or 0)
        except KeyError as e:
            raise ModelError(f"{name}: config.json lacks {e.args[0]!r}") from None

    @classmethod
    def from_json_file(cls, path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no config.json at {path}")
        with open(path) as f:
            try:
                d = json.load(f)
            except json.JSONDecodeError as e:
                raise ModelError(f"{path} is not valid JSON: {e}") from None
        # the name the checkpoint was saved under, else its directory's name
        name = os.path.basename(str(d.get("_name_or_path") or "").rstrip("/")) or \
            os.path.basename(os.path.dirname(os.path.abspath(path)))
        return cls.from_hf(d, name=name)

    def to_hf(self):
        """The Hugging Face config.json fields (for building the transformers model of model_type)."""
        if self.model_type == "distilbert":
            return {"model_type": "distilbert", "n_layers": self.layers, "dim": self.hidden, "n_heads": self.heads,
                    "hidden_dim": self.intermediate, "vocab_size": self.vocab_size,
                    "max_position_embeddings": self.max_positions, "activation": "gelu",
                    "pad_token_id": self.pad_token_id, "dropout": 0.0, "attention_dropout": 0.0}
        return {"model_type": self.model_type, "num_hidden_layers": self.layers, "hidden_size": self.hidden,
                "num_attention_heads": self.heads, "intermediate_size": self.intermediate,
                "vocab_size": self.vocab_size, "max_position_embeddings": self.max_positions,
                "type_vocab_size": self.type_vocab_size, "layer_norm_eps": self.layer_norm_eps,
                "hidden_act": "gelu", "position_embedding_type": "absolute", "pad_token_id": self.pad_token_id,
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


#: the named model sizes (DistilBERT's shape, run as a BERT encoder)
MODELS = {c.name: c for c in (
    BertConfig("bert-mini", layers=4, hidden=256, heads=4, intermediate=1024),
    BertConfig("distilbert", layers=6, hidden=768, heads=12, intermediate=3072),
    BertConfig("bert-base", layers=12, hidden=768, heads=12, intermediate=3072),
    BertConfig("bert-large", layers=24, hidden=1024, heads=16, intermediate=4096),
    BertConfig("minilm-l6", layers=6, hidden=384, heads=12, intermediate=1536),
)}


def model_config(name):
    """The BertConfig of a named model size."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ModelError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None
