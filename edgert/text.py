"""Text → token-id arrays with the tokenizer that travels inside an edgert ONNX file.

Uses Hugging Face `tokenizers` (Rust, no torch), imported only when text is tokenized.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgert.errors import DependencyError, EdgertError


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
        self._tokenizer = Tokenizer.from_str(tokenizer_json)
        self._tokenizer.enable_truncation(max_length=max_length)
        padding = self._tokenizer.padding or {}
        self._tokenizer.enable_padding(pad_id=padding.get("pad_id", 0),
                                       pad_token=padding.get("pad_token", "[PAD]"))
        self.max_length = max_length
        self.input_roles = dict(input_roles)

    def __call__(self, texts: str | Sequence[str]) -> dict[str, np.ndarray]:
        """Return {input name: int64 array [batch, sequence]} for `texts`."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts or not all(isinstance(t, str) for t in texts):
            raise EdgertError("text input must be one or more strings")
        encodings = self._tokenizer.encode_batch(list(texts))
        by_role = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: by_role[role] for name, role in self.input_roles.items() if role in by_role}
