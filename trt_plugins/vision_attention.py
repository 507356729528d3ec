"""Triton kernels for the vision attention ops: SHViT's single-head attention and EfficientViT's
cascaded group attention, each one launch (models/ops.py holds the torch references).

single_head_attention: one program per (image, block of query tokens). It takes the GroupNorm
statistics of the image's partial channels, normalises tokens as it loads them, projects them
to q, k and v with the 1x1 conv (tl.dot) and runs a streaming softmax over the key blocks;
the pass-through channels are copied by the same program.

cascaded_group_attention: one program per window, looping over the heads in order (head i
reads head i-1's output, kept in registers). Windows are small (7x7 = 49 tokens or 4x4), so a
head's q, k, v [dim, tokens] are whole tiles. The depthwise conv on q needs q at shifted
token positions, which registers cannot give: q goes through a torch-allocated workspace
(one slot per window and head) and is re-read shifted after a barrier.

Window geometry, head counts and channel counts are constexprs: every layer of a model is its
own specialisation, as its TensorRT plugin's ahead-of-time build is. Dots take fp16/bf16
operands (fp32 accumulation); fp32 inputs get IEEE fp32 dots, not TF32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from edgert.models.vision_configs import PATCH_SIZE, VARIANTS
from edgert.trt_plugins.triton_support import AotBuild, check_runs_here, interpreting

# Triton chose between compiling and interpreting the kernels below when they were jitted.
_INTERPRETED = interpreting()
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_RADIUS_BITS = 4  # cascaded_group_attention packs each head's kernel radius into 4 bits of one constexpr
MAX_WINDOW_TOKENS = 64  # cascaded_group_attention holds a window's [tokens, tokens] scores in registers


def _block(n: int) -> int:
    """A tile size for `n` values: a power of two, at least 16 (tl.dot's smallest operand)."""
    return max(16, triton.next_power_of_2(n))


# Triton 3.6's interpreter multiplies bf16 blocks as their uint16 storage; there, bf16 dot
# operands are widened to fp32 first (exact, so the result is what a GPU's fp32-accumulating dot gives).
_WIDEN_BF16_DOT = tl.constexpr(_INTERPRETED)


@triton.jit
def _operand(t, dtype: tl.constexpr):
    # t as a dot operand of a kernel whose tensors are `dtype`
    if _WIDEN_BF16_DOT:
        if dtype == tl.bfloat16:
            return t.to(tl.float32)
    return t.to(dtype)


@triton.jit
def _single_head_attention_kernel(x_ptr, norm_w_ptr, norm_b_ptr, w_ptr, b_ptr, out_ptr, scale, eps,
                                  C: tl.constexpr, N: tl.constexpr, PDIM: tl.constexpr, QK: tl.constexpr,
                                  P_BLOCK: tl.constexpr, QK_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr,
                                  BLOCK_N: tl.constexpr, REST_BLOCK: tl.constexpr):
    # x, out: [B, C, N]; norm_w, norm_b: [PDIM]; w: [2 * QK + PDIM, PDIM]; b: [2 * QK + PDIM].
    dtype = x_ptr.dtype.element_ty
    image = tl.program_id(0).to(tl.int64)
    x_ptr += image * C * N
    out_ptr += image * C * N
    ch = tl.arange(0, P_BLOCK)
    ch_mask = ch < PDIM
    cols = tl.arange(0, BLOCK_N)

    # GroupNorm with one group: mean, then variance about it (no E[x^2] - mean^2 cancellation).
    total = tl.zeros([P_BLOCK, BLOCK_N], tl.float32)
    for start in range(0, N, BLOCK_N):
        mask = ch_mask[:, None] & (start + cols < N)[None, :]
        total += tl.load(x_ptr + ch[:, None] * N + start + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(tl.sum(total, axis=1), axis=0) / (PDIM * N)
    total = tl.zeros([P_BLOCK, BLOCK_N], tl.float32)
    for start in range(0, N, BLOCK_N):
        mask = ch_mask[:, None] & (start + cols < N)[None, :]
        t = tl.load(x_ptr + ch[:, None] * N + start + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        centred = tl.where(mask, t - mean, 0.0)
        total += centred * centred
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(total, axis=1), axis=0) / (PDIM * N) + eps)
    # normalised x = x * gain + shift, per channel (0 on padded channels)
    gain = tl.load(norm_w_ptr + ch, mask=ch_mask, other=0.0).to(tl.float32) * rstd
    shift = tl.load(norm_b_ptr + ch, mask=ch_mask, other=0.0).to(tl.float32) - mean * gain

    # The 1x1 conv's rows: q, k ([QK_BLOCK, P_BLOCK]) and v ([P_BLOCK, P_BLOCK]).
    qk_rows = tl.arange(0, QK_BLOCK)
    qk_mask = (qk_rows < QK)[:, None] & ch_mask[None, :]
    w_q = _operand(tl.load(w_ptr + qk_rows[:, None] * PDIM + ch[None, :], mask=qk_mask, other=0.0), dtype)
    w_k = _operand(tl.load(w_ptr + (QK + qk_rows[:, None]) * PDIM + ch[None, :], mask=qk_mask, other=0.0), dtype)
    w_v = _operand(tl.load(w_ptr + (2 * QK + ch[:, None]) * PDIM + ch[None, :],
                           mask=ch_mask[:, None] & ch_mask[None, :], other=0.0), dtype)
    b_q = tl.load(b_ptr + qk_rows, mask=qk_rows < QK, other=0.0).to(tl.float32)
    b_k = tl.load(b_ptr + QK + qk_rows, mask=qk_rows < QK, other=0.0).to(tl.float32)
    b_v = tl.load(b_ptr + 2 * QK + ch, mask=ch_mask, other=0.0).to(tl.float32)

    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    xq = tl.load(x_ptr + ch[:, None] * N + rows[None, :], mask=ch_mask[:, None] & row_mask[None, :], other=0.0)
    xq = _operand(xq.to(tl.float32) * gain[:, None] + shift[:, None], dtype)
    q = tl.dot(w_q, xq, input_precision="ieee") + b_q[:, None]  # [QK_BLOCK, BLOCK_M]
    q = _operand(tl.trans(q * (scale * 1.4426950408889634)), dtype)  # log2(e): exp2 below

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    denom = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, P_BLOCK], tl.float32)
    for start in range(0, N, BLOCK_N):
        key_mask = start + cols < N
        xk = tl.load(x_ptr + ch[:, None] * N + start + cols[None, :], mask=ch_mask[:, None] & key_mask[None, :],
                     other=0.0)
        xk = _operand(xk.to(tl.float32) * gain[:, None] + shift[:, None], dtype)
        k = _operand(tl.dot(w_k, xk, input_precision="ieee") + b_k[:, None], dtype)  # [QK_BLOCK, BLOCK_N]
        v = _operand(tl.dot(w_v, xk, input_precision="ieee") + b_v[:, None], dtype)  # [P_BLOCK, BLOCK_N]
        s = tl.dot(q, k, input_precision="ieee")  # [BLOCK_M, BLOCK_N], log2 units
        s = tl.where(key_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        denom = denom * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(_operand(p, dtype), tl.trans(v), input_precision="ieee")
        m = m_new
    acc = acc / denom[:, None]
    tl.store(out_ptr + ch[None, :] * N + rows[:, None], acc.to(dtype), mask=ch_mask[None, :] & row_mask[:, None])

    # The channels attention leaves alone, for this program's tokens.
    rest = tl.arange(0, REST_BLOCK)
    for start in range(PDIM, C, REST_BLOCK):
        offs = (start + rest)[:, None] * N + rows[None, :]
        mask = (start + rest < C)[:, None] & row_mask[None, :]
        tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=mask), mask=mask)


