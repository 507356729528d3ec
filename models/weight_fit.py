"""Whether a checkpoint's tensors fit the model they are loaded into, said in one line.

Both loaders use it: vision checkpoints (models/vision_checkpoints.py) and Hugging Face
directories (exporters/hf_loading.py). A checkpoint that lacks some of the model's
parameters, carries tensors the model has no place for, or holds a tensor of another shape
is another model's weights; loading it anyway would leave random values in the model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from edgert.errors import CheckpointError

SHOWN_KEYS = 3  # keys named per kind of problem; the rest are counted


def natural_key(key: str) -> list:
    """A sort key that compares the numbers in `key` as numbers (layers.2 before layers.10)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def check_fit(subject: str, owner: str, *, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
              mismatched: Sequence[tuple[str, Sequence[int], Sequence[int]]] = (),
              hint: str | None = None) -> None:
    """Raise CheckpointError `{subject}: ...` naming the first few missing, unexpected (not a
    parameter of `owner`) and mismatched keys, in the order given; return when all are empty.
    mismatched: (key, shape in the checkpoint, shape in the model)."""
    parts = []
    if mismatched:
        key, theirs, ours = mismatched[0]
        more = f" (and {len(mismatched) - 1} more of another shape)" if len(mismatched) > 1 else ""
        parts.append(f"{key} has shape {list(theirs)} in the checkpoint, {list(ours)} in the model{more}")
    if missing:
        parts.append(f"{_first_keys(missing)} {'is' if len(missing) == 1 else 'are'} missing")
    if unexpected:
        what = "is not a parameter" if len(unexpected) == 1 else "are not parameters"
        parts.append(f"{_first_keys(unexpected)} {what} of {owner}")
    if parts:
        raise CheckpointError(f"{subject}: {'; '.join(parts)}" + (f" ({hint})" if hint else ""))


def _first_keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f" (and {len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS else "")
