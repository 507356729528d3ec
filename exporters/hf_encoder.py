"""Load a BERT-family encoder and its tokenizer from a local Hugging Face directory."""

from __future__ import annotations

import inspect
import json
import warnings
from dataclasses import dataclass

from edgert.errors import SourceError, first_line
from edgert.models.zoo import ModelSource

# Families whose forward takes (input_ids, attention_mask[, token_type_ids]) and returns
# last_hidden_state; each is exercised by tests on a small random-init config.
ENCODER_TYPES = ("bert", "roberta", "distilbert")


@dataclass
class LoadedEncoder:
    """A torch encoder in eval mode plus what the exporter needs to know about it."""

    model: object  # transformers PreTrainedModel
    model_type: str
    input_names: list[str]
    num_layers: int
    num_heads: int
    head_dim: int
    vocab_size: int
    max_length: int
    pad_token_id: int
    tokenizer_json: str | None


def load_encoder(source: ModelSource) -> LoadedEncoder:
    """Load `source` with transformers (offline; nothing is downloaded)."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(source.directory, local_files_only=True)
    except Exception as exc:
        raise SourceError(f"cannot read config of {source.directory}: {first_line(exc)}") from None
    if config.model_type not in ENCODER_TYPES:
        raise SourceError(f"model type {config.model_type!r} is not a supported encoder "
                          f"(supported: {', '.join(ENCODER_TYPES)})")
    try:
        model = AutoModel.from_pretrained(source.directory, local_files_only=True,
                                          attn_implementation="eager").eval()
    except Exception as exc:
        raise SourceError(f"cannot load weights of {source.directory}: {first_line(exc)}") from None
    uses_token_types = "token_type_ids" in inspect.signature(model.forward).parameters
    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if uses_token_types else [])
    num_heads = config.num_attention_heads if hasattr(config, "num_attention_heads") else config.n_heads
    hidden = config.hidden_size if hasattr(config, "hidden_size") else config.dim
    num_layers = config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layers
    tokenizer_json, model_max = _tokenizer(source)
    max_length = min(_sentence_max_length(source) or model_max or config.max_position_embeddings,
                     config.max_position_embeddings)
    return LoadedEncoder(model, config.model_type, input_names, num_layers, num_heads,
                         hidden // num_heads, config.vocab_size, max_length,
                         config.pad_token_id or 0, tokenizer_json)


def _tokenizer(source: ModelSource) -> tuple[str | None, int | None]:
    """The fast tokenizer as tokenizer.json text, and its model_max_length."""
    from transformers import AutoTokenizer

    # transformers 5 builds an empty-vocabulary tokenizer for a directory with no tokenizer
    # files at all; such a tokenizer must not travel with the model.
    if not any((source.directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        warnings.warn(f"{source.directory} has no tokenizer; the export will take token ids only",
                      stacklevel=2)
        return None, None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.directory, local_files_only=True)
    except Exception:
        warnings.warn(f"{source.directory} has no usable tokenizer; the export will take token ids only",
                      stacklevel=2)
        return None, None
    if not getattr(tokenizer, "is_fast", False):
        warnings.warn("only fast (tokenizers) tokenizers can travel with the model", stacklevel=2)
        return None, None
    model_max = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None
    return tokenizer.backend_tokenizer.to_str(), model_max


def _sentence_max_length(source: ModelSource) -> int | None:
    """max_seq_length of a sentence-transformers model directory, if it is one."""
    path = source.directory / "sentence_bert_config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("max_seq_length")
