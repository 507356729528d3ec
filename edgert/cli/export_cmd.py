"""edgert export SOURCE -o OUT.onnx"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from edgert.exporters.export import DEFAULT_ATOL, DEFAULT_OPSET, TASKS

STEPS = {"load": "loading model", "trace": "tracing with torch.onnx",
         "write": "writing graph, manifest and tokenizer", "validate": "validating against torch"}


@click.command("export")
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the ONNX model.")
@click.option("--task", type=click.Choice(TASKS), default=None,
              help="Graph outputs. Default: the built-in model's task, else feature-extraction.")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset.")
@click.option("--atol", type=float, default=DEFAULT_ATOL, show_default=True,
              help="Fail if any output differs from torch by more than this.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the export summary (manifest, seconds) as JSON.")
def command(source: str, output: str, task: str | None, opset: int, atol: float,
            json_path: str | None) -> None:
    """Export SOURCE (a built-in name such as `minilm`, or a local Hugging Face model
    directory) to a validated ONNX graph with dynamic batch and sequence axes.

    The tokenizer and a manifest (source, task, opset, validation diffs, head plan)
    travel inside the file.
    """
    from edgert._io import check_output_path, write_text_atomic
    from edgert.exporters.export import export

    if json_path:
        check_output_path(json_path)
    console = Console(stderr=True)
    with console.status("exporting") as status:
        result = export(source, output, task=task, opset=opset, atol=atol,
                        on_step=lambda s: status.update(STEPS[s]))
    table = Table(title=f"validation against torch (atol {atol:g})")
    table.add_column("output")
    table.add_column("max abs diff", justify="right")
    for name, diff in result.diffs.items():
        table.add_row(name, f"{diff:.3g}")
    out = Console()
    out.print(table)
    out.print(f"wrote {result.path} (task {result.manifest.task}, opset {opset}) "
              f"in {result.seconds:.1f} s")
    if json_path:
        summary = {"path": str(result.path), "seconds": result.seconds,
                   "manifest": json.loads(result.manifest.to_json())}
        write_text_atomic(json_path, json.dumps(summary, indent=1))
