"""Synthesise benchmark inputs from a model's input signature and manifest."""

from __future__ import annotations

import numpy as np

from edgert.errors import ShapeError
from edgert.session import Session, TensorSpec

# Dimension and input names written by the common exporters (torch.onnx, Optimum, edgert),
# used only when the model carries no edgert manifest saying what its dims mean.
CONVENTIONAL_DIMS = {
    "batch": "batch", "batch_size": "batch", "N": "batch",
    "sequence": "sequence", "sequence_length": "sequence", "seq_len": "sequence",
    "seq": "sequence", "S": "sequence",
}
CONVENTIONAL_INPUTS = {
    "input_ids": "input_ids", "attention_mask": "attention_mask",
    "token_type_ids": "token_type_ids", "position_ids": "position_ids",
}


def parse_shape_overrides(items: tuple[str, ...] | list[str]) -> dict[str, tuple[int, ...]]:
    """Parse `NAME:2x128` strings into {NAME: (2, 128)}."""
    shapes = {}
    for item in items:
        name, sep, dims = item.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
            if any(d < 1 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise ShapeError(f"bad --shape {item!r}; expected NAME:DIMxDIM..., e.g. input_ids:1x128") from None
    return shapes


def resolve_shape(spec: TensorSpec, sizes: dict[str, int], dim_roles: dict[str, str],
                  overrides: dict[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Concrete shape for `spec`: overrides first, then static dims, then dims by role."""
    if spec.name in overrides:
        shape = overrides[spec.name]
        if len(shape) != len(spec.shape):
            raise ShapeError(f"--shape {spec.name} has rank {len(shape)}, the input has "
                             f"rank {len(spec.shape)} ({spec.describe()})")
        return shape
    shape = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            shape.append(dim)
            continue
        role = dim_roles.get(dim) if dim else None
        if role is None and dim:
            role = CONVENTIONAL_DIMS.get(dim)
        if role not in sizes:
            label = f"dimension {dim!r}" if dim else "an unnamed dynamic dimension"
            raise ShapeError(f"cannot resolve {label} (axis {axis}) of input {spec.describe()}; "
                             f"give the shape with --shape {spec.name}:" + "x".join(
                                 str(d) if isinstance(d, int) else "N" for d in spec.shape))
        shape.append(sizes[role])
    return tuple(shape)


def synthesize_inputs(session: Session, *, batch: int, seq: int,
                      overrides: dict[str, tuple[int, ...]] | None = None,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Make one input dict that fits `session`: token ids, an all-ones attention mask,
    zero token types, and standard-normal floats."""
    manifest = session.manifest
    dim_roles = manifest.dims if manifest else {}
    input_roles = manifest.inputs if manifest else {}
    vocab = (manifest.text or {}).get("vocab_size", 1000) if manifest else 1000
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in session.inputs:
        shape = resolve_shape(spec, {"batch": batch, "sequence": seq}, dim_roles, overrides or {})
        role = input_roles.get(spec.name) or CONVENTIONAL_INPUTS.get(spec.name)
        if spec.dtype.kind == "f":
            array = rng.standard_normal(shape).astype(spec.dtype)
        elif role == "input_ids":
            array = rng.integers(1000 if vocab > 2000 else 0, vocab, size=shape).astype(spec.dtype)
        elif role == "attention_mask" or spec.dtype == np.bool_:
            array = np.ones(shape, dtype=spec.dtype)
        elif role == "position_ids" and shape:
            array = np.broadcast_to(np.arange(shape[-1]), shape).astype(spec.dtype)
        else:
            array = np.zeros(shape, dtype=spec.dtype)
        feeds[spec.name] = array
    return feeds