def _check_inputs(name: str, tensors: dict[str, tuple[torch.Tensor, tuple[int, ...]]]) -> None:
    """Raise unless `tensors` (name: (tensor, expected shape)) have their shapes and share one
    float dtype and one device that Triton runs on here."""
    first = next(iter(tensors.values()))[0]
    check_runs_here(name, first, _INTERPRETED)
    if first.dtype not in _DTYPES:
        raise TypeError(f"{name} takes float32, float16 or bfloat16 tensors, not {first.dtype}")
    for arg, (t, shape) in tensors.items():
        if t.device != first.device or t.dtype != first.dtype:
            raise ValueError(f"{name}: {arg} is {t.dtype} on {t.device}, the input is {first.dtype} on {first.device}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name}: {arg} has shape {list(t.shape)}, expected {list(shape)}")


def _sha_config(channels: int, tokens: int, partial_dim: int, qk_dim: int) -> dict:
    """single_head_attention's constexprs and launch parameters for one layer shape (not the dtype)."""
    p_block = _block(partial_dim)
    block = min(64, _block(tokens))
    return dict(C=channels, N=tokens, PDIM=partial_dim, QK=qk_dim, P_BLOCK=p_block, QK_BLOCK=_block(qk_dim),
                BLOCK_M=block, BLOCK_N=block, REST_BLOCK=64, num_warps=8 if p_block > 64 else 4)


