"""edgert export SOURCE -o OUT.onnx

Only Transform's module (exporters/heads.py) is imported when used: it loads torch and
transformers, which `edgert export --help` must not.
"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from edgert._io import check_outputs, write_text_atomic
from edgert.cli.progress import show_steps
from edgert.errors import PlanError
from edgert.exporters.export import DEFAULT_ATOL, DEFAULT_OPSET, DEFAULT_RTOL, TASKS, export
from edgert.kv_cache import CacheLayout
from edgert.models.sources import resolve_source
from edgert.plan import HeadPlan

STEPS = {"load": "loading model", "calibration": "reading calibration data",
         "heads": "transforming attention heads", "trace": "tracing with torch.onnx",
         "optimize": "fusing for ONNX Runtime CPU", "write": "writing graph, manifest and tokenizer",
         "validate": "validating against torch"}


@click.command("export")
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the ONNX model.")
@click.option("--task", type=click.Choice(TASKS), default=None,
              help="Graph outputs. Default: the built-in model's task, else feature-extraction.")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset.")
@click.option("--atol", type=float, default=DEFAULT_ATOL, show_default=True,
              help="Fail if any output differs from torch by more than atol + rtol x its largest magnitude.")
@click.option("--rtol", type=float, default=DEFAULT_RTOL, show_default=True,
              help="Relative part of that tolerance.")
@click.option("--plan", "plan_path", type=click.Path(dir_okay=False), default=None,
              help="A HeadPlan JSON (from `edgert analyze heads` or written by hand).")
@click.option("--prune", type=float, default=None, metavar="FRACTION",
              help="Prune until this fraction of the model's original heads is gone, least important "
                   "first (mask-gradient score); heads a --plan already dropped count towards it.")
@click.option("--kv-heads", type=int, default=None,
              help="Group each layer's query heads onto this many kv heads (MHA -> GQA).")
@click.option("--gqa-method", default="mean", show_default=True, metavar="mean|svd",
              help="How grouped K/V projections are merged: mean pooling, or SVD of calibration activations.")
@click.option("--softmax", "softmax_spec", default=None, metavar="standard|clipped:GAMMA,ZETA",
              help="Attention softmax, e.g. clipped:-0.025,1 (exported as the edgert ClippedSoftmax op).")
@click.option("--retrieval-heads", "retrieval", default=None, metavar="FRACTION|COUNT",
              help="Decoders: kv heads that keep a full KV cache, as a fraction of all kv heads "
                   "(0.25) or a count (4), chosen across the whole model; every other kv head "
                   "keeps --sink + --recent tokens. Default: the plan's cache policies (all full).")
@click.option("--sink", type=int, default=None,
              help="Decoders, with --retrieval-heads: first tokens a streaming kv head always keeps "
                   "[default: 64].")
@click.option("--recent", type=int, default=None,
              help="Decoders, with --retrieval-heads: latest tokens a streaming kv head keeps "
                   "[default: 256].")
@click.option("--calib", type=click.Path(), default=None,
              help="Calibration data for --prune and --gqa-method svd (.txt or .npz). "
                   "Default: the built-in model's set.")
@click.option("--calib-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Use at most this many calibration examples.")
@click.option("--optimize/--no-optimize", default=True, show_default=True,
              help="Fuse attention and bias+GELU into ONNX Runtime CPU kernels "
                   "(com.microsoft ops; decoders: prefill attention as GroupQueryAttention). "
                   "--no-optimize: a portable graph of standard ONNX ops (and edgert ops) for "
                   "TensorRT and other runtimes.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Vision models: weights in timm's layout (.safetensors, .pth, .bin). "
                   "Default: random init, and the manifest says so.")
@click.option("--resolution", type=int, default=None,
              help="Vision models: input height and width in pixels, a multiple of 16 from 64 to 1024. "
                   "Default: the checkpoint's, else the variant's (224; shvit-s4 256).")
@click.option("--custom-ops/--no-custom-ops", default=True, show_default=True,
              help="Vision models: each attention as one edgert op (ONNX function body inside, "
                   "TensorRT plugin name outside); --no-custom-ops exports plain ONNX.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the export summary (manifest, seconds) as JSON.")
def command(source: str, output: str, task: str | None, opset: int, atol: float, rtol: float,
            plan_path: str | None, prune: float | None, kv_heads: int | None, gqa_method: str,
            softmax_spec: str | None, retrieval: str | None, sink: int | None, recent: int | None,
            calib: str | None, calib_size: int, optimize: bool, checkpoint: str | None,
            resolution: int | None, custom_ops: bool, json_path: str | None) -> None:
    """Export SOURCE (a built-in name such as `minilm`, a local Hugging Face model
    directory, or a vision model: efficientvit-m0 ... efficientvit-m5, shvit-s1 ... shvit-s4)
    to a validated ONNX graph with dynamic batch (and, for text, sequence) axes, fused for
    ONNX Runtime CPU unless --no-optimize.

    The tokenizer and a manifest (source, task, opset, validation diffs, head plan,
    optimization; for images, the preprocessing and labels) travel inside the file.
    """
    resolved = resolve_source(source)
    check_outputs([output, json_path], inputs=[resolved.directory, plan_path, calib, checkpoint])
    if retrieval is None and (sink is not None or recent is not None):
        raise PlanError("--sink and --recent shape the streaming heads of --retrieval-heads; "
                        "give --retrieval-heads too")
    transform = None
    if (plan_path is not None or prune is not None or kv_heads is not None or softmax_spec is not None
            or retrieval is not None):
        from edgert.exporters.heads import Transform, parse_retrieval, parse_softmax

        transform = Transform(plan=HeadPlan.load(plan_path) if plan_path is not None else None, prune=prune,
                              kv_heads=kv_heads, gqa_method=gqa_method,
                              softmax=parse_softmax(softmax_spec) if softmax_spec is not None else None,
                              retrieval=parse_retrieval(retrieval) if retrieval is not None else None,
                              **{k: v for k, v in (("sink", sink), ("recent", recent)) if v is not None})
        transform.check()
    with show_steps("export", STEPS) as step:
        result = export(resolved, output, task=task, opset=opset, atol=atol, rtol=rtol, transform=transform,
                        calib=calib, calib_size=calib_size, optimize=optimize, checkpoint=checkpoint,
                        resolution=resolution, custom_ops=custom_ops, on_step=step)
    table = Table(title="validation against torch")
    table.add_column("output")
    table.add_column("max abs diff", justify="right")
    table.add_column("max |torch|", justify="right")
    table.add_column("limit", justify="right")
    scales = result.manifest.validation.get("max_abs_reference", {})
    for name, diff in result.diffs.items():
        scale = scales.get(name, 0.0)
        table.add_row(name, f"{diff:.3g}", f"{scale:.3g}", f"{atol + rtol * scale:.3g}")
    out = Console()
    out.print(table)
    plan = result.manifest.plan
    if plan and plan != HeadPlan.full(len(plan.layers), plan.layers[0].num_heads, head_dim=plan.head_dim):
        out.print(plan_table(plan))
    if result.manifest.decoder:
        out.print(cache_line(result.manifest.decoder), soft_wrap=True, markup=False, highlight=False)
    for note in result.manifest.extra.get("notes") or []:
        out.print(f"note: {note}", soft_wrap=True, markup=False, highlight=False)
    vision = result.manifest.extra.get("vision")
    lines = [vision_line(result.manifest.extra)] if vision else optimization_lines(result.manifest.extra)
    for line in lines:
        out.print(line, soft_wrap=True, markup=False, highlight=False)
    out.print(f"wrote {result.path} (task {result.manifest.task}, opset {opset}) "
              f"in {result.seconds:.1f} s", soft_wrap=True, markup=False, highlight=False)
    if json_path:
        summary = {"path": str(result.path), "seconds": result.seconds,
                   "manifest": json.loads(result.manifest.to_json())}
        write_text_atomic(json_path, json.dumps(summary, indent=1))


def plan_table(plan) -> Table:
    """Per layer: heads kept of the original, kv heads, softmax, gate."""
    table = Table(title=f"head plan: {plan.kept_heads} of {plan.original_heads} heads kept")
    for column in ("layer", "heads kept", "kv heads", "softmax", "gated", "pruned heads"):
        table.add_column(column, justify="left" if column in ("softmax", "pruned heads") else "right",
                         no_wrap=column == "softmax")
    for i, layer in enumerate(plan.layers):
        softmax = layer.softmax.kind if layer.softmax.kind == "standard" else (
            f"clipped({layer.softmax.gamma:g},{layer.softmax.zeta:g})")
        table.add_row(str(i), f"{len(layer.kept_heads)}/{layer.num_heads}", str(layer.num_kv_heads),
                      softmax, "yes" if layer.gated else "no",
                      ",".join(str(h) for h in range(layer.num_heads) if h not in layer.kept_heads))
    return table


def cache_line(decoder: dict) -> str:
    """The KV cache layout of a decoder export, in one line."""
    layout = CacheLayout.from_dict(decoder["cache"])
    total = sum(layout.retrieval) + sum(layout.streaming)
    line = (f"KV cache: {sum(layout.retrieval)} of {total} kv heads keep every token "
            f"(per layer {', '.join(map(str, layout.retrieval))})")
    if any(layout.streaming):
        line += f", the others sink {layout.sink} + recent {layout.recent}"
    return line + f"; max length {decoder['max_length']}"


def optimization_lines(extra: dict) -> list[str]:
    """What the export did to the graph for its runtime, from the manifest's `extra`."""
    target = extra.get("optimized_for")
    if target:
        fused = ", ".join(f"{n} {op}" for op, n in extra.get("fusions", {}).items() if n)
        lines = [f"optimized for {target} (--no-optimize for a portable graph):",
                 f"  fused {fused or 'nothing'}"]
        if extra.get("optimization_note"):
            lines.append(extra["optimization_note"])
        return lines
    return [extra.get("optimization_note") or "not optimized (--no-optimize): a portable graph"]


def vision_line(extra: dict) -> str:
    """What a vision export holds, in one line."""
    vision, image = extra["vision"], extra["image"]
    ops = ", ".join(extra.get("custom_ops") or []) or "none (plain ONNX)"
    return (f"{vision['variant']}: {vision['weights']}; {image['resolution']}x{image['resolution']} px, "
            f"{len(image['labels'] or []) or 'no'} labels; {vision['batchnorms_folded']} BatchNorms folded; "
            f"edgert ops: {ops}")
