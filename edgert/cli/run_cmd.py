"""edgert run MODEL --text ... | --inputs FILE.npz | --image PATH ..."""

from __future__ import annotations

import json
import textwrap

import click
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgert._io import atomic_output, check_outputs, write_text_atomic
from edgert.cli.options import WholeNumber
from edgert.devices import DEVICES
from edgert.errors import InputError, shown_path
from edgert.images import TOP_K, image_spec, load_image, preprocess, top_k
from edgert.npz import load_npz
from edgert.session import check_threads, load

WIDTH = 80  # every printed line fits a standard terminal
SUMMARY_ROWS = 8  # rows (items along the first axis) summarised before "... more rows"


@click.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--text", "texts", multiple=True, help="Text to embed (repeat for a batch).")
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False),
              help="An .npz file of named input arrays, instead of --text.")
@click.option("--image", "images", multiple=True, metavar="PATH",
              help="An image to classify (repeat for several), for image-classification models: "
                   "preprocessed as the model's manifest says, its top classes printed.")
@click.option("--top", "top", type=WholeNumber(1), default=None,
              help="With --image: how many of the most probable classes to show per image.  [default: 5]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="With --image: also write each image's top classes as JSON.")
@click.option("--output", "output_name", default=None, help="Which output (default: the first).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Save the output to this .npy file instead of printing it.")
@click.option("--full", is_flag=True,
              help="Print the whole output array, not a summary (norm, mean, first values per row).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
def command(model: str, texts: tuple[str, ...], inputs_path: str | None, images: tuple[str, ...], top: int | None,
            json_path: str | None, output_name: str | None, out_path: str | None, full: bool, device: str,
            threads: int | None) -> None:
    """Run MODEL on text (tokenized with the tokenizer stored in the model), on arrays, or
    on images (image-classification models).

    Prints the output's name, dtype and shape and, per row, its norm, mean and first
    values (--full: the whole array); --out saves it as .npy instead. With --image, prints
    each image's most probable classes (softmax of the logits) instead.
    """
    check_threads(threads)
    if sum(map(bool, (texts, inputs_path, images))) != 1:
        raise InputError("give one of --text (one or more), --inputs FILE.npz or --image PATH (one or more)")
    if (json_path or top) and not images:
        raise InputError(f"{'--json' if json_path else '--top'} needs --image"
                         + (" (--out saves other outputs)" if json_path else ""))
    if images and (full or output_name):
        raise InputError(f"{'--full' if full else '--output'} does not apply to --image")
    check_outputs([out_path, json_path], inputs=[model, inputs_path, *images])
    session = load(model, device=device, threads=threads)
    if images:
        _classify(session, images, top or TOP_K, json_path, out_path, model)
        return
    feeds = session.tokenizer(list(texts)) if texts else load_npz(inputs_path, "inputs file", InputError)
    name = output_name or session.output_names[0]
    result = session.run(feeds, [name])[name]
    if out_path:
        with atomic_output(out_path, inputs=[model, inputs_path]) as tmp, open(tmp, "wb") as f:
            np.save(f, result)
        click.echo(f"saved {name} {list(result.shape)} to {out_path}")
        return
    lines = _full(name, result) if full else summarize(name, result)
    click.echo("\n".join(lines))


def _classify(session, images: tuple[str, ...], top: int, json_path: str | None, out_path: str | None,
              model: str) -> None:
    """Preprocess `images` as the model's manifest says, run them one at a time and print a
    table of each one's `top` classes (or save the logits with --out); --json writes them."""
    spec, input_name = image_spec(session)
    output = next((s for s in session.outputs if s.name == "logits"), session.outputs[0])
    pixels = [preprocess(load_image(path), spec) for path in images]  # every file read before running
    logits = np.concatenate([session.run({input_name: p[None]}, [output.name])[output.name] for p in pixels])
    if logits.ndim != 2:
        raise InputError(f"{shown_path(session.path.name)}: output {output.name!r} has shape "
                         f"{list(logits.shape)}, not the logits [images, classes] of a classifier")
    written = [model, *images]
    ranked = top_k(logits, spec.labels, top)
    if out_path:
        with atomic_output(out_path, inputs=written) as tmp, open(tmp, "wb") as f:
            np.save(f, logits)
        click.echo(f"saved {output.name} {list(logits.shape)} to {out_path}")
    else:
        console = Console(width=WIDTH)
        for path, predictions in zip(images, ranked):
            console.print(_prediction_table(shown_path(path), predictions))
    if json_path:
        result = {"model": str(session.path), "output": output.name,
                  "images": [{"path": path, "top": [p.__dict__ for p in predictions]}
                             for path, predictions in zip(images, ranked)]}
        write_text_atomic(json_path, json.dumps(result, indent=1), inputs=written)
        click.echo(f"wrote {json_path}")


def _prediction_table(title: str, predictions) -> Table:
    """One image's top classes: rank, class index, label and probability."""
    table = Table(title=escape(title), min_width=min(len(title), WIDTH))  # a long path stays on one line
    for column in ("#", "class", "label", "probability"):
        table.add_column(column, justify="left" if column == "label" else "right", overflow="fold")
    for rank, p in enumerate(predictions, 1):
        table.add_row(str(rank), str(p.index), escape(p.label), f"{p.probability:.4f}")
    return table


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
