"""Loading a Hugging Face model directory (offline): its config, its tokenizer, and its
weights, refusing weights that do not fit the config.

Every command that loads a Hugging Face directory (export, analyze heads, analyze kv-heads)
loads it through `load_pretrained`, so wrong weights are refused in one place.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch.onnx  # noqa: F401  (torch sets its loggers' levels when this is imported; see quiet_libraries)
import transformers
from transformers import AutoConfig, AutoTokenizer

from edgert.errors import SourceError, first_line
from edgert.models.families import family_of
from edgert.models.sources import ModelSource, require_kind
from edgert.models.weight_fit import check_fit, natural_key

# The files transformers reads weights from; a directory with none of them has no weights.
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


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
        warnings.warn(f"{source.directory} has no tokenizer; the model takes token ids only", stacklevel=2)
        return None, None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.directory, local_files_only=True)
    except Exception:  # any failure means the same: no tokenizer travels with the model
        warnings.warn(f"{source.directory} has no usable tokenizer; the model takes token ids only", stacklevel=2)
        return None, None
    if not getattr(tokenizer, "is_fast", False):
        warnings.warn(f"{source.directory} has a slow tokenizer, which edgert cannot use (only fast "
                      "`tokenizers` ones); the model takes token ids only", stacklevel=2)
        return None, None
    model_max = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None
    return tokenizer.backend_tokenizer.to_str(), model_max


def load_pretrained(auto_class, source: ModelSource):
    """`auto_class.from_pretrained` offline with eager attention, in eval mode.

    SourceError when the directory has no weight file or transformers cannot load it;
    CheckpointError naming the first few keys when the weights do not fit config.json
    (missing, unexpected or mis-shaped: another model's weights), where transformers would
    initialise those parameters at random and carry on (check_weights_fit)."""
    directory = Path(source.directory)
    if not any(any(directory.glob(pattern)) for pattern in WEIGHT_FILES):
        raise SourceError(f"{directory} has a config.json but no weights (model.safetensors or "
                          "pytorch_model.bin); edgert exports trained weights, not a config alone")
    try:
        model, info = auto_class.from_pretrained(directory, local_files_only=True, attn_implementation="eager",
                                                 output_loading_info=True, ignore_mismatched_sizes=True)
    except Exception as exc:  # transformers raises many types for unreadable weights
        reason = first_line(exc)
        if "above report" in reason:  # transformers' weight conversion failed; its report is silenced
            reason = "transformers could not convert the checkpoint's weights to this model's layout"
        raise SourceError(f"cannot load weights of {directory}: {reason}") from None
    check_weights_fit(model, info, directory)
    return model.eval()


def check_weights_fit(model, info: dict, directory: Path) -> None:
    """CheckpointError unless the weights transformers loaded (its loading info) fit `model`.

    Missing keys count, except those of modules the export never runs (Family.unused_modules:
    BERT's pooler); tied weights and non-persistent buffers such as rotary inv_freq are not
    reported missing by transformers. Unexpected keys count when they fall under one of the
    model's own top-level modules (Qwen2's q/k/v biases under a Llama config, layers beyond
    num_hidden_layers); others belong to heads of another task (an MLM or classifier head
    beside an encoder) or are edgert's gate tensors, which the export does not load from here.
    Mis-shaped keys always count."""
    unused = family_of(model.config.model_type).unused_modules
    own_modules = {name for name, _ in model.named_children()}
    missing = sorted((k for k in info["missing_keys"] if k.split(".")[0] not in unused), key=natural_key)
    unexpected = sorted((k for k in info["unexpected_keys"] if k.split(".")[0] in own_modules), key=natural_key)
    mismatched = sorted(info["mismatched_keys"], key=lambda m: natural_key(m[0]))
    check_fit(f"the weights in {directory} do not fit its config.json ({model.config.model_type})",
              type(model).__name__, missing=missing, unexpected=unexpected, mismatched=mismatched)
    if info["error_msgs"]:
        raise SourceError(f"cannot load weights of {directory}: {str(info['error_msgs'][0]).splitlines()[0]}")


def quiet_libraries() -> None:
    """Silence transformers' weight-loading bars and torch.onnx's registration warnings."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
