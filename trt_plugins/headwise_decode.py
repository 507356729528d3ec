"""Headwise decode attention of one new token as Triton kernels (flash-decoding style).

Semantics: models/headwise_decode.py (`headwise_decode_reference`, the same signature). Two
launches:

1. `_headwise_split_kernel`, grid (num_splits, kv, B): every (batch, kv head) in one launch.
   A program loads the g query rows of its kv head, padded to BLOCK_G (>= 16, so they feed
   tl.dot), and walks its share of that head's keys in BLOCK_N-key tiles with an online
   softmax: retrieval heads split slots [0, lengths[b]) of the [B, r, C, d] cache, streaming
   heads the W window slots, both into num_splits chunks of whole tiles. Each program writes a
   partial (max, sum, acc) per query row into a float32 workspace that the launcher allocates
   with torch (the kernels need no Triton global scratch, which TensorRT's AOT plugins cannot
   provide).
2. `_headwise_reduce_kernel`, grid (H, B): combines one query head's partials with its new
   token's own key and value and writes the output row.

Scores live in the log2 domain (scale * log2(e) folded into one multiply), accumulation is
float32 for fp16, bf16 and fp32 inputs. Under Triton 3.6's interpreter two of its bugs are
worked around (`_interpreter_scalar_index`, `_WIDEN_BF16_DOT`); compiled kernels are unaffected.
"""

from __future__ import annotations

import contextlib
import math

import torch
import triton
import triton.language as tl

from edgert.models.headwise_decode import HeadwiseShape, headwise_shape
from edgert.trt_plugins.triton_support import AotBuild, check_runs_here, interpreting

LOG2E = 1.4426950408889634
BLOCK_G_MIN = 16  # tl.dot needs M >= 16
MAX_SPLITS = 64  # most splits per head (the reduce kernel's split block in the AOT builds)
MIN_SPLIT_TILES = 2  # a split never gets fewer tiles than this (the GPU heuristic)
INTERPRETER_SPLITS = 3  # fixed on CPU: enough to exercise the split path, few programs to run
DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
# Triton 3.6's interpreter multiplies bf16 blocks as their uint16 storage; there, bf16 operands
# are widened to fp32 first (exact, so the result is what a GPU's fp32-accumulating dot gives).
# Triton chose between compiling and interpreting the kernels below when they were jitted.
_INTERPRETED = interpreting()
_WIDEN_BF16_DOT = tl.constexpr(_INTERPRETED)


@triton.jit
def _dot(a, b, precision: tl.constexpr):
    if _WIDEN_BF16_DOT:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=precision)


