"""GPU benchmark of the Triton vision attention kernels (trt_plugins/vision_attention.py)
against torch eager: the reference functions of models/ops.py (what the models run) and the
same arithmetic with torch's scaled_dot_product_attention for the attention itself.

    python bench/gpu_vision_attention.py --out DIR [--dry-run]

On CUDA in fp16 at batch 1, 16 and 64, for every distinct attention layer shape of
efficientvit-m1 and shvit-s1 at 224 px: CUDA-event timing of each call, the median of many
calls after a warm-up. Prints a markdown table (latency, speedup over each eager form, each
output's largest error against a float64 reference) and writes DIR/gpu_vision_attention.json.

--dry-run rehearses without a GPU: the same code on CPU tensors under Triton's interpreter,
at tiny shapes, timed with the host clock (the times mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from gpu_timing import median_ms  # bench/ is on sys.path when a script of it runs

MODELS = ("efficientvit-m1", "shvit-s1")
BATCHES = (1, 16, 64)
WARMUP, REPS = 20, 200
# --dry-run: one tiny layer of each kind, a couple of batches, a few calls.
DRY_SHAPES = [("tiny", "cga", dict(channels=16, heads=2, key_dim=4, window=4, kernels=[5, 3], windows_per_image=1)),
              ("tiny", "sha", dict(channels=12, partial_dim=8, qk_dim=4, size=4))]
DRY_BATCHES, DRY_WARMUP, DRY_REPS = (1, 2), 1, 3


def cga_sdpa(x, qkv_weight, qkv_bias, dw_weight, dw_bias, bias, num_heads, key_dim, kernels, scale):
    """cascaded_group_attention_reference with its attention done by scaled_dot_product_attention."""
    import torch
    import torch.nn.functional as F

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
        q = F.conv2d(q, kernel, dw_bias[i], padding=kernels[i] // 2, groups=key_dim)
        q, k, v = (t.flatten(2).transpose(1, 2).unsqueeze(1) for t in (q, k, v))  # [B, 1, N, d]
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[i], scale=scale)
        feat = o.squeeze(1).transpose(1, 2).reshape(B, value_dim, H, W)
        outputs.append(feat)
    return torch.cat(outputs, 1)


def sha_sdpa(x, norm_weight, norm_bias, qkv_weight, qkv_bias, partial_dim, qk_dim, scale, eps):
    """single_head_attention_reference with its attention done by scaled_dot_product_attention."""
    import torch
    import torch.nn.functional as F

    B, C, H, W = x.shape
    x1, x2 = x.split([partial_dim, C - partial_dim], dim=1)
    qkv = F.conv2d(F.group_norm(x1, 1, norm_weight, norm_bias, eps), qkv_weight, qkv_bias)
    q, k, v = qkv.flatten(2).transpose(1, 2).unsqueeze(1).split([qk_dim, qk_dim, partial_dim], dim=-1)
    o = F.scaled_dot_product_attention(q, k, v, scale=scale)  # [B, 1, N, partial_dim]
    return torch.cat([o.squeeze(1).transpose(1, 2).reshape(B, partial_dim, H, W), x2], dim=1)


def layers(dry_run: bool) -> list[tuple[str, str, dict]]:
    """(model, kind, shape) of every layer shape to time."""
    from edgert.trt_plugins.vision_attention import model_shapes

    if dry_run:
        return DRY_SHAPES
    return [(name, kind, shape) for name in MODELS for kind, shape in model_shapes(name)]


def describe(kind: str, shape: dict) -> str:
    if kind == "cga":
        w = shape["window"]
        return (f"CGA C{shape['channels']} h{shape['heads']} {w}x{w} k{','.join(map(str, shape['kernels']))} "
                f"x{shape.get('windows_per_image', 1)}win")
    return f"SHA C{shape['channels']} p{shape['partial_dim']} {shape['size']}x{shape['size']}"


def measure(dry_run: bool) -> list[dict]:
    """One row per (layer, batch): each implementation's median latency and largest error."""
    import torch

    from edgert.models.ops import cascaded_group_attention_reference, single_head_attention_reference
    from edgert.trt_plugins import vision_attention as va

    device = "cpu" if dry_run else "cuda"
    warmup, reps = (DRY_WARMUP, DRY_REPS) if dry_run else (WARMUP, REPS)
    implementations = {
        "cga": {"eager": cascaded_group_attention_reference, "sdpa": cga_sdpa, "triton": va.cascaded_group_attention},
        "sha": {"eager": single_head_attention_reference, "sdpa": sha_sdpa, "triton": va.single_head_attention},
    }
    rows = []
    for model, kind, shape in layers(dry_run):
        for batch in DRY_BATCHES if dry_run else BATCHES:
            args = va.example_inputs(kind, shape, batch, dtype=torch.float16, device=device)
            exact = implementations[kind]["eager"](*(a.double() if isinstance(a, torch.Tensor) else a for a in args))
            row = dict(model=model, layer=describe(kind, shape), kind=kind, shape=shape, batch=batch,
                       input_shape=list(args[0].shape))
            with torch.no_grad():
                for label, fn in implementations[kind].items():
                    row[f"{label}_max_error"] = float((fn(*args).double() - exact).abs().max())
                    row[f"{label}_ms"] = median_ms(lambda fn=fn, args=args: fn(*args), device, warmup, reps)
            row["speedup_vs_eager"] = row["eager_ms"] / row["triton_ms"]
            row["speedup_vs_sdpa"] = row["sdpa_ms"] / row["triton_ms"]
            rows.append(row)
            print(f"  {model} {row['layer']} batch {batch}: triton {row['triton_ms']:.4f} ms, "
                  f"{row['speedup_vs_eager']:.2f}x eager", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [("| model | layer | batch | eager ms | SDPA eager ms | Triton ms | vs eager | vs SDPA "
              "| max err eager / SDPA / Triton |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['layer']} | {r['batch']} | {r['eager_ms']:.4f} | {r['sdpa_ms']:.4f} | "
                     f"{r['triton_ms']:.4f} | {r['speedup_vs_eager']:.2f}x | {r['speedup_vs_sdpa']:.2f}x | "
                     f"{r['eager_max_error']:.1e} / {r['sdpa_max_error']:.1e} / {r['triton_max_error']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for gpu_vision_attention.json")
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU tensors under Triton's interpreter at tiny shapes (no GPU needed)")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # Triton reads it when the kernel module is imported, below
    import torch
    import triton

    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU here (use --dry-run to rehearse on CPU)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows = measure(args.dry_run)
    device = "cpu (Triton interpreter, dry run)" if args.dry_run else torch.cuda.get_device_name()
    report = dict(device=device, dtype="float16", torch=torch.__version__, triton=triton.__version__,
                  python=platform.python_version(), warmup=DRY_WARMUP if args.dry_run else WARMUP,
                  reps=DRY_REPS if args.dry_run else REPS, timing="host clock" if args.dry_run else "CUDA events",
                  seconds=round(time.perf_counter() - started, 1), rows=rows)
    title = ("#### Vision attention kernels (dry run: CPU interpreter, tiny shapes; not a measurement)"
             if args.dry_run else "#### Vision attention kernels against torch eager (fp16)")
    report["markdown"] = (f"{title}\n\n{device}, fp16, torch {torch.__version__}, triton {triton.__version__}; median "
                          f"of {report['reps']} calls after {report['warmup']} warm-up ({report['timing']}); errors "
                          f"against a float64 reference\n\n{table(rows)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_vision_attention.json").write_text(json.dumps(report, indent=2))
    print(report["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
