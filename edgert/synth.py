"""Synthesise benchmark inputs from a model's input signature and manifest."""

from __future__ import annotations

import numbers

import numpy as np

from edgert.errors import OptionError, ShapeError
from edgert.session import CONVENTIONAL_DIMS, CONVENTIONAL_INPUTS, Session, TensorSpec

__all__ = ["CONVENTIONAL_DIMS", "CONVENTIONAL_INPUTS", "parse_shape_overrides", "resolve_shape",
           "synthesize_inputs"]


def parse_shape_overrides(items: tuple[str, ...] | list[str]) -> dict[str, tuple[int, ...]]:
    """Parse `NAME:2x128` strings into {NAME: (2, 128)}."""
    if isinstance(items, str) or not isinstance(items, (tuple, list)):
        raise ShapeError("shape overrides must be a list of NAME:DIMxDIM strings, "
                         f"got {type(items).__name__}")
    shapes = {}
    for item in items:
        if not isinstance(item, str):
            raise ShapeError(f"bad --shape of type {type(item).__name__}; expected a NAME:DIMxDIM string")
        name, sep, dims = item.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.lower().split("x"))
            if any(d < 1 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise ShapeError(f"bad --shape {item!r}; expected NAME:DIMxDIM..., "
                             "e.g. input_ids:1x128") from None
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


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise OptionError(f"{name} must be a whole number >= 1, got {value!r}"
                          if isinstance(value, (numbers.Number, str)) else
                          f"{name} must be a whole number >= 1, got {type(value).__name__}")
    return int(value)


def synthesize_inputs(session: Session, *, batch: int, seq: int,
                      overrides: dict[str, tuple[int, ...]] | None = None,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Make one input dict that fits `session`: token ids, an all-ones attention mask,
    zero token types, and standard-normal floats.

    The shapes are checked against the model's limits (Session.check_shapes: sequence
    length, available memory) before anything is allocated.
    """
    if not isinstance(session, Session):
        raise OptionError(f"session must be an edgert Session, got {type(session).__name__}")
    batch, seq = _positive("batch", batch), _positive("seq", seq)
    if overrides is not None and not isinstance(overrides, dict):
        raise ShapeError(f"overrides must be a dict of input name to shape, got {type(overrides).__name__}")
    manifest = session.manifest
    dim_roles = manifest.dims if manifest else {}
    vocab = session.vocab_size or 1000
    shapes = {spec.name: resolve_shape(spec, {"batch": batch, "sequence": seq}, dim_roles, overrides or {})
              for spec in session.inputs}
    session.check_shapes(shapes, allocating=True)
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in session.inputs:
        shape = shapes[spec.name]
        role = session.input_role(spec.name)
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

