"""Text → token-id arrays with the tokenizer that travels inside an edgert ONNX file.

Uses Hugging Face `tokenizers` (Rust, no torch), imported only when text is tokenized.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgert.errors import DependencyError, InputError, ModelLoadError, first_line


class TextTokenizer:
    """Tokenize a batch of strings into the named int arrays a model expects.

    `input_roles` maps model input names to roles: input_ids, attention_mask, token_type_ids.
    Batches are padded to their longest member and truncated to `max_length`.
    """

    def __init__(self, tokenizer_json: str, *, max_length: int, input_roles: dict[str, str]):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise DependencyError(
                "tokenizing text needs the `tokenizers` package: pip install 'edgert[text]'"
            ) from None
        try:
            self._tokenizer = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # tokenizers raises its own Exception type for bad JSON
            raise ModelLoadError(f"the model's tokenizer cannot be read: {first_line(exc)}") from None
        self._tokenizer.enable_truncation(max_length=max_length)
        padding = self._tokenizer.padding or {}
        self._tokenizer.enable_padding(pad_id=padding.get("pad_id", 0),
                                       pad_token=padding.get("pad_token", "[PAD]"))
        self.max_length = max_length
        self.input_roles = dict(input_roles)

    def __call__(self, texts: str | Sequence[str]) -> dict[str, np.ndarray]:
        """Return {input name: int64 array [batch, sequence]} for `texts` (a string or a
        non-empty list of strings); InputError for anything else."""
        texts = _text_list(texts)
        try:
            encodings = self._tokenizer.encode_batch(texts)
        except Exception as exc:  # e.g. lone surrogates the Rust side cannot encode
            raise InputError(f"cannot tokenize the text: {first_line(exc)}") from None
        by_role = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: by_role[role] for name, role in self.input_roles.items() if role in by_role}


def _text_list(texts: object) -> list[str]:
    """`texts` as a non-empty list of str, or InputError naming what is wrong."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)):
        raise InputError("text must be str, not bytes; decode it first (e.g. data.decode('utf-8'))")
    if not isinstance(texts, Sequence):
        raise InputError(f"text must be a string or a list of strings, got {type(texts).__name__}")
    if not texts:
        raise InputError("no text given: the list of texts is empty")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"text {index} is {type(text).__name__}, not str")
    return list(texts)


def generation_tokenizer(tokenizer_json: str):
    """The model's `tokenizers.Tokenizer` set to neither truncate nor pad: a generation prompt
    longer than the model's limit must be refused, not silently cut."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise DependencyError("tokenizing text needs the `tokenizers` package: pip install 'edgert[text]'") from None
    try:
        tokenizer = Tokenizer.from_str(tokenizer_json)
    except Exception as exc:  # tokenizers raises its own Exception type for bad JSON
        raise ModelLoadError(f"the model's tokenizer cannot be read: {first_line(exc)}") from None
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer
