"""edgert quantize MODEL --int8 -o OUT"""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from edgert.errors import EdgertError


@click.command("quantize")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--int8", "int8", is_flag=True, help="Quantize to INT8 (the only precision today).")
@click.option("--mode", type=click.Choice(["static", "dynamic"]), default="static", show_default=True)
@click.option("--calib", type=click.Path(), default=None,
              help="Calibration data: .txt (one example per line) or .npz of inputs. "
                   "Default: the built-in set of a built-in model.")
@click.option("--calib-size", type=int, default=128, show_default=True)
@click.option("--heldout", type=click.Path(), default=None,
              help="Held-out data for the guard (same formats). Default: the built-in set, "
                   "else the calibration data.")
@click.option("--method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="Calibration method (static mode).")
@click.option("--per-channel/--per-tensor", default=True, show_default=True,
              help="Weight scales per output channel or per tensor.")
@click.option("--exclude", multiple=True, metavar="NODE_OR_OPTYPE",
              help="Keep this node (or every node of this op type) in float. Repeatable.")
@click.option("--target", type=click.Choice(["cpu", "tensorrt"]), default="cpu", show_default=True,
              help="tensorrt: symmetric int8 activations and weights in QDQ form.")
@click.option("--guard", default=None, metavar="METRIC>=VALUE",
              help="e.g. cosine>=0.99 or sqnr>=20: keep sensitive nodes in float until it holds.")
@click.option("--fuse/--no-fuse", default=True, show_default=True,
              help="Target cpu: fuse attention, skip+LayerNorm and bias+GELU into ONNX Runtime "
                   "CPU kernels (com.microsoft ops) before quantizing.")
@click.option("--report", "report_rows", type=int, default=10, show_default=True,
              help="Print this many worst activation tensors of the outlier report (0: none).")
@click.option("--threads", type=int, default=None)
def command(model: str, output: str, int8: bool, mode: str, calib: str | None, calib_size: int,
            heldout: str | None, method: str, per_channel: bool, exclude: tuple[str, ...],
            target: str, guard: str | None, fuse: bool, report_rows: int, threads: int | None) -> None:
    """Quantize MODEL to INT8 with ONNX Runtime, check accuracy on held-out data against
    FP32, and time FP32 vs INT8 side by side."""
    from edgert.cli.analyze_cmd import outlier_table
    from edgert.quant.quantize import Guard, QuantConfig, quantize_model

    if not int8:
        raise EdgertError("say which precision: --int8 (the only one supported)")
    config = QuantConfig(mode=mode, method=method, per_channel=per_channel, exclude=exclude,
                         target=target, calib_size=calib_size, fuse=fuse,
                         guard=Guard.parse(guard) if guard else None)
    err = Console(stderr=True)
    with err.status("quantizing") as status:
        result = quantize_model(model, output, config, calib=calib, heldout=heldout,
                                threads=threads, on_step=status.update)
    console = Console()
    if report_rows > 0:
        console.print(outlier_table(result.outliers[:report_rows],
                                    f"activation outliers (worst {report_rows} of {len(result.outliers)} "
                                    "by fake-INT8 SQNR; `edgert analyze outliers` for all)"))
    if any(result.fused.values()):
        console.print("fused for ONNX Runtime CPU: " + ", ".join(f"{n} {op}" for op, n in result.fused.items()))
    table = Table(title=f"INT8 ({mode}, {method}, {'per-channel' if per_channel else 'per-tensor'}, "
                        f"target {target}) vs FP32")
    for column in ("attempt", "nodes in float", "cosine mean", "cosine min", "SQNR dB"):
        table.add_column(column, justify="right")
    for i, a in enumerate(result.attempts, 1):
        table.add_row(str(i), str(a.float_nodes), f"{a.accuracy.cosine_mean:.4f}",
                      f"{a.accuracy.cosine_min:.4f}", f"{a.accuracy.sqnr_db:.1f}")
    console.print(table)
    console.print(f"held-out data: {result.heldout}")
    if result.float_nodes:
        console.print("kept in float: " + ", ".join(result.float_nodes))
    speed = result.speed
    line = (f"latency p50 at batch {speed.batch}, seq {speed.seq}: FP32 {speed.fp32_ms.p50:.2f} ms, "
            f"INT8 {speed.int8_ms.p50:.2f} ms → {speed.speedup:.2f}x")
    if speed.speedup < 1:
        console.print(f"[bold red]WARNING: the INT8 model is SLOWER than FP32 here ({line})[/]")
    else:
        console.print(line)
    console.print(f"wrote {result.path}")
