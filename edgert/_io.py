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
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from edgert.errors import EdgertError, OutputPathError, first_line, shown_path

# Temporary files and folders being written right now, so a signal handler can remove them.
PENDING_OUTPUTS: set[Path] = set()
# Outputs this process has finished writing (an interrupt message names them).
WRITTEN_OUTPUTS: list[Path] = []
# Temporary files being renamed onto their outputs right now: {temporary: output}.
RENAMING: dict[Path, Path] = {}
# errno values that mean the disk (or the user's quota or file-size limit) is full.
DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# Characters of the output's name that its temporary twin (".NAME.1a2b3c4d.tmp") carries.
_TEMPORARY_NAME_CHARS = 32


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


def input_file(value: object, what: str, error: type[EdgertError]) -> Path:
    """`value` as the Path of an existing regular file, or `error` naming `what` and the path:
    missing, a folder, a device or pipe, or a path the OS refuses (a name too long, a symlink
    loop, a permission denied)."""
    path = path_argument(value, f"{what} path", error)
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise error(f"{what} not found: {shown_path(path)}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {shown_path(path)}: {exc.strerror or first_line(exc)}") from None
    if stat.S_ISDIR(mode):
        raise error(f"{what} is a folder, not a file: {shown_path(path)}")
    if not stat.S_ISREG(mode):
        raise error(f"{what} is not a regular file: {shown_path(path)}")
    return path


def check_output_path(path: str | os.PathLike, *, inputs: Iterable[object] = ()) -> Path:
    """Return `path` as a Path after checking that edgert may write it.

    Its directory must exist and be writable; an existing entry must be a regular file
    (devices, pipes and pseudo-files are refused rather than replaced); it must not be any of
    `inputs` (None entries are ignored), nor lie inside an input that is a folder (a model
    directory, an image folder). Paths are compared after resolving symbolic links. A path
    the OS refuses (a name too long, a symlink loop, a permission denied) is an
    OutputPathError naming it.
    """
    path = path_argument(path, "output path")
    parent = path.parent
    with os_errors(path, "write"):
        if not parent.is_dir():
            raise OutputPathError(f"output directory does not exist: {shown_path(parent)}")
        if path.is_dir():
            raise OutputPathError(f"output path is a directory: {shown_path(path)}")
        if os.path.lexists(path) and not path.is_file():
            raise OutputPathError(f"output path exists and is not a regular file: {shown_path(path)}")
        if not os.access(parent, os.W_OK):
            raise OutputPathError(f"output directory is not writable: {shown_path(parent)}")
    for item in inputs:
        if item is None or not isinstance(item, (str, os.PathLike)) or isinstance(item, bytes):
            continue
        if _same_file(path, item):
            raise OutputPathError(f"output {shown_path(path)} is the same file as input {shown_path(item)}; "
                                  "choose another output path")
        if _inside_folder(path, item):
            raise OutputPathError(f"output {shown_path(path)} lies inside input folder {shown_path(item)}; "
                                  "choose a path outside it")
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
                raise OutputPathError(f"two outputs are the same file: {shown_path(earlier)} and {shown_path(path)}")
        checked.append(path)
    return checked


def _real_paths(path: os.PathLike | str) -> set[str]:
    """Where `path` is on disk: the real path of its folder joined with its name (the entry a
    rename replaces) and, when that entry is a symbolic link, what it points to. Never raises:
    a path the OS cannot resolve (a loop, a name too long) is compared as written."""
    text = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(text)
    try:
        return {os.path.join(os.path.realpath(folder), name), os.path.realpath(text)}
    except ValueError:  # a NUL character: no file can have this name
        return {text}


def _same_file(a: os.PathLike | str, b: os.PathLike | str) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
    except (OSError, ValueError):  # one does not exist (yet), a loop, a name too long
        pass
    return bool(_real_paths(a) & _real_paths(b))


def _inside_folder(path: os.PathLike | str, folder: os.PathLike | str) -> bool:
    """Whether `path` lies (at any depth) inside `folder`, when `folder` is a folder."""
    try:
        if not os.path.isdir(folder):
            return False
    except ValueError:  # a NUL character
        return False
    real_folder = Path(os.path.realpath(folder))
    return any(Path(place) != real_folder and Path(place).is_relative_to(real_folder)
               for place in _real_paths(path))


def os_error(exc: OSError, path: object, doing: str) -> EdgertError:
    """The OutputPathError for an OSError the OS raised while edgert was `doing` (e.g. "write")
    `path`: a full disk says so; anything else (ENAMETOOLONG, ELOOP, EACCES, EISDIR...) names
    the path and the OS's reason."""
    if exc.errno in DISK_FULL:
        return OutputPathError(f"no space left writing {shown_path(path)} ({os.strerror(exc.errno)}); "
                               "nothing was written")
    return OutputPathError(f"cannot {doing} {shown_path(path)}: {exc.strerror or first_line(exc)}")


@contextlib.contextmanager
def os_errors(path: object, doing: str) -> Iterator[None]:
    """Turn an OSError raised inside into os_error(exc, path, doing)."""
    try:
        yield
    except OSError as exc:
        raise os_error(exc, path, doing) from None


def temporary_root() -> Path:
    """The folder for temporary files ($TMPDIR, else the system's), or OutputPathError when no
    folder can be written (tempfile tries writing a byte in each candidate, which fails under
    a full disk or `ulimit -f 0`)."""
    try:
        return Path(tempfile.gettempdir())
    except OSError as exc:
        raise OutputPathError(f"no usable folder for temporary files ({first_line(exc)}); set TMPDIR "
                              "to a writable folder with free space") from None


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
        except OSError as exc:
            PENDING_OUTPUTS.discard(path)
            raise os_error(exc, folder, "create a temporary file in") from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, inputs: Iterable[object] = ()) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it onto `path`.

    On any exception (including KeyboardInterrupt) the temporary file is removed and
    `path` is left untouched. A full disk becomes an OutputPathError. The file gets the
    permissions a plain `open()` would give it (0666 less the umask), not mkstemp's 0600.
    """
    path = check_output_path(path, inputs=inputs)
    # The temporary name carries the start of the output's name (for a user who finds one left
    # by a kill -9) but stays short: a 250-character output name is legal, its twin may not be.
    tmp = reserve_temporary(path.parent, f".{path.name[:_TEMPORARY_NAME_CHARS]}.", ".tmp")
    try:
        with disk_full_as_error(path):
            yield tmp
        with os_errors(path, "write"):
            os.chmod(tmp, 0o666 & ~current_umask())
            RENAMING[tmp] = path
            os.replace(tmp, path)
        WRITTEN_OUTPUTS.append(path)
    finally:
        RENAMING.pop(tmp, None)
        PENDING_OUTPUTS.discard(tmp)
        remove_pending(tmp)


def written_outputs() -> list[Path]:
    """The outputs this process has finished writing, for an interrupt handler: WRITTEN_OUTPUTS
    and any output renamed into place whose entry there was not yet made (a signal handler
    runs between any two bytecodes, so also between the rename and the append)."""
    renamed = [path for tmp, path in list(RENAMING.items()) if not os.path.lexists(tmp)]
    return [*WRITTEN_OUTPUTS, *(p for p in renamed if p not in WRITTEN_OUTPUTS)]


@contextlib.contextmanager
def temporary_directory(prefix: str = "edgert-") -> Iterator[Path]:
    """A temporary folder (under $TMPDIR) removed on exit, on error and on SIGINT/SIGTERM."""
    folder = reserve_temporary(temporary_root(), prefix, directory=True)
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
            raise os_error(exc, where, "write") from None
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
