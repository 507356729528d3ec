"""Llama-family decoders as edgert exports them: one decoding step over a per-head KV cache.

`retrieval_first` orders each layer's kv heads so that retrieval (full-cache) heads come
first, permuting the projections to match; `DecoderStep` runs S new tokens against the cache
(prefill chunks and one-token decode are the same graph) and returns the next-token logits
plus the new tokens' keys and values. The cache layout is described in edgert/kv_cache.py.
"""

from __future__ import annotations

import torch
from torch import nn

from edgert.kv_cache import CacheLayout
from edgert.models.adapters import head_attentions
from edgert.models.attention import HeadAttention, LayerCache
from edgert.plan import HeadPlan, LayerPlan

# Additive mask value: finite, so a row with every key masked (a padding query) stays finite.
MASKED = torch.finfo(torch.float32).min


def retrieval_first(attention: HeadAttention, layer: LayerPlan) -> LayerPlan:
    """Reorder `attention`'s kv heads in place so full-cache heads come first, and its query
    heads so they are grouped by the kv head they read (q/k/v rows, o columns and gates
    permuted to match); return the plan of the reordered layer."""
    d = attention.head_dim
    kv_order = sorted(range(layer.num_kv_heads), key=lambda k: (layer.cache[k].kind != "full", k))
    new_kv = {old: new for new, old in enumerate(kv_order)}
    q_order = sorted(range(len(layer.kept_heads)), key=lambda j: (new_kv[layer.kv_heads[j]], j))

    def head_index(order: list[int]) -> torch.Tensor:  # the rows (or columns) of heads `order`
        return torch.cat([torch.arange(h * d, (h + 1) * d) for h in order]) if order else torch.arange(0)

    def rows(linear: nn.Linear, order: list[int]) -> None:
        index = head_index(order)
        linear.weight.data = linear.weight.data[index].clone()
        if linear.bias is not None:
            linear.bias.data = linear.bias.data[index].clone()

    rows(attention.k_proj, kv_order)
    rows(attention.v_proj, kv_order)
    rows(attention.q_proj, q_order)
    attention.o_proj.weight.data = attention.o_proj.weight.data[:, head_index(q_order)].clone()
    if attention.gate_weight is not None:
        attention.gate_weight.data = attention.gate_weight.data[q_order].clone()
        attention.gate_bias.data = attention.gate_bias.data[q_order].clone()
    reordered = LayerPlan(layer.num_heads, [layer.kept_heads[j] for j in q_order],
                          [new_kv[layer.kv_heads[j]] for j in q_order], layer.num_kv_heads,
                          layer.softmax, layer.gated, [layer.cache[k] for k in kv_order])
    attention.kept_heads = list(reordered.kept_heads)
    attention.kv_heads = list(reordered.kv_heads)
    attention.kv_index = torch.tensor(reordered.kv_heads, dtype=torch.long)
    attention.shares_kv = reordered.kv_heads != list(range(len(reordered.kept_heads)))
    return reordered


def order_for_cache(model, plan: HeadPlan) -> HeadPlan:
    """retrieval_first on every layer of an adapted model; returns the reordered plan."""
    layers = [retrieval_first(a, layer) for a, layer in zip(head_attentions(model), plan.layers)]
    return HeadPlan(layers, plan.head_dim).check()


def _bias(allowed: torch.Tensor) -> torch.Tensor:
    return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill(~allowed, MASKED)


class DecoderStep(nn.Module):
    """One step of an adapted causal LM over the cache described by `layout`.

    Inputs (CacheLayout.input_names order): input_ids, position_ids, attention_mask [B, S]
    (1 = real token, 0 = left padding), past_mask [B, C], window_positions [B, W], then per
    layer the cached keys and values. Outputs: logits [B, vocab] of the last new token, then
    per layer the new keys and values [B, kv, S, d].

    Who may see whom: a full head's query sees every filled retrieval slot and the new tokens
    up to itself; a streaming head's query at position p sees keys at positions p' with
    p' < sink or p - p' <= recent (the sinks, the `recent` previous tokens and itself), from
    the window cache and from the new tokens alike.
    """

    def __init__(self, model, layout: CacheLayout):
        super().__init__()
        self.model, self.layout = model, layout
        self.input_names = layout.input_names()
        self.attentions = head_attentions(model)

    def forward(self, *inputs: torch.Tensor):
        named = dict(zip(self.input_names, inputs))
        ids, positions, token_mask = named["input_ids"], named["position_ids"], named["attention_mask"]
        base = self.model.model
        hidden = base.embed_tokens(ids)
        rope = base.rotary_emb(hidden, positions)
        seq = ids.shape[1]
        real_key = token_mask.bool().unsqueeze(1)  # [B, 1, S]
        index = torch.arange(seq, device=ids.device)
        causal = (index.view(-1, 1) >= index.view(1, -1)).unsqueeze(0) & real_key  # [B, S, S]
        sink, recent = self.layout.sink, self.layout.recent
        query_pos = positions.unsqueeze(2)  # [B, S, 1]
        causal_bias = _bias(causal).unsqueeze(1)
        window_bias = streaming_bias = retrieval_bias = None
        if any(self.layout.streaming):
            key_pos = positions.unsqueeze(1)
            in_window = (key_pos < sink) | (query_pos - key_pos <= recent)
            window_bias = _bias(causal & in_window).unsqueeze(1)
            slot_pos = named["window_positions"].unsqueeze(1)  # [B, 1, W]
            seen = (slot_pos >= 0) & ((slot_pos < sink) | (query_pos - slot_pos <= recent))
            streaming_bias = _bias(seen).unsqueeze(1)  # [B, 1, S, W]
        unpadded = token_mask.min() > 0
        if any(self.layout.retrieval):
            retrieval_bias = _bias(named["past_mask"].bool()).view(ids.shape[0], 1, 1, -1)
            unpadded = unpadded & (named["past_mask"].min() > 0)
        outputs = []
        for i, (layer, attention) in enumerate(zip(base.layers, self.attentions)):
            r, s = self.layout.retrieval[i], self.layout.streaming[i]
            cache = LayerCache(r, causal_bias, window_bias, unpadded=unpadded, positions=positions,
                               sink=sink, recent=recent)
            if r:
                cache.retrieval_key = named[f"past.{i}.retrieval.key"]
                cache.retrieval_value = named[f"past.{i}.retrieval.value"]
                cache.retrieval_bias, cache.past_mask = retrieval_bias, named["past_mask"]
            if s:
                cache.streaming_key = named[f"past.{i}.streaming.key"]
                cache.streaming_value = named[f"past.{i}.streaming.value"]
                cache.streaming_bias, cache.window_positions = streaming_bias, named["window_positions"]
            hidden = layer(hidden, attention_mask=None, position_embeddings=rope, edgert_cache=cache)
            if r + s:
                outputs += [cache.new_key, cache.new_value]
        logits = self.model.lm_head(base.norm(hidden[:, -1:]))[:, 0]
        return (logits, *outputs)
