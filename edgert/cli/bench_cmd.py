"""edgert bench MODEL [MODEL ...]"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgert._io import check_output_path, write_text_atomic
from edgert.bench_config import BenchConfig, DecodeConfig
from edgert.decode_bench import bench_decode, total_decode_runs
from edgert.devices import DEVICES
from edgert.errors import InputError
from edgert.forward_bench import bench_models, total_iterations
from edgert.memory import format_bytes
from edgert.synth import parse_shape_overrides


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--batch", type=int, default=1, show_default=True)
@click.option("--seq", type=int, default=128, show_default=True, help="Sequence length.")
@click.option("--warmup", type=int, default=None,
              help="Untimed runs per model first (default 10; with --decode 1 generation).")
@click.option("--iters", type=int, default=None,
              help="Timed runs per model, at most 100000, as is --warmup (default 100; with "
                   "--decode 5 generations).")
@click.option("--threads", type=int, default=None,
              help="Intra-op threads, up to 2 per core (default: ONNX Runtime's, one per core).")
@click.option("--shape", "shapes", multiple=True, metavar="NAME:DxD",
              help="Concrete shape for an input whose dims edgert cannot resolve, e.g. x:1x3x224x224.")
@click.option("--spin/--no-spin", default=True, show_default=True,
              help="Let idle ONNX Runtime threads busy-wait (its default). --no-spin is fairer "
                   "when comparing several models.")
@click.option("--decode", is_flag=True,
              help="Time generation with decoders (text-generation graphs): time to first token, "
                   "per-token latency, tokens/s and KV cache bytes.")
@click.option("--context", type=int, default=None,
              help="With --decode: prompt tokens per sequence (random ids).  [default: 256]")
@click.option("--new-tokens", type=int, default=None,
              help="With --decode: tokens generated per run, at least 2.  [default: 64]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the results as JSON.")
@click.pass_context
def command(ctx: click.Context, models: tuple[str, ...], device: str, batch: int, seq: int,
            warmup: int | None, iters: int | None, threads: int | None, shapes: tuple[str, ...],
            spin: bool, decode: bool, context: int | None, new_tokens: int | None,
            json_path: str | None) -> None:
    """Measure latency percentiles, throughput and peak memory of MODELS.

    Each model is timed alone; with several models they are then timed interleaved in
    blocks in this one process and compared with the first (speedup = first p50 / p50).

    With --decode, MODELS are decoders (edgert.Generator) and each run is one generation:
    a prompt of random token ids (--context of them), then new tokens (--new-tokens).
    Prefill is the time to the first token; the gaps between the next tokens give the
    per-token latency (speedup = first decode p50 / decode p50). Several decoders are
    timed in rounds of one run each, after a warm-up.
    """
    flags = {"seq": "--seq", "shapes": "--shape", "spin": "--spin" if spin else "--no-spin"}
    given = [flag for name, flag in flags.items()
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if decode and given:
        raise InputError(f"{given[0]} does not apply to --decode"
                         + (" (use --context and --new-tokens)" if given[0] != flags["spin"] else
                            " (edgert.Generator keeps ONNX Runtime's default)"))
    if not decode and (context is not None or new_tokens is not None):
        raise InputError(f"{'--context' if context is not None else '--new-tokens'} needs --decode")
    if decode:
        given_counts = {"context": context, "new_tokens": new_tokens, "warmup": warmup, "iters": iters}
        config = DecodeConfig(**{k: v for k, v in given_counts.items() if v is not None}, batch=batch,
                              threads=threads, device=device).check()
    else:
        config = BenchConfig(batch=batch, seq=seq, warmup=10 if warmup is None else warmup,
                             iters=100 if iters is None else iters, threads=threads, device=device,
                             shapes=parse_shape_overrides(shapes), spin=spin).check()
    if json_path:
        check_output_path(json_path, inputs=models)
    report = _measure(models, config, decode)
    console = Console()
    for table in (_decode_tables(report) if decode else _tables(report)):
        console.print(table)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    if json_path:
        write_text_atomic(json_path, json.dumps(report.to_dict(), indent=1), inputs=models)
        console.print(f"wrote {escape(json_path)}")


def _measure(models: tuple[str, ...], config, decode: bool):
    """Run bench_models or bench_decode with a progress bar on a terminal's stderr."""
    columns = (TextColumn("bench"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    err = Console(stderr=True)
    total = total_decode_runs(len(models), config) if decode else total_iterations(len(models), config)
    # no bar when stderr is not a terminal: a log file would get its last frame and a blank line
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task("bench", total=total)
        run = bench_decode if decode else bench_models
        return run(models, config, progress=lambda n: progress.advance(task, n))


def _tables(report) -> list[Table]:
    """Latency percentiles in one table, everything else in a second. Both fit 80 columns:
    a long model file name folds onto several lines of its column, whole."""
    config = report.config
    mode = "interleaved in blocks" if report.interleaved else "alone"
    latency = Table(title=f"latency ms: {report.device}, batch {config.batch}, seq {config.seq}, "
                          f"threads {config.threads or 'default'}, {config.iters} iters, {mode}")
    facts = Table(title="throughput, peak memory, start-up"
                  + ("; speedup = p50 of #1 / p50" if report.interleaved else ""))
    _add_columns(latency, ("mean", "p50", "p90", "p95", "p99", "max", "std"))
    _add_columns(facts, ("inf/s", "items/s", "RSS MB", "load s", "first ms")
                 + (("speedup",) if report.interleaved else ()))
    for index, r in enumerate(report.models, 1):
        lat = r.latency_ms
        name = escape(Path(r.path).name)
        latency.add_row(str(index), name, *(f"{v:.2f}" for v in
                                            (lat.mean, lat.p50, lat.p90, lat.p95, lat.p99, lat.max, lat.std)))
        facts.add_row(str(index), name, f"{r.throughput_per_s:.1f}", f"{r.items_per_s:.1f}",
                      f"{r.peak_rss_mb:.0f}", f"{r.session_s:.2f}", f"{r.first_ms:.1f}",
                      *_speedup_cell(r, report.interleaved))
    _caption_disagreement(facts, report.models)
    return [latency, facts]


def _speedup_cell(result, interleaved: bool) -> tuple[str, ...]:
    """The speedup column's cell (none when models were timed alone); (!) when the model's
    alone and interleaved medians disagree."""
    if not interleaved:
        return ()
    return (f"{result.speedup_vs_first:.2f}x" + ("" if result.alone_agrees else " (!)"),)


def _caption_disagreement(facts: Table, results) -> None:
    if not all(r.alone_agrees for r in results):
        facts.caption = "(!) alone and interleaved medians disagree: see the warning below"


def _add_columns(table: Table, numbers: tuple[str, ...]) -> None:
    """#, model, then right-aligned number columns."""
    table.add_column("#", justify="right")
    table.add_column("model", overflow="fold", min_width=8)
    for column in numbers:
        table.add_column(column, justify="right", no_wrap=True)


def _decode_tables(report) -> list[Table]:
    """Prefill and per-token latency in one table, throughput and memory in a second; both
    fit 80 columns like _tables."""
    config = report.config
    mode = "interleaved in rounds" if report.interleaved else "alone"
    latency = Table(title=f"decode ms: {report.device}, batch {config.batch}, context {config.context}, "
                          f"{config.new_tokens} new tokens, threads {config.threads or 'default'}, "
                          f"{config.iters} runs, {mode}")
    facts = Table(title="tokens/s, KV cache, peak memory, start-up"
                  + ("; speedup = decode p50 of #1 / p50" if report.interleaved else ""))
    _add_columns(latency, ("prefill", "mean", "p50", "p90", "p99", "max"))
    _add_columns(facts, ("tok/s", "KV cache", "RSS MB", "load s") + (("speedup",) if report.interleaved else ()))
    latency.caption = "prefill = time to first token (median run); the rest: ms between tokens"
    for index, r in enumerate(report.models, 1):
        lat = r.decode_ms
        name = escape(Path(r.path).name)
        latency.add_row(str(index), name, *(f"{v:.2f}" for v in
                                            (r.prefill_ms.p50, lat.mean, lat.p50, lat.p90, lat.p99, lat.max)))
        facts.add_row(str(index), name, f"{r.tokens_per_s:.1f}", format_bytes(r.kv_bytes),
                      f"{r.peak_rss_mb:.0f}", f"{r.session_s:.2f}", *_speedup_cell(r, report.interleaved))
    _caption_disagreement(facts, report.models)
    return [latency, facts]

