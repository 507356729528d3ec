"""One head-aware attention module: it executes one LayerPlan.

Kept query heads, the kv head each one reads (any GQA map), standard or clipped softmax,
an optional per-head output gate and RoPE all live here, so every adapter (BERT-family
encoders, Llama-family decoders) shares one implementation and one export path.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from edgert.models.ops import clipped_softmax
from edgert.plan import LayerPlan


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dim (the Llama/NeoX RoPE convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class HeadAttention(nn.Module):
    """Self-attention over the heads a LayerPlan keeps.

    Weights: q [kept*d, hidden], k/v [kv*d, hidden], o [hidden, kept*d]; gate (when the plan
    says `gated`): one Linear(d -> 1) per kept head, stored as gate_weight [kept, d] and
    gate_bias [kept], applied to that head's slice of the layer input.
    """

    def __init__(self, hidden_size: int, head_dim: int, plan: LayerPlan, *, qkv_bias: bool,
                 o_bias: bool, rope: bool = False):
        super().__init__()
        self.head_dim, self.rope = head_dim, rope
        self.num_heads, self.num_kv_heads = len(plan.kept_heads), plan.num_kv_heads
        self.softmax_kind, self.gamma, self.zeta = plan.softmax.kind, plan.softmax.gamma, plan.softmax.zeta
        self.kept_heads = list(plan.kept_heads)
        with warnings.catch_warnings():  # a layer with every head pruned has empty projections
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            self.q_proj = nn.Linear(hidden_size, self.num_heads * head_dim, bias=qkv_bias)
            self.k_proj = nn.Linear(hidden_size, self.num_kv_heads * head_dim, bias=qkv_bias)
            self.v_proj = nn.Linear(hidden_size, self.num_kv_heads * head_dim, bias=qkv_bias)
            self.o_proj = nn.Linear(self.num_heads * head_dim, hidden_size, bias=o_bias)
        self.register_buffer("kv_index", torch.tensor(plan.kv_heads, dtype=torch.long), persistent=False)
        self.shares_kv = list(plan.kv_heads) != list(range(self.num_heads))
        if plan.gated:
            self.gate_weight = nn.Parameter(torch.zeros(self.num_heads, head_dim))
            self.gate_bias = nn.Parameter(torch.zeros(self.num_heads))
        else:
            self.gate_weight = self.gate_bias = None
        # Set to a [kept] tensor of ones with requires_grad to score heads (Michel et al. 2019).
        self.head_mask: torch.Tensor | None = None

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """hidden [B, S, hidden]; attention_mask additive, broadcastable to [B, heads, S, S];
        rope (cos, sin) [B, S, d] when the family uses RoPE. Returns [B, S, hidden]."""
        batch, seq, _ = hidden.shape
        if self.num_heads == 0:  # every head pruned: the layer adds only the output bias
            out = hidden.new_zeros(batch, seq, self.o_proj.out_features)
            return out + self.o_proj.bias if self.o_proj.bias is not None else out
        q = self.q_proj(hidden).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(hidden).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden).view(batch, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if self.rope:
            cos, sin = (t.unsqueeze(1) for t in rope)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if self.shares_kv:
            k, v = k.index_select(1, self.kv_index), v.index_select(1, self.kv_index)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim**-0.5
        if attention_mask is not None:
            scores = scores + attention_mask
        if self.softmax_kind == "clipped":
            probs = clipped_softmax(scores, self.gamma, self.zeta)
        else:
            probs = torch.softmax(scores, dim=-1)
        context = torch.matmul(probs, v)  # [B, kept, S, d]
        if self.gate_weight is not None:
            heads = hidden.view(batch, seq, -1, self.head_dim)[:, :, self.kept_heads]
            gate = torch.sigmoid((heads * self.gate_weight).sum(-1) + self.gate_bias)  # [B, S, kept]
            context = context * gate.transpose(1, 2).unsqueeze(-1)
        if self.head_mask is not None:
            context = context * self.head_mask.view(1, -1, 1, 1)
        return self.o_proj(context.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))
