"""edgert quantize MODEL --int8 -o OUT"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from edgert._io import check_outputs, write_text_atomic
from edgert.cli.outlier_table import outlier_table
from edgert.cli.progress import show_steps
from edgert.errors import OptionError
from edgert.quant.guard import Guard
from edgert.quant.quantize import QuantConfig, QuantResult, quant_record, quantize_model
from edgert.quant.targets import TARGETS
from edgert.session import check_threads


@click.command("quantize")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--int8", "int8", is_flag=True, help="Quantize to INT8 (the only precision today).")
@click.option("--mode", type=click.Choice(["static", "dynamic"]), default="static", show_default=True)
@click.option("--calib", type=click.Path(), default=None,
              help="Calibration data: .txt (one example per line) or .npz of inputs (decoders: "
                   "prompts, .txt or .npz of input_ids; image models: a folder of images or an "
                   ".npz of pixel_values [N,3,R,R] with optional labels [N]). Default: the built-in "
                   "set of a built-in model; for decoders, bundled text their tokenizer knows, "
                   "else random token ids; image models need it.")
@click.option("--calib-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--heldout", type=click.Path(), default=None,
              help="Held-out data for the guard (same formats). Default: the built-in set, "
                   "else the calibration data; for decoders 8 prompts as for --calib. Image "
                   "folders whose sub-folders are named by the model's labels also give top-1 accuracy.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="Calibration method (static mode).")
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="Weight scales per output channel or per tensor.")
@click.option("--exclude", multiple=True, metavar="NODE_OR_OPTYPE",
              help="Keep this node (or every node of this op type, or the quantizable nodes of "
                   "this torch module, e.g. lm_head or layers.0) in float. Repeatable.")
@click.option("--target", type=click.Choice(["cpu", "tensorrt"]), default="cpu", show_default=True,
              help="tensorrt: symmetric int8 activations and weights in QDQ form.")
@click.option("--guard", default=None, metavar="METRIC>=VALUE",
              help="Keep sensitive nodes in float until it holds: cosine>=0.99 or sqnr>=20 for "
                   "encoders; top1>=0.9 (next-token agreement) or kl<=0.05 for decoders, which "
                   "default to top1>=0.9 (top1>=0: every node in INT8, accuracy only reported); "
                   "top1>=0.99 (top-1 agreement with FP32), sqnr>=V or cosine>=V of the logits "
                   "for image classifiers.")
@click.option("--fuse/--no-fuse", default=True, show_default=True,
              help="Target cpu: fuse attention and bias+GELU into ONNX Runtime CPU kernels "
                   "(com.microsoft ops) before quantizing (an `edgert export` is fused already).")
@click.option("--report", "report_rows", type=click.IntRange(min=0), default=10, show_default=True,
              help="Print this many worst activation tensors of the outlier report (0: none).")
@click.option("--isa", default="auto", show_default=True, metavar="auto|NAME[,NAME...]",
              help="Choose INT8 kernels for these instruction sets (e.g. avx2, avx512_vnni) "
                   "instead of this CPU's; auto: $EDGERT_CPU_ISA, else detect.")
@click.option("--threads", type=int, default=None)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the quantization record (config, accuracy, speed, kernels) as JSON.")
def command(model: str, output: str, int8: bool, mode: str, calib: str | None, calib_size: int,
            heldout: str | None, method: str, per_channel: bool, exclude: tuple[str, ...],
            target: str, guard: str | None, fuse: bool, report_rows: int, isa: str,
            threads: int | None, json_path: str | None) -> None:
    """Quantize MODEL to INT8 with ONNX Runtime, check accuracy on held-out data against
    FP32, and time FP32 vs INT8 side by side."""
    if not int8:
        raise OptionError("say which precision: --int8 (the only one supported)")
    check_threads(threads)
    check_outputs([output, json_path], inputs=[model, calib, heldout])
    config = QuantConfig(mode=mode, method=method, per_channel=per_channel, exclude=exclude,
                         target=target, calib_size=calib_size, fuse=fuse, isa=isa,
                         guard=None if guard is None else Guard.parse(guard))
    with show_steps("quantize", {}) as step:
        result = quantize_model(model, output, config, calib=calib, heldout=heldout,
                                threads=threads, on_step=step)
    console = Console()
    if report_rows > 0:
        console.print(outlier_table(result.outliers[:report_rows],
                                    f"activation outliers (worst {report_rows} of {len(result.outliers)} "
                                    "by fake-INT8 SQNR; `edgert analyze outliers` for all)"))
    if any(result.fused.values()):
        console.print("fused for ONNX Runtime CPU: " + ", ".join(f"{n} {op}" for op, n in result.fused.items()))
    if result.inlined:
        console.print("inlined (their Conv/MatMul quantized): "
                      + ", ".join(f"edgert::{name}" for name in result.inlined))
    console.print(cpu_line(result))
    console.print(candidate_table(result))
    table = Table(title=f"INT8 {result.kernel.label} ({mode}, {method}, {'per-channel' if per_channel else 'per-tensor'}, "
                        f"target {target}) vs FP32")
    for column in ("attempt", "nodes in float", *result.accuracy.columns()):
        table.add_column(column, justify="right")
    for i, a in enumerate(result.attempts, 1):
        table.add_row(str(i), str(a.float_nodes), *a.accuracy.columns().values())
    console.print(table)
    console.print(guard_line(result))
    console.print(f"held-out data: {result.heldout}")
    if result.float_nodes:
        console.print(f"kept in float: {float_words(result)}")
    speed = result.speed
    line = (f"{speed.what}: FP32 {speed.fp32_ms.p50:.2f} ms, "
            f"INT8 {speed.int8_ms.p50:.2f} ms → {speed.speedup:.2f}x")
    if speed.speedup < 1:
        console.print(f"[bold red]WARNING: the INT8 model is SLOWER than FP32 here ({line})[/]")
    else:
        console.print(line)
    console.print(f"wrote {result.path}")
    if json_path is not None:
        record = {"path": str(result.path), **quant_record(result)}
        write_text_atomic(json_path, json.dumps(record, indent=1), inputs=[model, calib, heldout, output])
        console.print(f"wrote {json_path}")


def float_words(result: QuantResult) -> str:
    """The nodes kept in float; for decoders, the modules (layers, lm_head) wholly in float
    by name, then any other nodes."""
    if not result.float_modules:
        return ", ".join(result.float_nodes)
    inside = {n for nodes in result.float_modules.values() for n in nodes}
    others = [n for n in result.float_nodes if n not in inside]
    return (f"{len(result.float_nodes)} nodes: all of {', '.join(result.float_modules)}"
            + (f"; {', '.join(others)}" if others else ""))


def cpu_line(result: QuantResult) -> str:
    """The instruction sets the INT8 kernels were chosen for, and whether they were detected."""
    isa = result.isa
    line = f"CPU instruction sets: {', '.join(isa.names) or 'none known'} ({isa.int8_class} INT8 class"
    if isa.overridden:
        line += f"; set by {'--isa' if isa.source == 'config' else isa.source}, "
        line += f"this CPU has {', '.join(isa.detected) or 'none known'}"
    line += ")"
    target = TARGETS[result.config.target]
    if target.kernel_words:
        line += f"; target {target.name} always gets {target.kernel_words}"
    return line


def candidate_table(result: QuantResult) -> Table:
    """Every INT8 kernel configuration measured for this CPU, the chosen one marked."""
    table = Table(title=f"INT8 kernel candidates: {result.choice}")
    # wide enough for the longest word of a kernel label (reduce-range), which must not be cut
    words = max((len(w) for c in result.candidates for w in c.kernel.label.split()), default=0)
    for column in ("", "kernel", *result.accuracy.columns(), "speedup"):
        table.add_column(column, justify="left" if column in ("", "kernel") else "right",
                         min_width=words if column == "kernel" else None)
    for c in result.candidates:
        table.add_row("chosen" if c.chosen else "", c.kernel.label, *c.accuracy.columns().values(),
                      f"{c.speedup:.2f}x" if c.speedup is not None else "-")
    return table


def guard_line(result: QuantResult) -> str:
    """Whether the guard held, and the accuracy in words (the guard's metric first)."""
    guard = result.config.guard
    if guard is None:
        return f"no guard: {result.accuracy.summary()}"
    default = f" (the default for {result.kind.plural})" if result.default_guard else ""
    return f"guard {guard}{default} held: {result.accuracy.summary(guard.metric)}"
