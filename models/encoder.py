"""Export wrappers around Hugging Face encoders: fixed positional inputs, named outputs."""

from __future__ import annotations

import torch
from torch import nn

TASK_OUTPUTS = {
    "feature-extraction": ["last_hidden_state"],
    "sentence-embedding": ["sentence_embedding"],
}


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of token vectors where attention_mask is 1 (sentence-transformers' Pooling)."""
    # hidden: [B, S, H], attention_mask: [B, S] -> [B, H]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class EncoderExport(nn.Module):
    """Runs `encoder` on (input_ids, attention_mask[, token_type_ids]) and returns the
    outputs of `task`: the last hidden state, or a mean-pooled, L2-normalised embedding."""

    def __init__(self, encoder: nn.Module, task: str, *, uses_token_types: bool):
        super().__init__()
        if task not in TASK_OUTPUTS:
            raise ValueError(f"unknown task {task!r}")
        self.encoder = encoder
        self.task = task
        self.uses_token_types = uses_token_types

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"token_type_ids": token_type_ids} if self.uses_token_types else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              **kwargs).last_hidden_state
        if self.task == "feature-extraction":
            return hidden
        return nn.functional.normalize(mean_pool(hidden, attention_mask), p=2, dim=1)
