"""One head-aware attention module: it executes one LayerPlan.

Kept query heads, the kv head each one reads (any GQA map), standard or clipped softmax,
an optional per-head output gate and RoPE all live here, so every adapter (BERT-family
encoders, Llama-family decoders) shares one implementation and one export path.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from edgert.models.ops import headwise_attention, headwise_attention_reference, softmax_of
from edgert.plan import LayerPlan


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[x1, x2] -> [-x2, x1] over the last dim (the Llama/NeoX RoPE convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@dataclass
class LayerCache:
    """One layer's KV cache as one decoding step sees it (gpt-fast's cache object, except that
    the memory lives in the runtime: the exported graph reads the past as inputs and outputs
    only the new keys and values, which the runtime writes into its preallocated buffers).

    The layer's kv heads are ordered retrieval first: heads [0, num_retrieval) keep every
    token, the rest keep a window (sinks plus recent tokens). Biases are additive (0 or a
    large negative) and shared by all layers:
    retrieval_bias [B, 1, 1, C] marks filled slots of the retrieval cache [B, r, C, d];
    streaming_bias [B, 1, S, W] marks, per new token, the streaming slots it may see;
    causal_bias / window_bias [B, 1, S, S] do the same among the S new tokens.
    """

    num_retrieval: int
    causal_bias: torch.Tensor
    window_bias: torch.Tensor | None = None
    retrieval_key: torch.Tensor | None = None
    retrieval_value: torch.Tensor | None = None
    retrieval_bias: torch.Tensor | None = None
    streaming_key: torch.Tensor | None = None
    streaming_value: torch.Tensor | None = None
    streaming_bias: torch.Tensor | None = None
    new_key: torch.Tensor | None = None  # set by the attention: [B, kv, S, d], RoPE applied
    new_value: torch.Tensor | None = None
    # bool scalar: no left padding among the new tokens and every retrieval slot filled, so a
    # fused prefill chunk over the retrieval heads needs no bias (causal in cache coordinates)
    unpadded: torch.Tensor | None = None
    # The integer inputs the biases come from, for a decode-attention op that masks by itself:
    # past_mask [B, C], window_positions [B, W], positions [B, S] of the new tokens.
    past_mask: torch.Tensor | None = None
    window_positions: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    sink: int = 0
    recent: int = 0


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
        self.kv_heads = list(plan.kv_heads)  # the kv head each kept query head reads
        self.register_buffer("kv_index", torch.tensor(plan.kv_heads, dtype=torch.long), persistent=False)
        self.shares_kv = list(plan.kv_heads) != list(range(self.num_heads))
        if plan.gated:
            self.gate_weight = nn.Parameter(torch.zeros(self.num_heads, head_dim))
            self.gate_bias = nn.Parameter(torch.zeros(self.num_heads))
        else:
            self.gate_weight = self.gate_bias = None
        # Set to a [kept] tensor of ones with requires_grad to score heads (Michel et al. 2019).
        self.head_mask: torch.Tensor | None = None
        # Set by the decoder export for ONNX Runtime CPU: prefill chunks attend through
        # edgert::prefill_attention (one fused node) where fused_prefill_applies says it can.
        self.fused_prefill = False
        # Set by the decoder export: the cached attention becomes one edgert::headwise_attention
        # call (one edgert::HeadwiseAttention node per layer) where the groups are even.
        self.headwise_node = False
        # Set by torch-side decoding (trt_plugins/torch_decode.py): a function with the
        # signature of edgert::headwise_decode_attention that one-token steps call for the
        # whole layer (retrieval and streaming heads in one call) where fused_prefill_applies.
        self.decode_attention = None

    @property
    def even_groups(self) -> bool:
        """Whether the query heads come in even contiguous groups per kv head (a pruned plan may
        leave them uneven)."""
        kv = self.num_kv_heads
        return (kv > 0 and self.num_heads % kv == 0
                and self.kv_heads == [h // (self.num_heads // kv) for h in range(self.num_heads)])

    @property
    def fused_prefill_applies(self) -> bool:
        """Whether prefill chunks can run as edgert::prefill_attention: a standard softmax and
        even groups."""
        return self.softmax_kind == "standard" and self.even_groups

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """hidden [B, S, hidden]; attention_mask additive, broadcastable to [B, heads, S, S];
        rope (cos, sin) [B, S, d] when the family uses RoPE; cache: attend over a KV cache
        too (attention_mask is then unused: the cache carries the masks). Returns [B, S, hidden]."""
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
        if cache is not None:
            cache.new_key, cache.new_value = k, v
            context = self._attend_cached(q, k, v, cache)
            return self._output(hidden, context)
        if self.shares_kv:
            k, v = k.index_select(1, self.kv_index), v.index_select(1, self.kv_index)
        scores = torch.matmul(q, k.transpose(2, 3)) * self.head_dim**-0.5
        if attention_mask is not None:
            scores = scores + attention_mask
        probs = self._softmax(scores)
        return self._output(hidden, torch.matmul(probs, v))

    def _softmax(self, scores: torch.Tensor) -> torch.Tensor:
        return softmax_of(self.softmax_kind, self.gamma, self.zeta)(scores)

    def _output(self, hidden: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Gate and head-mask the per-head context [B, kept, S, d], then project it."""
        batch, seq, _ = hidden.shape
        if self.gate_weight is not None:
            heads = hidden.view(batch, seq, -1, self.head_dim)[:, :, self.kept_heads]
            gate = torch.sigmoid((heads * self.gate_weight).sum(-1) + self.gate_bias)  # [B, S, kept]
            context = context * gate.transpose(1, 2).unsqueeze(-1)
        if self.head_mask is not None:
            context = context * self.head_mask.view(1, -1, 1, 1)
        return self.o_proj(context.transpose(1, 2).reshape(batch, seq, self.num_heads * self.head_dim))

    def _attend_cached(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       cache: LayerCache) -> torch.Tensor:
        """Attention of the new queries over cache + new keys, retrieval and streaming kv
        heads separately (models/ops.py:headwise_attention_reference); returns the context
        [B, kept, S, d]. With `headwise_node` and even groups, the whole of it is one
        edgert::headwise_attention call, so the export has one node per layer."""
        if self.decode_attention is not None and q.shape[2] == 1 and self.fused_prefill_applies:
            return self._decode_op(q, k, v, cache)
        unpadded = cache.unpadded if self.fused_prefill else None  # only fused chunks read it
        inputs = (q, k, v, cache.retrieval_key, cache.retrieval_value, cache.retrieval_bias, cache.causal_bias,
                  cache.streaming_key, cache.streaming_value, cache.streaming_bias, cache.window_bias, unpadded)
        if self.headwise_node and self.even_groups:
            standard = self.softmax_kind == "standard"
            return headwise_attention(*inputs, self.num_heads // self.num_kv_heads, cache.num_retrieval,
                                      self.softmax_kind, 0.0 if standard else self.gamma,
                                      1.0 if standard else self.zeta, self.fused_prefill)
        return headwise_attention_reference(*inputs, kv_heads=self.kv_heads, retrieval_heads=cache.num_retrieval,
                                            softmax=self.softmax_kind, gamma=self.gamma, zeta=self.zeta,
                                            fused_prefill=self.fused_prefill)

    def _decode_op(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """One new token's attention over both caches through self.decode_attention."""
        r = cache.num_retrieval
        retrieval = (cache.retrieval_key, cache.retrieval_value, cache.past_mask) if r else (None, None, None)
        streaming = ((cache.streaming_key, cache.streaming_value, cache.window_positions, cache.positions[:, 0])
                     if r < self.num_kv_heads else (None, None, None, None))
        lengths = None  # past_mask alone says which retrieval slots are filled
        context = self.decode_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], *retrieval, lengths, *streaming,
                                        cache.sink, cache.recent, self.head_dim**-0.5)
        return context.unsqueeze(2)
