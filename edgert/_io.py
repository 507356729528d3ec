"""Safe file output: checked paths, atomic writes, and temporary files and folders that an
interrupt handler can remove.

Every file edgert writes goes through `atomic_output`: it is written to a temporary file beside
the target and renamed onto it only when complete, so an interrupted or failed run never
leaves a half-written file and never destroys the previous one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from edgert.errors import EdgertError, OutputPathError, first_line

# Temporary files and folders being written right now, so a signal handler can remove them.
PENDING_OUTPUTS: set[Path] = set()
# Outputs this process has finished writing (an interrupt message names them).
WRITTEN_OUTPUTS: list[Path] = []
# errno values that mean the disk (or the user's quota or file-size limit) is full.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def path_argument(value: object, what: str = "path",
                  error: type[EdgertError] = OutputPathError) -> Path:
    """`value` as a Path, or `error` naming `what` unless it is a non-empty str or
    os.PathLike without NUL characters (the checks every path argument of edgert gets)."""
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise error(f"{what} must be a str or os.PathLike, got {type(value).__name__}")
    try:
        path = Path(value)
    except TypeError as exc:  # a PathLike whose __fspath__ returns bytes
        raise error(f"{what} must be a str or os.PathLike: {first_line(exc)}") from None
    if not str(value).strip():
        raise error(f"{what} is empty")
    if "\0" in str(path):
        raise error(f"{what} contains a NUL character")
    return path


def check_output_path(path: str | os.PathLike, *, inputs: Iterable[object] = ()) -> Path:
    """Return `path` as a Path after checking that edgert may write it.

    Its directory must exist and be writable; an existing entry must be a regular file
    (devices, pipes and pseudo-files are refused rather than replaced); and it must not be
    the same file as any of `inputs` (None entries are ignored).
    """
    path = path_argument(path, "output path")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"output directory does not exist: {parent}")
    if path.is_dir():
        raise OutputPathError(f"output path is a directory: {path}")
    if os.path.lexists(path) and not path.is_file():
        raise OutputPathError(f"output path exists and is not a regular file: {path}")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"output directory is not writable: {parent}")
    for item in inputs:
        if item is not None and _same_file(path, item):
            raise OutputPathError(f"output {path} is the same file as input {item}; "
                                  "choose another output path")
    return path


def check_outputs(outputs: Sequence[object], *, inputs: Iterable[object] = ()) -> list[Path]:
    """check_output_path for each of `outputs` (None entries skipped), which must also all
    be different files."""
    inputs = [i for i in inputs if i is not None]
    checked: list[Path] = []
    for item in outputs:
        if item is None:
            continue
        path = check_output_path(item, inputs=inputs)
        for earlier in checked:
            if _same_file(path, earlier):
                raise OutputPathError(f"two outputs are the same file: {earlier} and {path}")
        checked.append(path)
    return checked


def _same_file(a: os.PathLike, b: object) -> bool:
    if not isinstance(b, (str, os.PathLike)) or isinstance(b, bytes):
        return False
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return Path(os.path.abspath(a)).resolve() == Path(os.path.abspath(b)).resolve()


def reserve_temporary(folder: Path, prefix: str, suffix: str = "", *, directory: bool = False) -> Path:
    """Create a new, empty temporary file (or folder) in `folder`, registered for removal.

    The name is registered *before* the file exists: a signal handler may run between any
    two bytecodes, so registering after creating could leak the file.
    """
    while True:
        path = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        PENDING_OUTPUTS.add(path)
        try:
            if directory:
                path.mkdir(mode=0o700)
            else:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return path
        except FileExistsError:
            PENDING_OUTPUTS.discard(path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, inputs: Iterable[object] = ()) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it onto `path`.

    On any exception (including KeyboardInterrupt) the temporary file is removed and
    `path` is left untouched. A full disk becomes an OutputPathError. The file gets the
    permissions a plain `open()` would give it (0666 less the umask), not mkstemp's 0600.
    """
    path = check_output_path(path, inputs=inputs)
    tmp = reserve_temporary(path.parent, f".{path.name}.", ".tmp")
    try:
        with disk_full_as_error(path):
            yield tmp
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, path)
        WRITTEN_OUTPUTS.append(path)
    finally:
        PENDING_OUTPUTS.discard(tmp)
        remove_pending(tmp)


@contextlib.contextmanager
def temporary_directory(prefix: str = "edgert-") -> Iterator[Path]:
    """A temporary folder (under $TMPDIR) removed on exit, on error and on SIGINT/SIGTERM."""
    folder = reserve_temporary(Path(tempfile.gettempdir()), prefix, directory=True)
    try:
        with disk_full_as_error(folder):
            yield folder
    finally:
        PENDING_OUTPUTS.discard(folder)
        remove_pending(folder)


@contextlib.contextmanager
def tempfiles_in(folder: Path) -> Iterator[None]:
    """Make the `tempfile` module create its files and folders inside `folder` (a registered
    temporary directory) for the duration, so that libraries' own temporaries (ONNX Runtime's
    quantization tools make several) are removed with it, interrupts included."""
    previous = tempfile.tempdir
    tempfile.tempdir = str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = previous


@contextlib.contextmanager
def disk_full_as_error(where: Path) -> Iterator[None]:
    """Turn a full disk (ENOSPC, EDQUOT, EFBIG) while writing under `where` into one line."""
    try:
        yield
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise OutputPathError(f"no space left writing {where} ({os.strerror(exc.errno)}); "
                                  "nothing was written") from None
        raise


def current_umask() -> int:
    """The process umask (reading it means setting it; it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_pending(*paths: Path) -> None:
    """Delete the given temporary files or folders (default: all pending ones)."""
    for tmp in paths or tuple(PENDING_OUTPUTS):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str, *, inputs: Iterable[object] = ()) -> None:
    """Write `text` to `path` atomically."""
    with atomic_output(path, inputs=inputs) as tmp:
        tmp.write_text(text)