@triton.jit
def _headwise_split_kernel(
        q_ptr, rk_ptr, rv_ptr, sk_ptr, sv_ptr, past_mask_ptr, lengths_ptr, window_pos_ptr, position_ptr,
        part_acc_ptr, part_ml_ptr,
        stride_qb, stride_qh, stride_rb, stride_rh, stride_rt, stride_sb, stride_sh, stride_st,
        stride_mb, stride_wb,
        R, G, C, W, sink, recent, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    split = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    num_splits = tl.num_programs(0)
    heads = tl.num_programs(1) * G
    rows = tl.arange(0, BLOCK_G)
    cols = tl.arange(0, HEAD_DIM)
    row_ok = rows < G
    # fp32 inputs would otherwise run tl.dot in TF32 on the GPU
    precision: tl.constexpr = "ieee" if q_ptr.dtype.element_ty == tl.float32 else "tf32"

    retrieval = kvh < R
    streaming = kvh >= R
    # Pointers differ per part; sizes and strides are selected with tl.where (an int argument
    # equal to 1 is specialized to a constant, which an if/else could not merge with a tensor).
    # The launcher hands 16-byte aligned caches with strides in multiples of 16 elements; the
    # hints say so to AOT builds (whose signature carries no alignment) so tiles load as vectors.
    if retrieval:
        k_base = tl.multiple_of(rk_ptr + b * stride_rb + kvh * stride_rh, 16)
        v_base = tl.multiple_of(rv_ptr + b * stride_rb + kvh * stride_rh, 16)
    else:
        k_base = tl.multiple_of(sk_ptr + b * stride_sb + (kvh - R) * stride_sh, 16)
        v_base = tl.multiple_of(sv_ptr + b * stride_sb + (kvh - R) * stride_sh, 16)
    stride_t = tl.multiple_of(tl.where(retrieval, stride_rt, stride_st), 16)
    # a missing part's lengths / position is a one-element dummy: read its element 0 (not a
    # masked scalar load, which the interpreter returns as a [1] block)
    n = tl.where(retrieval, tl.minimum(tl.load(lengths_ptr + tl.where(retrieval, b, 0)), C), W)
    p = tl.load(position_ptr + tl.where(streaming, b, 0))
    per_split = tl.cdiv(tl.cdiv(n, num_splits), BLOCK_N) * BLOCK_N
    lo = split * per_split
    hi = tl.minimum(lo + per_split, n)
    # a split past the end (a short head, or more splits than tiles) reads and writes nothing
    # but its (max = -inf, sum = 0), which the reduce weighs 0 without reading its acc
    q = tl.load(q_ptr + b * stride_qb + (kvh * G + rows)[:, None] * stride_qh + cols[None, :],
                mask=row_ok[:, None] & (lo < hi), other=0.0)

    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
    for start in range(lo, hi, BLOCK_N):
        offs = start + tl.arange(0, BLOCK_N)
        in_range = offs < hi
        filled = tl.load(past_mask_ptr + b * stride_mb + offs, mask=in_range & retrieval, other=0)
        slot_pos = tl.load(window_pos_ptr + b * stride_wb + offs, mask=in_range & streaming, other=-1)
        in_window = (slot_pos >= 0) & ((slot_pos < sink) | (p - slot_pos <= recent))
        seen = in_range & tl.where(retrieval, filled != 0, in_window)
        k = tl.load(k_base + offs[None, :] * stride_t + cols[:, None], mask=in_range[None, :], other=0.0)
        s = _dot(q, k, precision) * qk_scale
        s = tl.where(seen[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key seen yet: keep exp2 finite
        alpha = tl.exp2(m - m_safe)
        probs = tl.exp2(s - m_safe[:, None])
        l = l * alpha + tl.sum(probs, 1)
        v = tl.load(v_base + offs[:, None] * stride_t + cols[None, :], mask=in_range[:, None], other=0.0)
        acc = acc * alpha[:, None] + _dot(probs.to(v.dtype), v, precision)
        m = m_new

    part = (b * heads + kvh * G + rows) * num_splits + split  # [BLOCK_G] partial index
    tl.store(part_ml_ptr + part * 2, m, mask=row_ok)
    tl.store(part_ml_ptr + part * 2 + 1, l, mask=row_ok)
    seen_any = row_ok & (m > float("-inf"))
    tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + cols[None, :], acc, mask=seen_any[:, None])


@triton.jit
def _headwise_reduce_kernel(
        q_ptr, k_new_ptr, v_new_ptr, part_acc_ptr, part_ml_ptr, out_ptr,
        stride_qb, stride_qh, stride_nb, stride_nh, stride_ob, stride_oh,
        G, num_splits, qk_scale,
        HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr):
    h = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    heads = tl.num_programs(0)
    kvh = h // G
    cols = tl.arange(0, HEAD_DIM)
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + cols).to(tl.float32)
    k = tl.load(k_new_ptr + b * stride_nb + kvh * stride_nh + cols).to(tl.float32)
    v = tl.load(v_new_ptr + b * stride_nb + kvh * stride_nh + cols).to(tl.float32)
    s_new = tl.sum(q * k, 0) * qk_scale

    splits = tl.arange(0, BLOCK_S)
    ok = splits < num_splits
    part = (b * heads + h) * num_splits + splits
    m = tl.load(part_ml_ptr + part * 2, mask=ok, other=float("-inf"))
    l = tl.load(part_ml_ptr + part * 2 + 1, mask=ok, other=0.0)
    seen_any = ok & (m > float("-inf"))  # the split wrote its acc
    acc = tl.load(part_acc_ptr + part[:, None] * HEAD_DIM + cols[None, :], mask=seen_any[:, None], other=0.0)
    top = tl.maximum(tl.max(m, 0), s_new)  # finite: the new token is always seen
    weight = tl.exp2(m - top)  # 0 for empty splits (m = -inf)
    w_new = tl.exp2(s_new - top)
    total = tl.sum(l * weight, 0) + w_new
    out = (tl.sum(acc * weight[:, None], 0) + v * w_new) / total
    tl.store(out_ptr + b * stride_ob + h * stride_oh + cols, out.to(out_ptr.dtype.element_ty))


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def tile_config(device: torch.device, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK_N keys per tile, pipeline stages): 64 keys and 3 stages on a GPU (32 keys and 2
    stages for fp32, whose tiles are twice the bytes); 32 keys under the interpreter, so small
    test caches still span several tiles."""
    if device.type == "cpu":
        return 32, 1
    return (32, 2) if dtype == torch.float32 else (64, 3)


def choose_splits(longest: int, heads: int, device: torch.device, block_n: int) -> int:
    """How many chunks each head's keys are split into. On a GPU: enough programs over the
    `heads` (batch x kv heads of the longest part) to fill every SM about twice, but no split
    shorter than MIN_SPLIT_TILES tiles and at most MAX_SPLITS; on CPU a fixed small number."""
    tiles = max(1, math.ceil(longest / block_n))
    if device.type == "cpu":
        return min(INTERPRETER_SPLITS, tiles)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = math.ceil(2 * sms / max(heads, 1))
    return max(1, min(want, math.ceil(tiles / MIN_SPLIT_TILES), MAX_SPLITS))


@contextlib.contextmanager
def _interpreter_scalar_index():
    """While kernels run under Triton 3.6's interpreter, make a scalar usable as a loop bound.

    The interpreter holds scalars as NumPy arrays of shape [1] and turns them into Python ints
    with int(array), which NumPy >= 2.4 refuses (triton-lang/triton#9171), so `range(lo, hi)`
    over runtime values fails. This wraps the interpreter's per-launch patching of tl.tensor to
    read the one element instead; the wrapper is removed on exit. Outside the interpreter it
    does nothing."""
    if not interpreting():
        yield
        return
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor

    def patch(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interpreter._patch_lang_tensor = patch
    try:
        yield
    finally:
        interpreter._patch_lang_tensor = original


def _rows_contiguous(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors with unit stride in the last dim and equal strides across the group (key and
    value share the kernels' stride arguments); copies only when needed."""
    if all(t.stride(-1) == 1 and t.stride() == tensors[0].stride() for t in tensors):
        return list(tensors)
    return [t.contiguous() for t in tensors]


def _cache_layout(key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value caches as the split kernel's alignment hints promise them: equal strides,
    unit stride in the last dim, the others multiples of 16 elements, data 16-byte aligned.
    A contiguous cache with a power-of-two head dim >= 16 already is; anything else is copied."""
    def fits(t: torch.Tensor) -> bool:
        return (t.stride(-1) == 1 and all(st % 16 == 0 for st in t.stride()[:-1])
                and t.data_ptr() % 16 == 0 and t.stride() == key.stride())

    if fits(key) and fits(value):
        return key, value
    return tuple(t.clone(memory_format=torch.contiguous_format) for t in (key, value))


def _check_devices(q: torch.Tensor, tensors: dict[str, torch.Tensor | None], caches: tuple) -> None:
    """RuntimeError for CPU tensors without the interpreter; ValueError for a tensor on another
    device, a cache of another dtype, or an unsupported dtype or head dim."""
    check_runs_here("headwise_decode_attention", q, _INTERPRETED)
    if q.dtype not in DTYPES:
        raise ValueError(f"headwise decode: q must be float16, bfloat16 or float32, got {q.dtype}")
    d = q.shape[-1]
    if d < 16 or d & (d - 1):
        raise ValueError(f"headwise decode: head dim must be a power of two >= 16, got {d}")
    for name, t in tensors.items():
        if t is not None and t.device != q.device:
            raise ValueError(f"headwise decode: {name} is on {t.device}, q on {q.device}")
    if any(t is not None and t.dtype != q.dtype for t in caches):
        raise ValueError("headwise decode: k_new, v_new and the caches must have q's dtype")


def _operands(shape: HeadwiseShape, q: torch.Tensor, t: dict) -> tuple[dict, int]:
    """The kernels' tensor arguments (t: the launcher's tensors by name), laid out as they
    assume (_cache_layout, _rows_contiguous), a missing part's replaced by never-read
    stand-ins; and the longest retrieval length."""
    device, batch = q.device, shape.batch
    ops = dict(q=_rows_contiguous(q)[0], **dict(zip(("k_new", "v_new"), _rows_contiguous(t["k_new"], t["v_new"]))))
    dummy = torch.zeros(1, dtype=torch.int64, device=device)
    longest = 0
    if shape.retrieval:
        ops["retrieval_key"], ops["retrieval_value"] = _cache_layout(t["retrieval_key"], t["retrieval_value"])
        ops["past_mask"] = _rows_contiguous(t["past_mask"])[0]
        if t["lengths"] is None:
            ops["lengths"] = torch.full((batch,), shape.capacity, dtype=torch.int32, device=device)
            longest = shape.capacity
        else:
            ops["lengths"] = t["lengths"].to(torch.int32)
            longest = max(0, min(int(t["lengths"].max()), shape.capacity))
    else:  # R == 0: never read; any pointers of the right types
        ops.update(retrieval_key=q, retrieval_value=q, past_mask=dummy, lengths=dummy.to(torch.int32))
    if shape.streaming:
        ops["streaming_key"], ops["streaming_value"] = _cache_layout(t["streaming_key"], t["streaming_value"])
        ops["window_positions"] = _rows_contiguous(t["window_positions"])[0]
        ops["position"] = t["position"]
    else:
        ops.update(streaming_key=q, streaming_value=q, window_positions=dummy, position=dummy)
    return ops, longest


def headwise_decode_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, *,
                              retrieval_key: torch.Tensor | None = None,
                              retrieval_value: torch.Tensor | None = None,
                              past_mask: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                              streaming_key: torch.Tensor | None = None,
                              streaming_value: torch.Tensor | None = None,
                              window_positions: torch.Tensor | None = None, position: torch.Tensor | None = None,
                              sink: int = 0, recent: int = 0, scale: float | None = None,
                              num_splits: int | None = None) -> torch.Tensor:
    """headwise_decode_reference (models/headwise_decode.py) as two Triton launches; returns
    [B, H, d] in q's dtype (fp16, bf16 or fp32; head dim a power of two >= 16).

    lengths [B] lets the kernel skip retrieval slots >= lengths[b] (None: it reads all C slots,
    past_mask masks the empty ones); given, its max is read on the host (one sync) to size the
    splits. num_splits None: chosen from the longest part and the SM count (choose_splits).
    CUDA tensors run on the GPU; CPU tensors need TRITON_INTERPRET=1 set before this module was
    imported. Caches that are not 16-byte aligned with strides in multiples of 16 elements are
    copied first (contiguous caches never are). Masked slots below lengths are loaded and
    weighted 0, so they must hold finite values (the runtime's zeros or stale tokens do).
    """
    shape = headwise_shape(q, k_new, v_new, retrieval_key=retrieval_key, retrieval_value=retrieval_value,
                           past_mask=past_mask, lengths=lengths, streaming_key=streaming_key,
                           streaming_value=streaming_value, window_positions=window_positions, position=position)
    named = dict(k_new=k_new, v_new=v_new, retrieval_key=retrieval_key, retrieval_value=retrieval_value,
                 past_mask=past_mask, lengths=lengths, streaming_key=streaming_key, streaming_value=streaming_value,
                 window_positions=window_positions, position=position)
    _check_devices(q, named, (k_new, v_new, retrieval_key, retrieval_value, streaming_key, streaming_value))
    ops, longest = _operands(shape, q, named)
    batch, device, r, s = shape.batch, q.device, shape.retrieval, shape.streaming
    block_n, stages = tile_config(device, q.dtype)
    if num_splits is None:
        num_splits = choose_splits(max(longest, shape.window), batch * (r or s), device, block_n)
    if not 1 <= num_splits <= MAX_SPLITS:
        raise ValueError(f"headwise decode: num_splits must lie in [1, {MAX_SPLITS}], got {num_splits}")
    heads, d = shape.heads, shape.head_dim
    part_acc = torch.empty((batch, heads, num_splits, d), dtype=torch.float32, device=device)
    part_ml = torch.empty((batch, heads, num_splits, 2), dtype=torch.float32, device=device)
    out = torch.empty((batch, heads, d), dtype=q.dtype, device=device)
    qk_scale = (d**-0.5 if scale is None else float(scale)) * LOG2E
    q, k_new, v_new = ops["q"], ops["k_new"], ops["v_new"]
    with _interpreter_scalar_index():
        _headwise_split_kernel[(num_splits, shape.kv, batch)](
            q, ops["retrieval_key"], ops["retrieval_value"], ops["streaming_key"], ops["streaming_value"],
            ops["past_mask"], ops["lengths"], ops["window_positions"], ops["position"], part_acc, part_ml,
            q.stride(0), q.stride(1), *(ops["retrieval_key"].stride()[:3] if r else (0, 0, 0)),
            *(ops["streaming_key"].stride()[:3] if s else (0, 0, 0)), ops["past_mask"].stride(0),
            ops["window_positions"].stride(0), r, shape.group, shape.capacity, shape.window, sink, recent, qk_scale,
            HEAD_DIM=d, BLOCK_G=max(BLOCK_G_MIN, _next_pow2(shape.group)), BLOCK_N=block_n, num_stages=stages)
        _headwise_reduce_kernel[(heads, batch)](
            q, k_new, v_new, part_acc, part_ml, out,
            q.stride(0), q.stride(1), k_new.stride(0), k_new.stride(1), out.stride(0), out.stride(1),
            shape.group, num_splits, qk_scale,
            HEAD_DIM=d, BLOCK_S=max(2, _next_pow2(num_splits)))
    return out


def aot_builds() -> list[AotBuild]:
    """Both kernels for fp16 and bf16 at head dim 64 and 128 (BLOCK_G 16: up to 16 query heads
    per kv head; BLOCK_N 64; reduce over at most MAX_SPLITS splits)."""
    builds = []
    for dtype in ("fp16", "bf16"):
        for d in (64, 128):
            split_sig = {name: f"*{dtype}" for name in ("q_ptr", "rk_ptr", "rv_ptr", "sk_ptr", "sv_ptr")}
            split_sig |= {"past_mask_ptr": "*i64", "lengths_ptr": "*i32", "window_pos_ptr": "*i64",
                          "position_ptr": "*i64", "part_acc_ptr": "*fp32", "part_ml_ptr": "*fp32"}
            split_sig |= {name: "i32" for name in (
                "stride_qb", "stride_qh", "stride_rb", "stride_rh", "stride_rt", "stride_sb", "stride_sh",
                "stride_st", "stride_mb", "stride_wb", "R", "G", "C", "W", "sink", "recent")}
            split_sig |= {"qk_scale": "fp32", "HEAD_DIM": "constexpr", "BLOCK_G": "constexpr",
                          "BLOCK_N": "constexpr"}
            builds.append(AotBuild(f"headwise_decode_split_{dtype}_d{d}", _headwise_split_kernel, split_sig,
                                   {"HEAD_DIM": d, "BLOCK_G": BLOCK_G_MIN, "BLOCK_N": 64}))
            reduce_sig = {"q_ptr": f"*{dtype}", "k_new_ptr": f"*{dtype}", "v_new_ptr": f"*{dtype}",
                          "part_acc_ptr": "*fp32", "part_ml_ptr": "*fp32", "out_ptr": f"*{dtype}"}
            reduce_sig |= {name: "i32" for name in (
                "stride_qb", "stride_qh", "stride_nb", "stride_nh", "stride_ob", "stride_oh", "G", "num_splits")}
            reduce_sig |= {"qk_scale": "fp32", "HEAD_DIM": "constexpr", "BLOCK_S": "constexpr"}
            builds.append(AotBuild(f"headwise_decode_reduce_{dtype}_d{d}", _headwise_reduce_kernel, reduce_sig,
                                   {"HEAD_DIM": d, "BLOCK_S": MAX_SPLITS}))
    return builds
