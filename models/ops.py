"""edgert's torch custom ops: the reference implementation of each op in edgert/op_spec.py,
registered under the spec's torch name (GPU kernels live in trt_plugins/).

Each op is opaque to torch.export, so the ONNX exporter maps it to one `edgert`-domain node
(exporters/custom_ops.py) instead of inlining its arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgert.models.headwise_decode import headwise_decode_reference
from edgert.op_spec import (CASCADED_GROUP_ATTENTION, CLIPPED_SOFTMAX, HEADWISE_ATTENTION, HEADWISE_DECODE_ATTENTION,
                            PREFILL_ATTENTION, SINGLE_HEAD_ATTENTION)


@torch.library.custom_op(CLIPPED_SOFTMAX.torch_qualname, mutates_args=())
def clipped_softmax(scores: torch.Tensor, gamma: float, zeta: float) -> torch.Tensor:
    """clip((zeta - gamma) * softmax(scores, -1) + gamma, 0, 1) (Bondarenko et al. 2023)."""
    return torch.clamp((zeta - gamma) * torch.softmax(scores, dim=-1) + gamma, 0.0, 1.0)


@clipped_softmax.register_fake
def _clipped_softmax_fake(scores, gamma, zeta):
    return torch.empty_like(scores)


def _clipped_softmax_setup(ctx, inputs, output):
    scores, gamma, zeta = inputs
    ctx.save_for_backward(scores)
    ctx.gamma, ctx.zeta = gamma, zeta


def _clipped_softmax_backward(ctx, grad):
    (scores,) = ctx.saved_tensors
    probs = torch.softmax(scores, dim=-1)
    stretched = (ctx.zeta - ctx.gamma) * probs + ctx.gamma
    # The clip passes gradient only where it is inactive.
    grad_probs = grad * (ctx.zeta - ctx.gamma) * ((stretched > 0) & (stretched < 1)).to(grad.dtype)
    grad_scores = probs * (grad_probs - (grad_probs * probs).sum(dim=-1, keepdim=True))
    return grad_scores, None, None


clipped_softmax.register_autograd(_clipped_softmax_backward, setup_context=_clipped_softmax_setup)


def cascaded_group_attention_reference(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                                       dw_weight: torch.Tensor, dw_bias: torch.Tensor, bias: torch.Tensor,
                                       num_heads: int, key_dim: int, kernels: list[int], scale: float
                                       ) -> torch.Tensor:
    """EfficientViT's cascaded group attention over a batch of windows x [B, C, H, W].

    Head i reads channel chunk i plus head i-1's output through a 1x1 conv (qkv_weight[i]
    [2*key_dim + value_dim, C/heads, 1, 1]), runs a depthwise conv on q (dw_weight[i]
    [key_dim, 1, K, K], K the largest of `kernels`; head i's kernels[i] x kernels[i] kernel sits
    in its centre, zero-padded), and attends with the additive bias[i] [H*W, H*W]. Returns the
    heads' outputs concatenated: [B, heads * value_dim, H, W].
    """
    B, _, H, W = x.shape
    value_dim = qkv_weight.shape[1] - 2 * key_dim
    largest = dw_weight.shape[-1]
    chunks = x.chunk(num_heads, dim=1)
    outputs, feat = [], chunks[0]
    for i in range(num_heads):
        if i:
            feat = feat + chunks[i]
        q, k, v = F.conv2d(feat, qkv_weight[i], qkv_bias[i]).split([key_dim, key_dim, value_dim], dim=1)
        crop = (largest - kernels[i]) // 2
        kernel = dw_weight[i][..., crop:largest - crop, crop:largest - crop]
        q = F.conv2d(q, kernel, dw_bias[i], padding=kernels[i] // 2, groups=key_dim).flatten(2) * scale
        scores = q.transpose(-2, -1) @ k.flatten(2) + bias[i]
        feat = (v.flatten(2) @ scores.softmax(dim=-1).transpose(-2, -1)).view(B, value_dim, H, W)
        outputs.append(feat)
    return torch.cat(outputs, 1)


@torch.library.custom_op(CASCADED_GROUP_ATTENTION.torch_qualname, mutates_args=())
def cascaded_group_attention(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                             dw_weight: torch.Tensor, dw_bias: torch.Tensor, bias: torch.Tensor,
                             num_heads: int, key_dim: int, kernels: list[int], scale: float) -> torch.Tensor:
    """cascaded_group_attention_reference as one opaque op (exported as edgert::CascadedGroupAttention)."""
    return cascaded_group_attention_reference(x, qkv_weight, qkv_bias, dw_weight, dw_bias, bias, num_heads,
                                              key_dim, kernels, scale)


@cascaded_group_attention.register_fake
def _cascaded_group_attention_fake(x, qkv_weight, qkv_bias, dw_weight, dw_bias, bias, num_heads, key_dim, kernels,
                                   scale):
    value_dim = qkv_weight.shape[1] - 2 * key_dim
    return x.new_empty(x.shape[0], num_heads * value_dim, x.shape[2], x.shape[3])


def single_head_attention_reference(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                                    qkv_weight: torch.Tensor, qkv_bias: torch.Tensor, partial_dim: int,
                                    qk_dim: int, scale: float, eps: float) -> torch.Tensor:
    """SHViT's single-head attention on x [B, C, H, W]: the first `partial_dim` channels are
    group-normalised (one group), projected by a 1x1 conv to q, k (qk_dim each) and v
    (partial_dim), and attend globally; the other channels pass through. Returns [B, C, H, W]."""
    B, C, H, W = x.shape
    x1, x2 = x.split([partial_dim, C - partial_dim], dim=1)
    x1 = F.group_norm(x1, 1, norm_weight, norm_bias, eps)
    q, k, v = F.conv2d(x1, qkv_weight, qkv_bias).flatten(2).split([qk_dim, qk_dim, partial_dim], dim=1)
    probs = ((q.transpose(-2, -1) @ k) * scale).softmax(dim=-1)
    return torch.cat([(v @ probs.transpose(-2, -1)).reshape(B, partial_dim, H, W), x2], dim=1)


@torch.library.custom_op(SINGLE_HEAD_ATTENTION.torch_qualname, mutates_args=())
def single_head_attention(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                          qkv_weight: torch.Tensor, qkv_bias: torch.Tensor, partial_dim: int, qk_dim: int,
                          scale: float, eps: float) -> torch.Tensor:
    """single_head_attention_reference as one opaque op (exported as edgert::SingleHeadAttention)."""
    return single_head_attention_reference(x, norm_weight, norm_bias, qkv_weight, qkv_bias, partial_dim,
                                           qk_dim, scale, eps)


@single_head_attention.register_fake
def _single_head_attention_fake(x, norm_weight, norm_bias, qkv_weight, qkv_bias, partial_dim, qk_dim, scale, eps):
    return torch.empty_like(x)


def prefill_attention_reference(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_past: torch.Tensor,
                                v_past: torch.Tensor, bias: torch.Tensor | None, scale: float,
                                softmax=None) -> torch.Tensor:
    """Grouped-query attention of S new tokens over a cache and themselves.

    q [B, H, S, d] with query heads grouped by the kv head they read (head h reads kv head
    h // (H / kv)); k_new, v_new [B, kv, S, d]; k_past, v_past [B, kv, P, d]. bias [B, 1, S, P + S]
    is additive (0 or a large negative: which past and new keys each query may see); None means
    causal in cache coordinates (new token i sees every past slot and new tokens 0..i). Returns
    softmax(scale * q k^T + bias) v over the P + S keys: [B, H, S, d]. The g = H / kv query heads
    of a kv head are stacked as g * S rows of one matmul, so each key is read once. `softmax`
    (a function of the scores, over the last dim; None: the standard one) lets the portable
    graph's chunk branch (models/attention.py) run this same arithmetic with a clipped softmax.
    """
    batch, heads, seq, d = q.shape
    kv, past = k_new.shape[1], k_past.shape[2]
    group = heads // kv
    if bias is None:
        keys = torch.arange(past + seq)
        allowed = keys.view(1, -1) <= past + torch.arange(seq).view(-1, 1)
        bias = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min).view(1, 1, seq, -1)
    keys, values = torch.cat([k_past, k_new], dim=2), torch.cat([v_past, v_new], dim=2)
    rows = q.reshape(batch, kv, group * seq, d)
    if scale != 1.0:  # the decoder scales q before its If, so its graph carries no Mul by 1
        rows = rows * scale
    scores = torch.matmul(rows, keys.transpose(2, 3))
    scores = (scores.view(batch, kv, group, seq, -1) + bias.unsqueeze(2)).view(batch, kv, group * seq, -1)
    probs = torch.softmax(scores, dim=-1) if softmax is None else softmax(scores)
    return torch.matmul(probs, values).view(batch, heads, seq, d)


@torch.library.custom_op(PREFILL_ATTENTION.torch_qualname, mutates_args=())
def prefill_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_past: torch.Tensor,
                      v_past: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """prefill_attention_reference as one opaque op: exported for ONNX Runtime CPU as
    com.microsoft.GroupQueryAttention (exporters/custom_ops.py), whose tiled kernel never
    writes the [S, P + S] score matrix."""
    return prefill_attention_reference(q, k_new, v_new, k_past, v_past, bias, scale)


@prefill_attention.register_fake
def _prefill_attention_fake(q, k_new, v_new, k_past, v_past, bias, scale):
    return q.new_empty(q.shape)  # contiguous, as the reference returns it (q may be a transposed view)


@torch.library.custom_op(HEADWISE_DECODE_ATTENTION.torch_qualname, mutates_args=())
def headwise_decode_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                              retrieval_key: torch.Tensor | None, retrieval_value: torch.Tensor | None,
                              past_mask: torch.Tensor | None, lengths: torch.Tensor | None,
                              streaming_key: torch.Tensor | None, streaming_value: torch.Tensor | None,
                              window_positions: torch.Tensor | None, position: torch.Tensor | None,
                              sink: int, recent: int, scale: float) -> torch.Tensor:
    """models/headwise_decode.py's reference as one opaque op, with positional arguments in the
    spec's order (a Triton kernel replaces it on CUDA: trt_plugins/kernels.py)."""
    return headwise_decode_reference(q, k_new, v_new, retrieval_key=retrieval_key, retrieval_value=retrieval_value,
                                     past_mask=past_mask, lengths=lengths, streaming_key=streaming_key,
                                     streaming_value=streaming_value, window_positions=window_positions,
                                     position=position, sink=sink, recent=recent, scale=scale)


@headwise_decode_attention.register_fake
def _headwise_decode_attention_fake(q, *args):
    return torch.empty_like(q)


def softmax_of(kind: str, gamma: float | None, zeta: float | None):
    """The softmax over the last dim a layer uses: torch's, or edgert::clipped_softmax."""
    if kind == "clipped":
        return lambda scores: clipped_softmax(scores, gamma, zeta)
    return lambda scores: torch.softmax(scores, dim=-1)


def headwise_attention_reference(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                                 retrieval_key: torch.Tensor | None, retrieval_value: torch.Tensor | None,
                                 retrieval_bias: torch.Tensor | None, causal_bias: torch.Tensor,
                                 streaming_key: torch.Tensor | None, streaming_value: torch.Tensor | None,
                                 streaming_bias: torch.Tensor | None, window_bias: torch.Tensor | None,
                                 unpadded: torch.Tensor | None, *, kv_heads: list[int], retrieval_heads: int,
                                 softmax: str = "standard", gamma: float | None = None, zeta: float | None = None,
                                 fused_prefill: bool = False) -> torch.Tensor:
    """Attention of S new tokens of one decoder layer over its per-head cache and themselves
    (the LayerCache of models/attention.py holds these inputs; HEADWISE_ATTENTION's doc says who
    sees what). q [B, H, S, d] with RoPE applied, not scaled; k_new, v_new [B, kv, S, d];
    kv_heads: the kv head each query head reads, ordered (retrieval heads first, any groups,
    even or not); fused_prefill: prefill chunks of even groups with a standard softmax run as
    edgert::prefill_attention. Returns the context [B, H, S, d]."""
    if kv_heads != sorted(kv_heads):
        raise ValueError("cached attention needs query heads ordered by kv head (models/decoder.py)")
    r = retrieval_heads
    split = sum(1 for kv in kv_heads if kv < r)  # query heads reading retrieval heads
    options = dict(softmax=softmax_of(softmax, gamma, zeta), fused_prefill=fused_prefill and softmax == "standard")
    parts = []
    if split:
        parts.append(_attend_part(q[:, :split], kv_heads[:split], k_new[:, :r], v_new[:, :r], retrieval_key,
                                  retrieval_value, retrieval_bias, causal_bias, past_per_query=False,
                                  unpadded=unpadded, **options))
    if split < len(kv_heads):
        parts.append(_attend_part(q[:, split:], [kv - r for kv in kv_heads[split:]], k_new[:, r:], v_new[:, r:],
                                  streaming_key, streaming_value, streaming_bias, window_bias, past_per_query=True,
                                  **options))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _attend_part(q, kv_index, k_new, v_new, k_past, v_past, past_bias, new_bias, *, past_per_query: bool,
                 softmax, fused_prefill: bool, unpadded: torch.Tensor | None = None):
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
    fused = fused_prefill and even
    if not even:  # uneven groups (a pruned plan): one row block per query head
        group = 1
        kv_index = torch.tensor(kv_index, dtype=torch.long, device=k_new.device)
        k_new, v_new = k_new.index_select(1, kv_index), v_new.index_select(1, kv_index)
        k_past, v_past = k_past.index_select(1, kv_index), v_past.index_select(1, kv_index)
    q = q * d**-0.5

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


@torch.library.custom_op(HEADWISE_ATTENTION.torch_qualname, mutates_args=())
def headwise_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                       retrieval_key: torch.Tensor | None, retrieval_value: torch.Tensor | None,
                       retrieval_bias: torch.Tensor | None, causal_bias: torch.Tensor,
                       streaming_key: torch.Tensor | None, streaming_value: torch.Tensor | None,
                       streaming_bias: torch.Tensor | None, window_bias: torch.Tensor | None,
                       unpadded: torch.Tensor | None, group: int, retrieval_heads: int, softmax: str,
                       gamma: float, zeta: float, fused_prefill: bool) -> torch.Tensor:
    """headwise_attention_reference of a layer whose query heads come in even groups of `group`
    per kv head, as one opaque op (exported as edgert::HeadwiseAttention)."""
    return headwise_attention_reference(q, k_new, v_new, retrieval_key, retrieval_value, retrieval_bias, causal_bias,
                                        streaming_key, streaming_value, streaming_bias, window_bias, unpadded,
                                        kv_heads=[h // group for h in range(q.shape[1])],
                                        retrieval_heads=retrieval_heads, softmax=softmax, gamma=gamma, zeta=zeta,
                                        fused_prefill=fused_prefill)


@headwise_attention.register_fake
def _headwise_attention_fake(q, *args):
    return q.new_empty(q.shape)
