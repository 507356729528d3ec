"""Reading .npz files of named arrays, sizes first: every array's shape and dtype come from
its header, and the arrays are loaded only once their total fits the memory available (a
compressed .npz of zeros a few KiB long can declare arrays of any size)."""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np

from edgert._io import input_file
from edgert.errors import EdgertError, first_line, shown_path
from edgert.memory import check_memory


def npz_headers(path: str | os.PathLike, what: str,
                error: type[EdgertError]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} of the .npz at `path`, read from the headers alone;
    `error` naming `what` and the file if it is missing or not an .npz of plain arrays."""
    path = input_file(path, what, error)
    try:
        with zipfile.ZipFile(path) as archive:
            headers = {}
            for member in archive.namelist():
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
                headers[member.removesuffix(".npy")] = (tuple(shape), dtype)
            return headers
    except Exception as exc:  # zipfile and numpy raise several types for a file that is not an .npz
        raise error(f"cannot read {shown_path(path)} as .npz: {first_line(exc)}") from None


def load_npz(path: str | os.PathLike, what: str, error: type[EdgertError]) -> dict[str, np.ndarray]:
    """The arrays of the .npz at `path`, after checking from their headers that they fit the
    memory available; `error` naming `what` and the file otherwise."""
    headers = npz_headers(path, what, error)
    check_memory(sum(math.prod(shape) * dtype.itemsize for shape, dtype in headers.values()),
                 f"loading the arrays of {what} {shown_path(path)}", error=error)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # numpy raises several types for a corrupt member or object arrays
        raise error(f"cannot read {shown_path(path)} as .npz: {first_line(exc)}") from None
