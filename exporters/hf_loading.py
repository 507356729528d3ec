"""Loading a Hugging Face model directory (offline): its config, its tokenizer, and its
weights.

Every command that loads a Hugging Face directory (export, analyze heads, analyze kv-heads)
loads it through `load_pretrained`.
"""

from __future__ import annotations

import logging
import warnings

import torch.onnx  # noqa: F401  (torch sets its loggers' levels when this is imported; see quiet_libraries)
import transformers
from transformers import AutoConfig, AutoTokenizer

from edgert.errors import SourceError, first_line
from edgert.models.sources import ModelSource, require_kind


def load_config(source: ModelSource, kind: str):
    """The transformers config of `source` (offline), refusing families of another kind."""
    require_kind(source, (kind,))
    try:
        return AutoConfig.from_pretrained(source.directory, local_files_only=True)
    except Exception as exc:  # transformers raises many types for an unreadable config
        raise SourceError(f"cannot read config of {source.directory}: {first_line(exc)}") from None


def read_tokenizer(source: ModelSource) -> tuple[str | None, int | None]:
    """The fast tokenizer of `source` as tokenizer.json text, and its model_max_length."""
    # transformers 5 builds an empty-vocabulary tokenizer for a directory with no tokenizer
    # files at all; such a tokenizer must not travel with the model.
    if not any((source.directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        warnings.warn(f"{source.directory} has no tokenizer; the export will take token ids only",
                      stacklevel=2)
        return None, None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.directory, local_files_only=True)
    except Exception:  # any failure means the same: no tokenizer travels with the model
        warnings.warn(f"{source.directory} has no usable tokenizer; the export will take token ids only",
                      stacklevel=2)
        return None, None
    if not getattr(tokenizer, "is_fast", False):
        warnings.warn("only fast (tokenizers) tokenizers can travel with the model", stacklevel=2)
        return None, None
    model_max = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None
    return tokenizer.backend_tokenizer.to_str(), model_max


def load_pretrained(auto_class, source: ModelSource):
    """`auto_class.from_pretrained` offline with eager attention, in eval mode; SourceError on failure."""
    try:
        return auto_class.from_pretrained(source.directory, local_files_only=True,
                                          attn_implementation="eager").eval()
    except Exception as exc:  # transformers raises many types for unreadable weights
        raise SourceError(f"cannot load weights of {source.directory}: {first_line(exc)}") from None


def quiet_libraries() -> None:
    """Silence transformers' weight-loading bars and torch.onnx's registration warnings."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
