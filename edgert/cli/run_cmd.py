"""edgert run MODEL --text ... | --inputs FILE.npz"""

from __future__ import annotations

import textwrap
from pathlib import Path

import click
import numpy as np

from edgert.devices import DEVICES
from edgert.errors import InputError

WIDTH = 80  # every printed line fits a standard terminal
SUMMARY_ROWS = 8  # rows (items along the first axis) summarised before "... more rows"


@click.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--text", "texts", multiple=True, help="Text to embed (repeat for a batch).")
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False),
              help="An .npz file of named input arrays, instead of --text.")
@click.option("--output", "output_name", default=None, help="Which output (default: the first).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Save the output to this .npy file instead of printing it.")
@click.option("--full", is_flag=True,
              help="Print the whole output array, not a summary (norm, mean, first values per row).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
def command(model: str, texts: tuple[str, ...], inputs_path: str | None, output_name: str | None,
            out_path: str | None, full: bool, device: str, threads: int | None) -> None:
    """Run MODEL on text (tokenized with the tokenizer stored in the model) or on arrays.

    Prints the output's name, dtype and shape and, per row, its norm, mean and first
    values (--full: the whole array); --out saves it as .npy instead.
    """
    import edgert
    from edgert._io import atomic_output, check_output_path
    from edgert.session import check_threads

    check_threads(threads)
    if bool(texts) == bool(inputs_path):
        raise InputError("give either --text (one or more) or --inputs FILE.npz")
    if out_path:
        check_output_path(out_path, inputs=[model, inputs_path])
    session = edgert.load(model, device=device, threads=threads)
    feeds = session.tokenizer(list(texts)) if texts else _load_npz(Path(inputs_path))
    name = output_name or session.output_names[0]
    result = session.run(feeds, [name])[name]
    if out_path:
        with atomic_output(out_path, inputs=[model, inputs_path]) as tmp, open(tmp, "wb") as f:
            np.save(f, result)
        click.echo(f"saved {name} {list(result.shape)} to {out_path}")
        return
    lines = _full(name, result) if full else summarize(name, result)
    click.echo("\n".join(lines))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    from edgert.errors import first_line
    from edgert.errors import shown_path

    if not path.is_file():
        raise InputError(f"inputs file not found: {shown_path(path)}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # numpy raises several types for a file that is not an .npz
        raise InputError(f"cannot read {shown_path(path)} as .npz: {first_line(exc)}") from None


def _header(name: str, array: np.ndarray) -> list[str]:
    return textwrap.wrap(f"{name} {array.dtype}{list(array.shape)}", WIDTH, subsequent_indent="  ",
                         break_on_hyphens=False) or [""]


def _full(name: str, array: np.ndarray) -> list[str]:
    return _header(name, array) + [np.array2string(array, threshold=array.size + 1, precision=6,
                                                   max_line_width=WIDTH)]


def summarize(name: str, array: np.ndarray, *, rows: int = SUMMARY_ROWS, width: int = WIDTH) -> list[str]:
    """Lines describing `array` in `width` columns: a header, then for each of the first
    `rows` items along axis 0 its L2 norm, mean and as many leading values as fit."""
    lines = _header(name, array)
    if array.ndim == 0:
        return lines + [_value(array.item())]
    items = [array] if array.ndim == 1 else array[:rows]
    for index, row in enumerate(items):
        label = "  " if array.ndim == 1 else f"  [{index}] "
        lines.append(_row_line(label, np.asarray(row).ravel(), width))
    if array.ndim > 1 and len(array) > rows:
        lines.append(f"  ... {len(array) - rows} more rows (--full prints them, --out saves them)")
    return lines


def _row_line(label: str, values: np.ndarray, width: int) -> str:
    if values.size == 0:
        return f"{label}(empty)"
    numbers = values.astype(np.float64)
    line = (f"{label}norm {_value(float(np.linalg.norm(numbers)))}  "
            f"mean {_value(float(numbers.mean()))}  first:")
    for count, v in enumerate(values[:width].tolist()):  # each value takes 2+ columns
        more = "" if count == values.size - 1 else " ..."
        candidate = f"{line} {_value(v, signed=True)}"
        if len(candidate) + len(more) > width:
            return f"{line} ..."
        line = candidate
    return line


def _value(v: object, *, signed: bool = False) -> str:
    """A number in at most ~10 characters; `signed` pads positives with a space so columns align."""
    sign = " " if signed else ""
    if isinstance(v, float):
        plain = abs(v) < 1e4 and (v == 0 or abs(v) >= 1e-3)
        return f"{v:{sign}.4f}" if plain else f"{v:{sign}.3e}"
    return f"{v:{sign}d}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
