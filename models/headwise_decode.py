"""Per-head ("headwise") decode attention of one new token, in plain torch: the reference that
the Triton kernel (trt_plugins/headwise_decode.py) is checked against.

One layer, one new token per sequence (S == 1), kv heads ordered retrieval first as in
edgert/kv_cache.py: r retrieval heads keep every token in [B, r, C, d], s streaming heads keep
sink + recent slots in [B, s, W, d]. Query head h reads kv head h // g (even contiguous
groups), so query heads [0, r*g) read retrieval heads and [r*g, H) streaming heads.

Who sees what (the same masks DecoderStep builds in models/decoder.py for S == 1):
- a retrieval query sees every slot t with past_mask[b, t] != 0 (and t < lengths[b] when
  lengths is given), plus the new token;
- a streaming query at position p sees the window slot holding position p' iff p' >= 0 and
  (p' < sink or p - p' <= recent), plus the new token.
The new token always sees itself, so no softmax row is empty.

r == 0 or s == 0: pass None for that part's tensors (a tensor with 0 heads works too); r is
read from retrieval_key, s = kv - r.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HeadwiseShape:
    """Sizes of one headwise decode call: batch, query heads, kv heads (retrieval + streaming),
    group (query heads per kv head), head dim, retrieval capacity C and window W (0 when the
    part is absent)."""

    batch: int
    heads: int
    kv: int
    retrieval: int
    streaming: int
    group: int
    head_dim: int
    capacity: int
    window: int


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"headwise decode: {message}")


def headwise_shape(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, *,
                   retrieval_key: torch.Tensor | None, retrieval_value: torch.Tensor | None,
                   past_mask: torch.Tensor | None, lengths: torch.Tensor | None,
                   streaming_key: torch.Tensor | None, streaming_value: torch.Tensor | None,
                   window_positions: torch.Tensor | None, position: torch.Tensor | None) -> HeadwiseShape:
    """Check the inputs of a headwise decode call (ValueError names the first bad one) and
    return their sizes."""
    _check(q.dim() == 3 and k_new.dim() == 3, f"q and k_new must be [B, heads, d], got {tuple(q.shape)} "
           f"and {tuple(k_new.shape)}")
    batch, heads, d = q.shape
    kv = k_new.shape[1]
    _check(tuple(k_new.shape) == (batch, kv, d) and tuple(v_new.shape) == (batch, kv, d),
           f"k_new and v_new must be [B, kv, d] = [{batch}, kv, {d}], got {tuple(k_new.shape)} and "
           f"{tuple(v_new.shape)}")
    _check(kv >= 1 and heads % kv == 0, f"{kv} kv heads must divide {heads} query heads evenly")
    _check(k_new.dtype == q.dtype and v_new.dtype == q.dtype, "q, k_new and v_new must share a dtype")
    r = 0 if retrieval_key is None else retrieval_key.shape[1]
    s = kv - r
    _check(s >= 0, f"{r} retrieval heads but only {kv} kv heads")
    capacity = window = 0
    if r:
        _check(retrieval_value is not None and past_mask is not None,
               "retrieval heads need retrieval_value and past_mask")
        capacity = retrieval_key.shape[2]
        want = (batch, r, capacity, d)
        _check(tuple(retrieval_key.shape) == want and tuple(retrieval_value.shape) == want,
               f"retrieval key/value must be [B, r, C, d] = {list(want)}, got {tuple(retrieval_key.shape)} "
               f"and {tuple(retrieval_value.shape)}")
        _check(tuple(past_mask.shape) == (batch, capacity), f"past_mask must be [B, C] = [{batch}, {capacity}], "
               f"got {tuple(past_mask.shape)}")
        _check(lengths is None or tuple(lengths.shape) == (batch,), f"lengths must be [B] = [{batch}]")
    if s:
        _check(streaming_key is not None and streaming_value is not None and window_positions is not None
               and position is not None, "streaming heads need streaming key/value, window_positions and position")
        window = streaming_key.shape[2]
        want = (batch, s, window, d)
        _check(tuple(streaming_key.shape) == want and tuple(streaming_value.shape) == want,
               f"streaming key/value must be [B, s, W, d] = {list(want)}, got {tuple(streaming_key.shape)} "
               f"and {tuple(streaming_value.shape)}")
        _check(tuple(window_positions.shape) == (batch, window),
               f"window_positions must be [B, W] = [{batch}, {window}], got {tuple(window_positions.shape)}")
        _check(tuple(position.shape) == (batch,), f"position must be [B] = [{batch}], got {tuple(position.shape)}")
    return HeadwiseShape(batch, heads, kv, r, s, heads // kv, d, capacity, window)


def retrieval_visible(past_mask: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """[B, C] bool: the retrieval slots a query sees (filled, and below lengths when given)."""
    seen = past_mask != 0
    if lengths is not None:
        slots = torch.arange(past_mask.shape[1], device=past_mask.device)
        seen = seen & (slots.view(1, -1) < lengths.view(-1, 1))
    return seen


def window_visible(window_positions: torch.Tensor, position: torch.Tensor, sink: int, recent: int) -> torch.Tensor:
    """[B, W] bool: the window slots a query at `position` [B] sees (the graph's streaming mask)."""
    p = position.view(-1, 1).to(window_positions.dtype)
    return (window_positions >= 0) & ((window_positions < sink) | (p - window_positions <= recent))


def _attend(rows: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, k_past: torch.Tensor,
            v_past: torch.Tensor, seen: torch.Tensor, scale: float) -> torch.Tensor:
    """Softmax over [past, new] keys, all float32. rows [B, k, g, d]; k_new, v_new [B, k, d];
    k_past, v_past [B, k, T, d]; seen [B, T]. Returns [B, k, g, d]."""
    past = torch.einsum("bkgd,bktd->bkgt", rows, k_past) * scale
    past = past.masked_fill(~seen.view(seen.shape[0], 1, 1, -1), float("-inf"))
    new = torch.einsum("bkgd,bkd->bkg", rows, k_new).unsqueeze(-1) * scale
    probs = torch.softmax(torch.cat([past, new], dim=-1), dim=-1)
    return (torch.einsum("bkgt,bktd->bkgd", probs[..., :-1], v_past)
            + probs[..., -1:] * v_new.unsqueeze(2))


def headwise_decode_reference(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, *,
                              retrieval_key: torch.Tensor | None = None,
                              retrieval_value: torch.Tensor | None = None,
                              past_mask: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                              streaming_key: torch.Tensor | None = None,
                              streaming_value: torch.Tensor | None = None,
                              window_positions: torch.Tensor | None = None, position: torch.Tensor | None = None,
                              sink: int = 0, recent: int = 0, scale: float | None = None) -> torch.Tensor:
    """Attention of one new token per sequence over a per-head KV cache (module docstring).

    q [B, H, d] (RoPE applied, not scaled); k_new, v_new [B, kv, d]; retrieval_key/value
    [B, r, C, d]; past_mask [B, C] (nonzero = filled); lengths [B] (None: every slot may be
    read); streaming_key/value [B, s, W, d]; window_positions [B, W] (-1 = empty slot);
    position [B]; scale None means d ** -0.5. Computed in float32; returns [B, H, d] in q's dtype.
    """
    shape = headwise_shape(q, k_new, v_new, retrieval_key=retrieval_key, retrieval_value=retrieval_value,
                           past_mask=past_mask, lengths=lengths, streaming_key=streaming_key,
                           streaming_value=streaming_value, window_positions=window_positions, position=position)
    batch, d, g, r = shape.batch, shape.head_dim, shape.group, shape.retrieval
    scale = d**-0.5 if scale is None else float(scale)
    rows = q.float().view(batch, shape.kv, g, d)
    k_new, v_new = k_new.float(), v_new.float()
    parts = []
    if r:
        seen = retrieval_visible(past_mask, lengths)
        parts.append(_attend(rows[:, :r], k_new[:, :r], v_new[:, :r], retrieval_key.float(),
                             retrieval_value.float(), seen, scale))
    if shape.streaming:
        seen = window_visible(window_positions, position, sink, recent)
        parts.append(_attend(rows[:, r:], k_new[:, r:], v_new[:, r:], streaming_key.float(),
                             streaming_value.float(), seen, scale))
    return torch.cat(parts, dim=1).reshape(batch, shape.heads, d).to(q.dtype)
