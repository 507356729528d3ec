"""edgert inspect MODEL"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from edgert._io import check_outputs, write_text_atomic
from edgert.model_info import inspect_model


@click.command("inspect")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the summary as JSON.")
def command(model: str, json_path: str | None) -> None:
    """Show MODEL's inputs/outputs, opsets, op histogram, parameters, custom ops and manifest."""
    check_outputs([json_path], inputs=[model])
    info = inspect_model(model)
    console = Console()
    console.print(f"[bold]{info.path}[/]  IR {info.ir_version}, producer {info.producer or '?'}")
    console.print("opsets: " + ", ".join(f"{d} {v}" for d, v in info.opsets.items()))
    io_table = Table(title="signature")
    for col in ("", "name", "dtype", "shape"):
        io_table.add_column(col)
    for kind, values in (("input", info.inputs), ("output", info.outputs)):
        for v in values:
            io_table.add_row(kind, v["name"], v["dtype"], str(v["shape"]))
    console.print(io_table)
    console.print(f"parameters: {info.parameters:,} ({info.parameter_bytes / 2**20:.2f} MiB)")
    ops = Table(title=f"ops ({sum(info.op_histogram.values())} nodes)")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, count in info.op_histogram.items():
        ops.add_row(op, str(count))
    console.print(ops)
    console.print("edgert custom ops: " + (", ".join(info.custom_ops) or "none"))
    if info.functions:
        console.print("local functions: " + ", ".join(info.functions))
    _print_manifest(console, info.manifest, info.has_tokenizer)
    if json_path:
        write_text_atomic(json_path, json.dumps(info.to_dict(), indent=1))


def _print_manifest(console: Console, manifest: dict | None, has_tokenizer: bool) -> None:
    if manifest is None:
        console.print("manifest: none (not exported by edgert)")
        return
    console.print(f"manifest: edgert {manifest['edgert_version']}, source {manifest['source']}, "
                  f"task {manifest['task']}, opset {manifest['opset']}")
    validation = manifest.get("validation") or {}
    if validation:
        diffs = ", ".join(f"{k} {v:.3g}" for k, v in validation["max_abs_diff"].items())
        console.print(f"validated vs torch: max abs diff {diffs} (atol {validation['atol']:g})")
    extra = manifest.get("extra") or {}
    if "optimized_for" in extra:
        fused = ", ".join(f"{n} {op}" for op, n in (extra.get("fusions") or {}).items() if n)
        console.print(f"optimized for: {extra['optimized_for'] or 'nothing (portable graph)'}"
                      + (f", fused {fused}" if fused else ""))
    console.print(f"tokenizer: {'yes' if has_tokenizer else 'no'}"
                  + (f", max_length {manifest['text']['max_length']}" if manifest.get("text") else ""))
    quant = extra.get("quantization")
    if quant:
        acc, cfg = quant["accuracy"], quant["config"]
        console.print(f"quantization: {cfg['mode']} int8 {_kernel_words(quant)}({cfg['method']}, "
                      f"target {cfg['target']}), {len(quant['float_nodes'])} nodes kept in float")
        if _isa_words(quant):
            console.print(f"  {_isa_words(quant)}")
        if "top1_agreement" in acc:  # an image classifier
            line = (f"  top-1 agreement with FP32 {acc['top1_agreement']:.4f}, logits SQNR {acc['sqnr_db']:.1f} dB "
                    f"over {acc['images']} images")
            if acc.get("labelled"):
                line += f"; top-1 accuracy FP32 {acc['fp32_top1']:.4f}, INT8 {acc['int8_top1']:.4f}"
            console.print(line)
        elif "top1" in acc:  # a decoder: next-token agreement with FP32
            console.print(f"  next-token top-1 agreement {acc['top1']:.4f}, KL mean {acc['kl_mean']:.4f} "
                          f"(max {acc['kl_max']:.4f}) over {acc['positions']} positions")
        else:
            console.print(f"  cosine to FP32 mean {acc['cosine_mean']:.4f} / min {acc['cosine_min']:.4f}, "
                          f"SQNR {acc['sqnr_db']:.1f} dB")
        timed = quant["timed_at"]
        if "context" in timed:
            console.print(f"  {quant['speedup']:.2f}x FP32 per decoded token at context {timed['context']} "
                          f"({timed['new_tokens']} new tokens)")
        else:
            seq = f", seq {timed['seq']}" if timed.get("seq") else ""
            console.print(f"  {quant['speedup']:.2f}x FP32 at batch {timed['batch']}{seq}")
        fused = ", ".join(f"{n} {op}" for op, n in (quant.get("fused") or {}).items() if n)
        if fused:
            console.print(f"  fused by quantize: {fused}")
    plan = manifest.get("plan")
    if plan:
        layers = plan["layers"]
        heads = _per_layer([len(layer["kept_heads"]) for layer in layers])
        kv = _per_layer([layer["num_kv_heads"] for layer in layers])
        softmax = sorted({layer["softmax"]["kind"] for layer in layers})
        windows = sum(c["kind"] == "window" for layer in layers for c in layer["cache"])
        console.print(f"head plan: {len(layers)} layers, query heads {heads}, kv heads {kv}, "
                      f"softmax {'/'.join(softmax)}, streaming kv heads {windows}")


def _per_layer(values: list[int]) -> str:
    """`12 each` when every layer has the same count, else the list."""
    return f"{values[0]} each" if values and len(set(values)) == 1 else str(values)


def _kernel_words(quant: dict) -> str:
    """`U8S8 reduce-range ` from a quantization record (empty for records that predate it)."""
    kernel = quant.get("kernel")
    return f"{kernel['label']} " if kernel else ""


def _isa_words(quant: dict) -> str:
    """`kernels chosen for CPU avx2 (no-vnni, overridden)` from a quantization record."""
    isa = quant.get("cpu")
    if not isa or quant["config"]["target"] != "cpu":
        return ""
    names = ", ".join(isa["names"]) or "no known instruction sets"
    return f"kernels chosen for CPU {names} ({isa['class']}{', overridden' if isa['overridden'] else ''})"
