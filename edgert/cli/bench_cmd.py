"""edgert bench MODEL [MODEL ...]"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgert.devices import DEVICES


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--seq", type=int, default=128, show_default=True, help="Sequence length.")
@click.option("--warmup", type=int, default=10, show_default=True)
@click.option("--iters", type=int, default=100, show_default=True,
              help="Timed runs per model (at most 100000, as is --warmup).")
@click.option("--threads", type=int, default=None,
              help="Intra-op threads, up to 2 per core (default: ONNX Runtime's, one per core).")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:DxD",
              help="Concrete shape for an input whose dims edgert cannot resolve, e.g. x:1x3x224x224.")
@click.option("--spin/--no-spin", default=True, show_default=True,
              help="Let idle ONNX Runtime threads busy-wait (its default). --no-spin is fairer "
                   "when comparing several models.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the results as JSON.")
def command(models: tuple[str, ...], device: str, batch: int, seq: int, warmup: int, iters: int,
            threads: int | None, shapes: tuple[str, ...], spin: bool, json_path: str | None) -> None:
    """Measure latency percentiles, throughput and peak memory of MODELS.

    Each model is timed alone; with several models they are then timed interleaved in
    blocks in this one process and compared with the first (speedup = first p50 / p50).
    """
    from edgert._io import check_output_path, write_text_atomic
    from edgert.profiler import BenchConfig, bench_models, total_iterations
    from edgert.synth import parse_shape_overrides

    config = BenchConfig(batch=batch, seq=seq, warmup=warmup, iters=iters, threads=threads,
                         device=device, shapes=parse_shape_overrides(shapes), spin=spin).check()
    if json_path:
        check_output_path(json_path, inputs=models)
    columns = (TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    err = Console(stderr=True)
    # no bar when stderr is not a terminal: a log file would get its last frame and a blank line
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("bench", total=total_iterations(len(models), config))
        report = bench_models(models, config, progress=lambda n: progress.advance(task, n))
    console = Console()
    for table in _tables(report):
        console.print(table)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    if json_path:
        write_text_atomic(json_path, json.dumps(report.to_dict(), indent=1), inputs=models)
        console.print(f"wrote {escape(json_path)}")


def _tables(report) -> list[Table]:
    """Latency percentiles in one table, everything else in a second. Both fit 80 columns:
    a long model file name folds onto several lines of its column, whole."""
    config = report.config
    mode = "interleaved in blocks" if report.interleaved else "alone"
    latency = Table(title=f"latency ms: {report.device}, batch {config.batch}, seq {config.seq}, "
                          f"threads {config.threads or 'default'}, {config.iters} iters, {mode}")
    facts = Table(title="throughput, peak memory, start-up"
                  + ("; speedup = p50 of #1 / p50" if report.interleaved else ""))
    for table, columns in ((latency, ("mean", "p50", "p90", "p95", "p99", "max", "std")),
                           (facts, ("inf/s", "items/s", "RSS MB", "load s", "first ms"))):
        table.add_column("#", justify="right")
        table.add_column("model", overflow="fold", min_width=8)
        for column in columns:
            table.add_column(column, justify="right", no_wrap=True)
    if report.interleaved:
        facts.add_column("speedup", justify="right", no_wrap=True)
    for index, r in enumerate(report.models, 1):
        lat = r.latency_ms
        name = escape(Path(r.path).name)
        latency.add_row(str(index), name, *(f"{v:.2f}" for v in
                                            (lat.mean, lat.p50, lat.p90, lat.p95, lat.p99, lat.max, lat.std)))
        row = [str(index), name, f"{r.throughput_per_s:.1f}", f"{r.items_per_s:.1f}",
               f"{r.peak_rss_mb:.0f}", f"{r.session_s:.2f}", f"{r.first_ms:.1f}"]
        if report.interleaved:
            row.append(f"{r.speedup_vs_first:.2f}x" + ("" if r.alone_agrees else " (!)"))
        facts.add_row(*row)
    if not all(r.alone_agrees for r in report.models):
        facts.caption = "(!) alone and interleaved medians disagree: see the warning below"
    return [latency, facts]
