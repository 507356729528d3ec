"""The `edgert` command. Each subcommand lives in its own module and is imported only
when it runs, so `edgert run` never pays for torch."""

from __future__ import annotations

import importlib
import os
import signal
import sys
import warnings

import click

from edgert.errors import EdgertError

COMMANDS = {
    "export": ("edgert.cli.export_cmd", "Export a model to a validated ONNX graph."),
    "quantize": ("edgert.cli.quantize_cmd", "Quantize a model to INT8 with an accuracy guard."),
    "run": ("edgert.cli.run_cmd", "Run a model on text or .npz inputs."),
    "bench": ("edgert.cli.bench_cmd", "Profile latency, throughput and memory of models side by side."),
    "inspect": ("edgert.cli.inspect_cmd", "Show a model's signature, ops, parameters and manifest."),
    "analyze": ("edgert.cli.analyze_cmd", "Analyze activations (outliers) before quantizing."),
}


class EdgertGroup(click.Group):
    """Lazily loads subcommands and turns user errors into one line and exit code 2."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        return importlib.import_module(COMMANDS[name][0]).command

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgertError as exc:
            fail(str(exc))


def fail(message: str) -> None:
    """Print `Error: message` on stderr and exit with code 2."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"Warning: {message}", err=True)


def _interrupted(signum, frame):
    # Exit from the handler itself: torch.onnx.export retries other capture strategies
    # when tracing fails and can swallow a KeyboardInterrupt, so raising one is not enough.
    from edgert._io import remove_pending

    remove_pending()
    sys.stderr.write("Error: interrupted; nothing was written\n")
    sys.stderr.flush()
    os._exit(2)


@click.group(cls=EdgertGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgert")
def cli() -> None:
    """edgert: export, quantize, benchmark and run attention-efficient transformers on edge devices."""


def main() -> None:
    """Console entry point."""
    warnings.showwarning = _one_line_warning
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    cli()