def single_head_attention(x: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                          qkv_weight: torch.Tensor, qkv_bias: torch.Tensor, partial_dim: int, qk_dim: int,
                          scale: float, eps: float) -> torch.Tensor:
    """single_head_attention_reference (models/ops.py) in one Triton launch: x [B, C, H, W] ->
    [B, C, H, W]; qkv_weight [2 * qk_dim + partial_dim, partial_dim, 1, 1]."""
    B, C, H, W = x.shape
    if not 0 < partial_dim <= C or qk_dim <= 0:
        raise ValueError(f"single_head_attention: partial_dim {partial_dim} and qk_dim {qk_dim} do not fit x "
                         f"{list(x.shape)}")
    rows = 2 * qk_dim + partial_dim
    _check_inputs("single_head_attention", dict(x=(x, (B, C, H, W)), norm_weight=(norm_weight, (partial_dim,)),
                                                norm_bias=(norm_bias, (partial_dim,)),
                                                qkv_weight=(qkv_weight, (rows, partial_dim, 1, 1)),
                                                qkv_bias=(qkv_bias, (rows,))))
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    config = _sha_config(C, H * W, partial_dim, qk_dim)
    grid = (B, triton.cdiv(H * W, config["BLOCK_M"]))
    _single_head_attention_kernel[grid](x, norm_weight.contiguous(), norm_bias.contiguous(), qkv_weight.contiguous(),
                                        qkv_bias.contiguous(), out, float(scale), float(eps), **config)
    return out


