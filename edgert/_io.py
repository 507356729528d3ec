"""Atomic file output: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgert.errors import OutputPathError

# Temporary outputs being written right now, so a signal handler can remove them.
PENDING_OUTPUTS: set[Path] = set()


def check_output_path(path: str | os.PathLike) -> Path:
    """Return `path` as a Path after checking that its directory exists and is writable."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"output directory does not exist: {parent}")
    if path.is_dir():
        raise OutputPathError(f"output path is a directory: {path}")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"output directory is not writable: {parent}")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it onto `path`.

    On any exception (including KeyboardInterrupt) the temporary file is removed and
    `path` is left untouched, so an interrupted run never leaves a half-written file.
    """
    path = check_output_path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    PENDING_OUTPUTS.add(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        PENDING_OUTPUTS.discard(tmp)
        remove_pending(tmp)


def remove_pending(*paths: Path) -> None:
    """Delete the given temporary outputs (default: all pending ones), ignoring missing files."""
    for tmp in paths or tuple(PENDING_OUTPUTS):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)
