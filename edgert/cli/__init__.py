"""The `edgert` command. Each subcommand lives in its own module and is imported only
when it runs, so `edgert run` never pays for torch; onnxruntime itself (edgert.session) is
imported once a command is chosen, after the interrupt handlers are installed."""

from __future__ import annotations

import importlib
import os
import secrets
import signal
import sys
import warnings
from pathlib import Path

import click

from edgert._io import DISK_FULL, PENDING_OUTPUTS, remove_pending, temporary_root, written_outputs
from edgert.errors import EdgertError, first_line, shown_path

COMMANDS = {
    "export": ("edgert.cli.export_cmd", "Export a model to a validated ONNX graph."),
    "quantize": ("edgert.cli.quantize_cmd", "Quantize a model to INT8 with an accuracy guard."),
    "run": ("edgert.cli.run_cmd", "Run a model on text or .npz inputs."),
    "generate": ("edgert.cli.generate_cmd", "Generate tokens with an exported decoder (KV cache)."),
    "bench": ("edgert.cli.bench_cmd", "Profile latency, throughput and memory of models side by side."),
    "inspect": ("edgert.cli.inspect_cmd", "Show a model's signature, ops, parameters and manifest."),
    "analyze": ("edgert.cli.analyze_cmd", "Analyze activations (outliers) or kv heads (retrieval/streaming)."),
    "eval": ("edgert.cli.eval_cmd", "Evaluate an exported model's accuracy (passkey retrieval)."),
}


class EdgertGroup(click.Group):
    """Lazily loads subcommands and turns user errors into one line and exit code 2."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        from edgert.session import quiet_onnxruntime

        quiet_onnxruntime()  # every command runs ONNX Runtime; its C++ log must not reach users
        return importlib.import_module(COMMANDS[name][0]).command

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, help_) for name, (_, help_) in COMMANDS.items()])

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (EdgertError, OSError) as exc:
            report_error(exc)
        except click.ClickException as exc:
            raise one_line_usage_error(exc) from None
        except (click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug, not a user mistake: still one line, exit 1
            internal_error(exc)


def one_line_usage_error(exc: click.ClickException) -> click.ClickException:
    """`exc` with its message on one line: click lists a missing option's choices on lines of
    their own, after the `Error:` line, which must stay the last line on stderr."""
    message = exc.format_message()
    if "\n" not in message:
        return exc
    flat = " ".join(message.split())
    if isinstance(exc, click.UsageError):
        return click.UsageError(flat, exc.ctx)
    return click.ClickException(flat)


def report_error(exc: EdgertError | OSError) -> None:
    """Exit for an error a user can cause: one `Error:` line and code 2 for an EdgertError or a
    full disk, code 0 when the reader of stdout went away (`edgert ... | head`), else
    internal_error."""
    if isinstance(exc, EdgertError):
        fail(first_line(exc))
    if exc.errno in DISK_FULL:
        fail(f"no space left on the device ({os.strerror(exc.errno)}); nothing was written")
    if isinstance(exc, BrokenPipeError):
        os._exit(0)
    internal_error(exc)


def fail(message: str) -> None:
    """Print `Error: message` on stderr and exit with code 2."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def internal_error(exc: BaseException) -> None:
    """An unexpected exception: one line and exit code 1, the traceback only with EDGERT_DEBUG=1."""
    if os.environ.get("EDGERT_DEBUG"):
        raise exc
    click.echo(f"Error: internal error ({type(exc).__name__}: {first_line(exc)}); "
               "rerun with EDGERT_DEBUG=1 for the traceback and please report it", err=True)
    sys.exit(1)


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    click.echo(f"Warning: {message}", err=True)


def _interrupted(signum, frame):
    # Exit from the handler itself: torch.onnx.export retries other capture strategies
    # when tracing fails and can swallow a KeyboardInterrupt, so raising one is not enough.
    done = ", ".join(shown_path(p) for p in written_outputs())
    remove_pending()
    sys.stderr.write(f"Error: interrupted after writing {done} (complete); nothing else was written\n" if done
                     else "Error: interrupted; nothing was written\n")
    sys.stderr.flush()
    os._exit(2)


@click.group(cls=EdgertGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgert")
def cli() -> None:
    """edgert: export, quantize, benchmark and run attention-efficient transformers on edge devices."""


def _private_torch_cache() -> Path | None:
    """Point torch's compile cache, which torch.export creates under $TMPDIR and keeps, at a
    folder this run removes (unless the user chose one). Nothing is created here; when no
    temporary folder is usable (a full disk, `ulimit -f 0`), torch keeps its own default and
    the commands that need one say so."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return None
    try:
        root = temporary_root()
    except EdgertError:
        return None
    folder = root / f"edgert-torch-cache-{os.getpid()}-{secrets.token_hex(4)}"
    PENDING_OUTPUTS.add(folder)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


def main() -> None:
    """Console entry point."""
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    warnings.showwarning = _one_line_warning
    # ONNX Runtime's telemetry (in its Linux wheels) writes $TMPDIR/.ses and files under
    # ~/.cache/Microsoft/DeveloperTools at import; a command leaves nothing behind but its outputs.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    torch_cache = _private_torch_cache()
    code: object = 1
    try:
        try:
            cli()
        except OSError as exc:  # outside any command: --help or --version writing to a full disk
            report_error(exc)
    except SystemExit as exc:  # click's standalone mode ends every run with one
        code = exc.code
    finally:
        if torch_cache is not None:
            remove_pending(torch_cache)
    _exit_now(code)


def _exit_now(code: object) -> None:
    """Flush stdout and stderr and end the process without Python's shutdown: that shutdown
    restores the default handlers of SIGINT and SIGTERM before it tears down the modules
    (ONNX Runtime sessions, torch), so a signal arriving then would end the process with
    130 or 143 and no Error: line, although every output is complete. Outputs were all
    written (atomically) before; nothing is left to flush but these two streams."""
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): Python prints it and exits 1
        sys.stderr.write(f"{code}\n")
        code = 1
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # a reader that went away (`| head`), a closed stream
        pass
    except OSError as exc:  # stdout redirected to a full disk: the last of it was not written
        sys.stderr.write(f"Error: cannot write to stdout ({os.strerror(exc.errno) if exc.errno else exc})\n")
        code = code or 2
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os._exit(code)