@triton.jit
def _depthwise(ws, dw_ptr, ty, tx, kd_mask, tok_mask, H: tl.constexpr, W: tl.constexpr, K: tl.constexpr,
               R: tl.constexpr, KD_BLOCK: tl.constexpr, N_BLOCK: tl.constexpr):
    # ws: rows of q [KD_BLOCK] (pointers to token 0 of each row); dw_ptr: each row's K x K weight.
    # Returns the (2R+1) x (2R+1) depthwise conv of q, zero-padded: [KD_BLOCK, N_BLOCK] fp32.
    qc = tl.zeros([KD_BLOCK, N_BLOCK], tl.float32)
    # Rows in a loop, taps within a row unrolled: independent loads in flight without the compile
    # time (and registers) of unrolling all (2R+1)^2 taps of every head.
    for dy in range(-R, R + 1):
        sy = ty + dy
        row_inside = tok_mask & (sy >= 0) & (sy < H)
        for dx in tl.static_range(-R, R + 1):
            sx = tx + dx
            inside = row_inside & (sx >= 0) & (sx < W)
            shifted = tl.load(ws + (sy * W + sx)[None, :], mask=kd_mask[:, None] & inside[None, :], other=0.0)
            tap = tl.load(dw_ptr + (K // 2 + dy) * K + K // 2 + dx, mask=kd_mask, other=0.0)
            qc += tap.to(tl.float32)[:, None] * shifted
    return qc


@triton.jit
def _cascaded_group_attention_kernel(x_ptr, w_ptr, wb_ptr, dw_ptr, dwb_ptr, bias_ptr, q_ws_ptr, out_ptr, scale,
                                     HEADS: tl.constexpr, KD: tl.constexpr, VD: tl.constexpr, H: tl.constexpr,
                                     W: tl.constexpr, K: tl.constexpr, RADII: tl.constexpr, KD_BLOCK: tl.constexpr,
                                     VD_BLOCK: tl.constexpr, N_BLOCK: tl.constexpr):
    # x, out: [B, HEADS * VD, H, W]; w: [HEADS, 2 * KD + VD, VD]; wb: [HEADS, 2 * KD + VD];
    # dw: [HEADS, KD, K, K]; dwb: [HEADS, KD]; bias: [HEADS, N, N]; q_ws: [B, HEADS, KD, N] fp32.
    N: tl.constexpr = H * W
    dtype = x_ptr.dtype.element_ty
    window = tl.program_id(0).to(tl.int64)
    x_ptr += window * HEADS * VD * N
    out_ptr += window * HEADS * VD * N
    q_ws_ptr += window * HEADS * KD * N
    tok = tl.arange(0, N_BLOCK)
    tok_mask = tok < N
    ty, tx = tok // W, tok % W
    kd = tl.arange(0, KD_BLOCK)
    kd_mask = kd < KD
    vd = tl.arange(0, VD_BLOCK)
    vd_mask = vd < VD
    feat_mask = vd_mask[:, None] & tok_mask[None, :]
    qk_w_mask = kd_mask[:, None] & vd_mask[None, :]
    prev = tl.zeros([VD_BLOCK, N_BLOCK], tl.float32)  # head i-1's output, as stored

    for i in tl.static_range(HEADS):
        feat = tl.load(x_ptr + (i * VD + vd[:, None]) * N + tok[None, :], mask=feat_mask, other=0.0).to(tl.float32)
        feat = _operand(feat + prev, dtype)
        w_i = w_ptr + i * (2 * KD + VD) * VD
        b_i = wb_ptr + i * (2 * KD + VD)
        w_q = tl.load(w_i + kd[:, None] * VD + vd[None, :], mask=qk_w_mask, other=0.0)
        w_k = tl.load(w_i + (KD + kd[:, None]) * VD + vd[None, :], mask=qk_w_mask, other=0.0)
        w_v = tl.load(w_i + (2 * KD + vd[:, None]) * VD + vd[None, :], mask=vd_mask[:, None] & vd_mask[None, :],
                      other=0.0)
        q = tl.dot(_operand(w_q, dtype), feat, input_precision="ieee")  # [KD_BLOCK, N_BLOCK]
        q += tl.load(b_i + kd, mask=kd_mask, other=0.0).to(tl.float32)[:, None]
        k = tl.dot(_operand(w_k, dtype), feat, input_precision="ieee")
        k += tl.load(b_i + KD + kd, mask=kd_mask, other=0.0).to(tl.float32)[:, None]
        v = tl.dot(_operand(w_v, dtype), feat, input_precision="ieee")  # [VD_BLOCK, N_BLOCK]
        v += tl.load(b_i + 2 * KD + vd, mask=vd_mask, other=0.0).to(tl.float32)[:, None]

        # Depthwise conv on q: store it, then re-read it shifted by each tap (zero outside the window).
        ws = q_ws_ptr + i * KD * N + kd[:, None] * N
        tl.store(ws + tok[None, :], q, mask=kd_mask[:, None] & tok_mask[None, :])
        tl.debug_barrier()
        # this head's kernel: (2R+1) x (2R+1), R in 4 bits a head (_RADIUS_BITS), centred in the K x K weight
        qc = _depthwise(ws, dw_ptr + i * KD * K * K + kd * K * K, ty, tx, kd_mask, tok_mask, H, W, K,
                        (RADII >> (4 * i)) & 15, KD_BLOCK, N_BLOCK)
        qc = (qc + tl.load(dwb_ptr + i * KD + kd, mask=kd_mask, other=0.0).to(tl.float32)[:, None]) * scale

        s = tl.dot(_operand(tl.trans(qc), dtype), _operand(k, dtype), input_precision="ieee")
        s += tl.load(bias_ptr + i * N * N + tok[:, None] * N + tok[None, :],
                     mask=tok_mask[:, None] & tok_mask[None, :], other=0.0).to(tl.float32)
        s = tl.where(tok_mask[None, :], s, float("-inf"))  # [queries, keys]
        p = tl.exp(s - tl.max(s, axis=1)[:, None])
        p = p / tl.sum(p, axis=1)[:, None]
        o = tl.dot(_operand(v, dtype), _operand(tl.trans(p), dtype), input_precision="ieee")
        o = o.to(dtype)  # [VD_BLOCK, N_BLOCK]
        tl.store(out_ptr + (i * VD + vd[:, None]) * N + tok[None, :], o, mask=feat_mask)
        prev = tl.where(feat_mask, o.to(tl.float32), 0.0)


def _pack_radii(kernels: list[int]) -> int:
    """The heads' kernel radii (kernel // 2), 4 bits each, head 0 lowest."""
    packed = 0
    for i, kernel in enumerate(kernels):
        packed |= (kernel // 2) << (_RADIUS_BITS * i)
    return packed


def _cga_config(heads: int, key_dim: int, value_dim: int, height: int, width: int, largest: int,
                kernels: list[int]) -> dict:
    """cascaded_group_attention's constexprs and launch parameters for one layer shape (not the dtype)."""
    return dict(HEADS=heads, KD=key_dim, VD=value_dim, H=height, W=width, K=largest, RADII=_pack_radii(kernels),
                KD_BLOCK=_block(key_dim), VD_BLOCK=_block(value_dim), N_BLOCK=_block(height * width),
                # 4 warps spill registers on 7x7 windows (ptxas, sm_90)
                num_warps=8 if height * width > 32 else 4)


def cascaded_group_attention(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor,
                             dw_weight: torch.Tensor, dw_bias: torch.Tensor, bias: torch.Tensor, num_heads: int,
                             key_dim: int, kernels: list[int], scale: float) -> torch.Tensor:
    """cascaded_group_attention_reference (models/ops.py) in one Triton launch: windows x [B, C, H, W]
    -> [B, num_heads * value_dim, H, W], value_dim = C / num_heads (head i-1's output joins chunk i)."""
    B, C, H, W = x.shape
    value_dim = qkv_weight.shape[1] - 2 * key_dim
    largest = dw_weight.shape[-1]
    if num_heads <= 0 or key_dim <= 0 or value_dim * num_heads != C:
        raise ValueError(f"cascaded_group_attention: qkv_weight {list(qkv_weight.shape)} does not fit {num_heads} "
                         f"heads of key_dim {key_dim} over x {list(x.shape)} (each head's value_dim must be C / heads)")
    if H * W > MAX_WINDOW_TOKENS:
        raise ValueError(f"cascaded_group_attention: windows of {H}x{W} tokens; the kernel takes up to "
                         f"{MAX_WINDOW_TOKENS} (EfficientViT's are 7x7 at most)")
    rows, tokens = 2 * key_dim + value_dim, H * W
    _check_inputs("cascaded_group_attention", dict(
        x=(x, (B, C, H, W)), qkv_weight=(qkv_weight, (num_heads, rows, value_dim, 1, 1)),
        qkv_bias=(qkv_bias, (num_heads, rows)), dw_weight=(dw_weight, (num_heads, key_dim, 1, largest, largest)),
        dw_bias=(dw_bias, (num_heads, key_dim)), bias=(bias, (num_heads, tokens, tokens))))
    if (len(kernels) < num_heads or any(k % 2 == 0 or not 0 < k <= largest for k in kernels[:num_heads])
            or largest % 2 == 0 or largest // 2 >= 1 << _RADIUS_BITS):
        raise ValueError(f"cascaded_group_attention: kernels {list(kernels)} must give each of {num_heads} heads an "
                         f"odd size up to the depthwise weight's {largest} (itself odd, below {2 << _RADIUS_BITS})")
    x = x.contiguous()
    out = x.new_empty(B, num_heads * value_dim, H, W)
    if B == 0:
        return out
    q_workspace = torch.empty(B, num_heads, key_dim, H * W, dtype=torch.float32, device=x.device)
    config = _cga_config(num_heads, key_dim, value_dim, H, W, largest, kernels[:num_heads])
    _cascaded_group_attention_kernel[(B,)](x, qkv_weight.contiguous(), qkv_bias.contiguous(), dw_weight.contiguous(),
                                           dw_bias.contiguous(), bias.contiguous(), q_workspace, out, float(scale),
                                           **config)
    return out


def model_shapes(name: str) -> list[tuple[str, dict]]:
    """Every distinct attention layer shape of variant `name` at its own image size, as
    ("cga"|"sha", shape) with the shape as example_inputs takes it."""
    config = VARIANTS[name]
    resolution, shapes = config.img_size // PATCH_SIZE, []
    for i, dim in enumerate(config.embed_dim):
        if i:
            resolution = (resolution - 1) // 2 + 1  # PatchMerging: a stride-2 3x3 conv
        if config.family == "efficientvit":
            window = min(config.window_size[i], resolution)
            heads = config.num_heads[i]
            shape = ("cga", dict(channels=dim, heads=heads, key_dim=config.key_dim[i], window=window,
                                 kernels=list(config.kernels[:heads]),
                                 windows_per_image=((resolution + window - 1) // window) ** 2))
        elif config.types[i] == "s":
            shape = ("sha", dict(channels=dim, partial_dim=config.partial_dim[i], qk_dim=config.key_dim[i],
                                 size=resolution))
        else:
            continue
        if shape not in shapes:
            shapes.append(shape)
    return shapes


def example_inputs(kind: str, shape: dict, batch: int, *, dtype: torch.dtype = torch.float32,
                   device: str | torch.device = "cpu", seed: int = 0) -> tuple:
    """Random positional arguments of cascaded_group_attention ("cga") or single_head_attention
    ("sha") for one layer `shape` (model_shapes' form; a "cga" window may also be (height, width))
    and `batch` images, scaled so that activations are of order one. The depthwise weights are
    random over the whole largest kernel, so a head that does not crop its own shows it."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*size, scale=1.0, offset=0.0):
        return (torch.randn(*size, generator=gen) * scale + offset).to(device=device, dtype=dtype)

    channels = shape["channels"]
    if kind == "cga":
        heads, key_dim, kernels, window = shape["heads"], shape["key_dim"], shape["kernels"], shape["window"]
        height, width = (window, window) if isinstance(window, int) else window
        value_dim, largest, tokens = channels // heads, max(kernels), height * width
        windows = batch * shape.get("windows_per_image", 1)
        return (randn(windows, channels, height, width), randn(heads, 2 * key_dim + value_dim, value_dim, 1, 1,
                                                               scale=value_dim ** -0.5),
                randn(heads, 2 * key_dim + value_dim, scale=0.1), randn(heads, key_dim, 1, largest, largest,
                                                                        scale=1 / largest),
                randn(heads, key_dim, scale=0.1), randn(heads, tokens, tokens, scale=0.5), heads, key_dim,
                list(kernels), key_dim ** -0.5)
    pdim, qk_dim, size = shape["partial_dim"], shape["qk_dim"], shape["size"]
    return (randn(batch, channels, size, size, offset=0.5), randn(pdim, scale=0.2, offset=1.0), randn(pdim, scale=0.1),
            randn(2 * qk_dim + pdim, pdim, 1, 1, scale=pdim ** -0.5), randn(2 * qk_dim + pdim, scale=0.1), pdim,
            qk_dim, qk_dim ** -0.5, 1e-5)


def aot_builds() -> list[AotBuild]:
    """Both kernels in fp16 and bf16 at every attention layer shape of efficientvit-m1 and shvit-s1."""
    builds = []
    for dtype in ("fp16", "bf16"):
        ptr = f"*{dtype}"
        for kind, shape in model_shapes("efficientvit-m1") + model_shapes("shvit-s1"):
            if kind == "cga":
                value_dim = shape["channels"] // shape["heads"]
                config = _cga_config(shape["heads"], shape["key_dim"], value_dim, shape["window"], shape["window"],
                                     max(shape["kernels"]), shape["kernels"])
                kernel = _cascaded_group_attention_kernel
                name = f"cascaded_group_attention_{dtype}_c{shape['channels']}"
                signature = {"x_ptr": ptr, "w_ptr": ptr, "wb_ptr": ptr, "dw_ptr": ptr, "dwb_ptr": ptr,
                             "bias_ptr": ptr, "q_ws_ptr": "*fp32", "out_ptr": ptr, "scale": "fp32"}
            else:
                config = _sha_config(shape["channels"], shape["size"] ** 2, shape["partial_dim"], shape["qk_dim"])
                kernel = _single_head_attention_kernel
                name = f"single_head_attention_{dtype}_c{shape['channels']}"
                signature = {"x_ptr": ptr, "norm_w_ptr": ptr, "norm_b_ptr": ptr, "w_ptr": ptr, "b_ptr": ptr,
                             "out_ptr": ptr, "scale": "fp32", "eps": "fp32"}
            warps = config.pop("num_warps")
            constexprs = config
            signature.update({key: "constexpr" for key in constexprs})
            builds.append(AotBuild(name, kernel, signature, constexprs, num_warps=warps))
    return builds
