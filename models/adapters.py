"""Swap edgert's HeadAttention into Hugging Face models, in place.

BERT-family encoders (bert, roberta): each layer's `attention.self` becomes a HeadAttention
that also owns the output projection (`attention.output.dense` becomes Identity, so the
residual + LayerNorm after it are untouched). Llama-family decoders (llama, qwen2, mistral):
each layer's `self_attn` becomes a HeadAttention with RoPE. Adapted decoders run whole
sequences without a KV cache (edgert's runtime owns decoding caches).

Weights are copied through a HeadPlan (models/transforms.py), so an identity plan reproduces
the original model and any other plan prunes or regroups heads physically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgert.models.attention import HeadAttention
from edgert.models.families import adaptable_family
from edgert.models.transforms import build_attention
from edgert.plan import HeadPlan


@dataclass
class AttentionWeights:
    """One layer's original projections, [out, in] as in nn.Linear; biases may be None."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    q_bias: torch.Tensor | None
    k_bias: torch.Tensor | None
    v_bias: torch.Tensor | None
    o_bias: torch.Tensor | None


@dataclass
class ModelShape:
    family: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    rope: bool


def model_shape(model) -> ModelShape:
    """Attention geometry of a supported transformers model."""
    return config_shape(model.config)


def config_shape(config) -> ModelShape:
    """Attention geometry of a supported transformers config (no weights needed)."""
    family = adaptable_family(config.model_type)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(family.model_type, config.num_hidden_layers, heads,
                      getattr(config, "num_key_value_heads", None) or heads, head_dim,
                      config.hidden_size, family.kind == "decoder")


def identity_plan(model) -> HeadPlan:
    """Every head kept, the model's own kv grouping, standard softmax, full caches."""
    shape = model_shape(model)
    return HeadPlan.full(shape.num_layers, shape.num_heads, shape.num_kv_heads, head_dim=shape.head_dim)


def _base(model):
    return getattr(model, model.base_model_prefix, model)


def attention_slots(model) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute name) of every layer's attention, in layer order."""
    shape = model_shape(model)
    if not shape.rope:  # BERT-family encoders
        return [(layer.attention, "self") for layer in _base(model).encoder.layer]
    return [(layer, "self_attn") for layer in _base(model).layers]


def original_weights(model) -> list[AttentionWeights]:
    """The projections of every layer of a model that is not adapted yet."""
    weights = []
    for parent, name in attention_slots(model):
        module = getattr(parent, name)
        if isinstance(module, (EncoderSelfAttention, DecoderSelfAttention)):
            raise ValueError("the model is already adapted; adapt or transform the original model")
        if name == "self":
            q, k, v, o = module.query, module.key, module.value, parent.output.dense
        else:
            q, k, v, o = module.q_proj, module.k_proj, module.v_proj, module.o_proj
        weights.append(AttentionWeights(q.weight.data, k.weight.data, v.weight.data, o.weight.data,
                                        _bias(q), _bias(k), _bias(v), _bias(o)))
    return weights


def _bias(linear: nn.Linear) -> torch.Tensor | None:
    return None if linear.bias is None else linear.bias.data


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """transformers hands eager attention an additive float mask; sdpa-style boolean masks
    (True = attend) are turned into one."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros((), dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)


class EncoderSelfAttention(nn.Module):
    """Stands in for BertSelfAttention / RobertaSelfAttention (returns o-projected output)."""

    def __init__(self, attention: HeadAttention):
        super().__init__()
        self.attention = attention

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        if kwargs.get("encoder_hidden_states") is not None:
            raise NotImplementedError("cross-attention is not adapted")
        mask = additive_mask(attention_mask, hidden_states.dtype)
        return self.attention(hidden_states, mask), None


class DecoderSelfAttention(nn.Module):
    """Stands in for LlamaAttention / Qwen2Attention / MistralAttention, without a KV cache."""

    def __init__(self, attention: HeadAttention):
        super().__init__()
        self.attention = attention

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, *args,
                edgert_cache=None, **kwargs):
        if kwargs.get("cache") is not None or kwargs.get("past_key_values") is not None:
            raise NotImplementedError("adapted decoders keep no transformers cache; call with "
                                      "use_cache=False (models/decoder.py runs them over edgert's cache)")
        mask = additive_mask(attention_mask, hidden_states.dtype)
        return self.attention(hidden_states, mask, position_embeddings, cache=edgert_cache), None


def adapt(model, plan: HeadPlan | None = None, *, weights: list[HeadAttention] | None = None):
    """Replace every attention layer of `model` with HeadAttention, in place; return `model`.

    plan: what to keep (None: every head, the identity). weights: ready-built HeadAttention
    modules (from models/transforms.py), one per layer, instead of building them from plan.
    """
    shape = model_shape(model)
    plan = plan or identity_plan(model)
    plan.check()
    plan.check_matches(shape.num_layers, shape.num_heads)
    if weights is None:
        originals = original_weights(model)
        weights = [build_attention(w, layer, shape) for w, layer in zip(originals, plan.layers)]
    for (parent, name), attention in zip(attention_slots(model), weights):
        if name == "self":
            parent.self = EncoderSelfAttention(attention)
            parent.output.dense = nn.Identity()
        else:
            setattr(parent, name, DecoderSelfAttention(attention))
    if shape.rope:
        model.config.use_cache = False
    return model


def head_attentions(model) -> list[HeadAttention]:
    """The HeadAttention of every layer of an adapted model."""
    return [getattr(parent, name).attention for parent, name in attention_slots(model)]
