"""edgert analyze outliers MODEL --calib PATH"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table


@click.group("analyze")
def command() -> None:
    """Analyze a model before quantizing or pruning it."""


@command.command("outliers")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", "calib_path", required=True, type=click.Path(),
              help="Calibration data: a .txt file (one example per line) or an .npz of inputs.")
@click.option("--calib-size", type=int, default=64, show_default=True,
              help="Use at most this many examples.")
@click.option("--top", type=int, default=20, show_default=True, help="Rows to print.")
@click.option("--threads", type=int, default=None)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write every tensor's statistics as JSON.")
def outliers(model: str, calib_path: str, calib_size: int, top: int, threads: int | None,
             json_path: str | None) -> None:
    """Per activation tensor: max |x|, kurtosis and SQNR after fake INT8 (uint8,
    per-tensor, min/max range), worst SQNR first."""
    import edgert
    from edgert._io import check_output_path, write_text_atomic
    from edgert.quant.calib import load_calibration
    from edgert.quant.outliers import activation_stats

    if json_path:
        check_output_path(json_path)
    session = edgert.load(model, threads=threads)
    samples = load_calibration(calib_path, session, size=calib_size)
    columns = (TextColumn("activations"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        task = progress.add_task("stats", total=2 * len(samples))
        stats = activation_stats(model, samples, threads=threads,
                                 progress=lambda n: progress.advance(task, n))
    console = Console()
    console.print(outlier_table(stats[:top], f"{len(stats)} activation tensors over "
                                             f"{len(samples)} examples, worst SQNR first"))
    if json_path:
        write_text_atomic(json_path, json.dumps([s.to_dict() for s in stats], indent=1))


def outlier_table(stats, title: str) -> Table:
    """A table of TensorStats rows, worst first as given."""
    table = Table(title=title)
    for column in ("tensor", "op", "module", "max |x|", "kurtosis", "SQNR dB"):
        table.add_column(column, justify="left" if column in ("tensor", "op", "module") else "right")
    for s in stats:
        table.add_row(s.name, s.op_type, s.where, f"{s.max_abs:.3g}", f"{s.kurtosis:.1f}", f"{s.sqnr_db:.1f}")
    return table
