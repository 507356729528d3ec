"""edgert run MODEL --text ..."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from edgert.devices import DEVICES
from edgert.errors import EdgertError


@click.command("run")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--text", "texts", multiple=True, help="Text to embed (repeat for a batch).")
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False),
              help="An .npz file of named input arrays, instead of --text.")
@click.option("--output", "output_name", default=None, help="Which output (default: the first).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Save the output to this .npy file instead of printing it.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
def command(model: str, texts: tuple[str, ...], inputs_path: str | None, output_name: str | None,
            out_path: str | None, device: str, threads: int | None) -> None:
    """Run MODEL on text (tokenized with the tokenizer stored in the model) or on arrays."""
    import edgert
    from edgert._io import atomic_output

    if bool(texts) == bool(inputs_path):
        raise EdgertError("give either --text (one or more) or --inputs FILE.npz")
    session = edgert.load(model, device=device, threads=threads)
    if texts:
        feeds = session.tokenizer(list(texts))
    else:
        feeds = _load_npz(Path(inputs_path))
    name = output_name or session.output_names[0]
    result = session.run(feeds, [name])[name]
    if out_path:
        with atomic_output(out_path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, result)
        click.echo(f"saved {name} {list(result.shape)} to {out_path}")
        return
    click.echo(f"{name} {result.dtype}{list(result.shape)}")
    click.echo(np.array2string(result, threshold=result.size + 1, precision=6, max_line_width=100))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise EdgertError(f"inputs file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise EdgertError(f"cannot read {path} as .npz: {exc}") from None
