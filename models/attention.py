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

from edgert.models.ops import clipped_softmax, prefill_attention, prefill_attention_reference
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
        # Set by torch-side decoding (trt_plugins/torch_decode.py): a function with the
        # signature of edgert::headwise_decode_attention that one-token steps call for the
        # whole layer (retrieval and streaming heads in one call) where fused_prefill_applies.
        self.decode_attention = None

    @property
    def fused_prefill_applies(self) -> bool:
        """Whether prefill chunks can run as edgert::prefill_attention: a standard softmax, and
        query heads in even contiguous groups per kv head (a pruned plan may leave them uneven)."""
        kv = self.num_kv_heads
        return (self.softmax_kind == "standard" and kv > 0 and self.num_heads % kv == 0
                and self.kv_heads == [h // (self.num_heads // kv) for h in range(self.num_heads)])

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
        if self.softmax_kind == "clipped":
            return clipped_softmax(scores, self.gamma, self.zeta)
        return torch.softmax(scores, dim=-1)

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
        heads separately; returns the context [B, kept, S, d]."""
        r = cache.num_retrieval
        split = sum(1 for kv in self.kv_heads if kv < r)  # query heads reading retrieval heads
        if self.kv_heads != sorted(self.kv_heads):
            raise ValueError("cached attention needs query heads ordered by kv head (models/decoder.py)")
        if self.decode_attention is not None and q.shape[2] == 1 and self.fused_prefill_applies:
            return self._decode_op(q, k, v, cache)
        parts = []
        if split:
            parts.append(self._attend_part(q[:, :split], self.kv_heads[:split], k[:, :r], v[:, :r],
                                           cache.retrieval_key, cache.retrieval_value,
                                           cache.retrieval_bias, cache.causal_bias, past_per_query=False,
                                           unpadded=cache.unpadded))
        if split < self.num_heads:
            parts.append(self._attend_part(q[:, split:], [kv - r for kv in self.kv_heads[split:]], k[:, r:], v[:, r:],
                                           cache.streaming_key, cache.streaming_value,
                                           cache.streaming_bias, cache.window_bias, past_per_query=True))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def _decode_op(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """One new token's attention over both caches through self.decode_attention."""
        r = cache.num_retrieval
        retrieval = (cache.retrieval_key, cache.retrieval_value, cache.past_mask) if r else (None, None, None)
        streaming = ((cache.streaming_key, cache.streaming_value, cache.window_positions, cache.positions[:, 0])
                     if r < self.num_kv_heads else (None, None, None, None))
        context = self.decode_attention(q[:, :, 0], k[:, :, 0], v[:, :, 0], *retrieval[:2], retrieval[2], None,
                                        *streaming, cache.sink, cache.recent, self.head_dim**-0.5)
        return context.unsqueeze(2)

    def _attend_part(self, q, kv_index, k_new, v_new, k_past, v_past, past_bias, new_bias,
                     past_per_query: bool, unpadded: torch.Tensor | None = None):
        """Softmax over [past, new] keys of one group of kv heads; past_bias has one row for
        all queries, or one per query when past_per_query. Returns [B, heads, S, d].

        Query heads are ordered by the kv head they read; when every kv head serves the same
        number g of them, the g heads' queries are stacked as g * S rows of one matmul, so each
        cached key is read once per step, not g times.

        Two ways to the same result, chosen by the number of new tokens (an ONNX If in the
        graph): one token concatenates the scores of past and new keys, which are small,
        because concatenating the keys would copy the whole cache every step; a prefill chunk
        concatenates the keys instead, which are small next to its [g*S, past] scores, so the
        big score matrix is written once and read by one softmax. With `fused_prefill` (the
        ONNX Runtime CPU export) a chunk runs as one edgert::prefill_attention node instead,
        without a bias when `unpadded` says the mask is plain causal (a second If)."""
        heads, d = q.shape[1], q.shape[3]
        kv = k_new.shape[1]
        group = heads // kv if kv else 0
        even = bool(kv) and heads == group * kv and kv_index == [h // group for h in range(heads)]
        fused = self.fused_prefill and even and self.softmax_kind == "standard"
        if not even:  # uneven groups (a pruned plan): one row block per query head
            group = 1
            kv_index = torch.tensor(kv_index, dtype=torch.long, device=k_new.device)
            k_new, v_new = k_new.index_select(1, kv_index), v_new.index_select(1, kv_index)
            k_past, v_past = k_past.index_select(1, kv_index), v_past.index_select(1, kv_index)
        q = q * d**-0.5
        softmax = self._softmax

        # Every branch takes q as [B, heads, S, d] and returns that shape (torch.cond needs
        # equal shapes); the grouped form [B, kv, g*S, d] is made inside.
        def grouped(q):
            return q.reshape(q.shape[0], q.shape[1] // group, group * q.shape[2], q.shape[3])

        def biased(scores, bias):  # [B, kv, g*S, K] + bias [B, 1, S, K], one bias row per query
            b, k, rows, keys = scores.shape
            s = bias.shape[2]
            return (scores.view(b, k, rows // s, s, keys) + bias.unsqueeze(2)).view(b, k, rows, keys)

        def full_bias(past_bias, new_bias):  # [B, 1, S, P + S]
            if not past_per_query:
                past_bias = past_bias.expand(-1, -1, new_bias.shape[2], -1)
            return torch.cat([past_bias, new_bias], dim=-1)

        def one_token(q, k_new, v_new, k_past, v_past, past_bias, new_bias):
            rows = grouped(q)
            past = torch.matmul(rows, k_past.transpose(2, 3))
            past = biased(past, past_bias) if past_per_query else past + past_bias
            probs = softmax(torch.cat([past, biased(torch.matmul(rows, k_new.transpose(2, 3)), new_bias)], dim=-1))
            split = k_past.shape[2]
            context = torch.matmul(probs[..., :split], v_past) + torch.matmul(probs[..., split:], v_new)
            return context.reshape(q.shape)

        def chunk(q, k_new, v_new, k_past, v_past, past_bias, new_bias):
            return prefill_attention_reference(q, k_new, v_new, k_past, v_past, full_bias(past_bias, new_bias),
                                               1.0, softmax=softmax)

        def fused_chunk(q, k_new, v_new, k_past, v_past, past_bias, new_bias):
            return prefill_attention(q, k_new, v_new, k_past, v_past, full_bias(past_bias, new_bias), 1.0)

        def causal_chunk(q, k_new, v_new, k_past, v_past, past_bias, new_bias):
            return prefill_attention(q, k_new, v_new, k_past, v_past, None, 1.0)

        def fused_either(q, k_new, v_new, k_past, v_past, past_bias, new_bias, unpadded):
            # Without padding the retrieval heads' mask is plain causal, which the fused op
            # applies itself: no [S, P + S] bias is built, and its kernel runs faster without one.
            return torch.cond(unpadded, causal_chunk, fused_chunk, (q, k_new, v_new, k_past, v_past, past_bias, new_bias))

        def one_token_of_eight(q, k_new, v_new, k_past, v_past, past_bias, new_bias, unpadded):
            return one_token(q, k_new, v_new, k_past, v_past, past_bias, new_bias)

        operands = (q, k_new, v_new, k_past, v_past, past_bias, new_bias)
        if fused and unpadded is not None and not past_per_query:
            return torch.cond(k_new.shape[2] == 1, one_token_of_eight, fused_either, (*operands, unpadded))
        return torch.cond(k_new.shape[2] == 1, one_token, fused_chunk if fused else chunk, operands)
