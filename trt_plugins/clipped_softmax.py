"""Triton kernel for edgert::clipped_softmax: clip((zeta - gamma) * softmax(scores, -1) + gamma, 0, 1)
row-wise over the last dim (models/ops.py holds the torch reference).

Runs on CUDA tensors, or on CPU tensors when TRITON_INTERPRET=1 was set before this module was
imported (trt_plugins/triton_support.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from edgert.trt_plugins.triton_support import AotBuild, check_runs_here, interpreting

# Triton chose between compiling and interpreting the kernels below when they were jitted.
_INTERPRETED = interpreting()
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Rows up to this long are read once (one tile per row); longer rows are streamed twice.
ONE_PASS_MAX = 4096
STREAM_BLOCK = 2048
TILE_ELEMENTS = 4096  # rows per program: short rows are packed into tiles of about this many values


@triton.jit
def _clipped_softmax_kernel(x_ptr, out_ptr, rows, cols, gamma, zeta,
                            BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, ONE_PASS: tl.constexpr):
    # x, out: [rows, cols] contiguous; each program does BLOCK_ROWS rows.
    row = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_mask = row < rows
    # Rows past the end re-read the last row (never stored), so no row is all -inf.
    base = tl.minimum(row, rows - 1).to(tl.int64)[:, None] * cols
    offs = tl.arange(0, BLOCK_COLS)[None, :]
    if ONE_PASS:
        mask = row_mask[:, None] & (offs < cols)
        s = tl.load(x_ptr + base + offs, mask=offs < cols, other=float("-inf")).to(tl.float32)
        e = tl.exp(s - tl.max(s, axis=1)[:, None])
        p = e / tl.sum(e, axis=1)[:, None]
        y = tl.minimum(tl.maximum((zeta - gamma) * p + gamma, 0.0), 1.0)
        tl.store(out_ptr + base + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        m = tl.full([BLOCK_ROWS], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_ROWS], tl.float32)
        # while, not range(): the interpreter cannot take a runtime scalar as a range() bound.
        start = 0
        while start < cols:
            s = tl.load(x_ptr + base + start + offs, mask=start + offs < cols, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(s, axis=1))
            total = total * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
            m = m_new
            start += BLOCK_COLS
        start = 0
        while start < cols:
            mask = row_mask[:, None] & (start + offs < cols)
            s = tl.load(x_ptr + base + start + offs, mask=start + offs < cols, other=float("-inf")).to(tl.float32)
            p = tl.exp(s - m[:, None]) / total[:, None]
            y = tl.minimum(tl.maximum((zeta - gamma) * p + gamma, 0.0), 1.0)
            tl.store(out_ptr + base + start + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
            start += BLOCK_COLS


def _tiling(cols: int) -> tuple[int, int, bool, int]:
    """(BLOCK_ROWS, BLOCK_COLS, ONE_PASS, num_warps) for rows of `cols` values."""
    if cols <= ONE_PASS_MAX:
        block_cols = triton.next_power_of_2(cols)
        block_rows = max(1, min(64, TILE_ELEMENTS // block_cols))
        return block_rows, block_cols, True, 8 if block_rows * block_cols >= TILE_ELEMENTS else 4
    return 1, STREAM_BLOCK, False, 8


def clipped_softmax(scores: torch.Tensor, gamma: float, zeta: float) -> torch.Tensor:
    """clip((zeta - gamma) * softmax(scores, -1) + gamma, 0, 1) of `scores` (any shape, fp32/fp16/bf16;
    fp32 arithmetic), in the dtype and shape of `scores`."""
    check_runs_here("clipped_softmax", scores, _INTERPRETED)
    if scores.dtype not in _DTYPES:
        raise TypeError(f"clipped_softmax takes float32, float16 or bfloat16 scores, not {scores.dtype}")
    if scores.dim() == 0:
        raise ValueError("clipped_softmax needs scores with at least one dimension (the softmax axis)")
    x = scores.contiguous()
    out = torch.empty_like(x)
    cols = x.shape[-1]
    if out.numel() == 0:
        return out
    rows = x.numel() // cols
    block_rows, block_cols, one_pass, warps = _tiling(cols)
    _clipped_softmax_kernel[(triton.cdiv(rows, block_rows),)](
        x, out, rows, cols, float(gamma), float(zeta), BLOCK_ROWS=block_rows, BLOCK_COLS=block_cols,
        ONE_PASS=one_pass, num_warps=warps)
    return out


def aot_builds() -> list[AotBuild]:
    """The kernel in fp16 and bf16, for rows of up to 128 values (one pass) and for long rows (streamed)."""
    builds = []
    for dtype in ("fp16", "bf16"):
        signature = {"x_ptr": f"*{dtype}", "out_ptr": f"*{dtype}", "rows": "i32", "cols": "i32", "gamma": "fp32",
                     "zeta": "fp32", "BLOCK_ROWS": "constexpr", "BLOCK_COLS": "constexpr", "ONE_PASS": "constexpr"}
        for cols in (128, ONE_PASS_MAX + 1):
            block_rows, block_cols, one_pass, warps = _tiling(cols)
            builds.append(AotBuild(f"clipped_softmax_{dtype}_{'row' if one_pass else 'stream'}{block_cols}",
                                   _clipped_softmax_kernel, signature,
                                   {"BLOCK_ROWS": block_rows, "BLOCK_COLS": block_cols, "ONE_PASS": one_pass},
                                   num_warps=warps))
    return builds
