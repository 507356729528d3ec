"""Where a source name resolves: the one lookup behind `edgert export`, `analyze heads` and
`analyze kv-heads` (no torch).

A source is, looked up exactly in this order (never fuzzily):
- a built-in name: ZOO (models/zoo.py: `minilm`, `tiny-lm`), which locates a Hugging Face
  directory;
- a vision variant: VARIANTS (models/vision_configs.py: `efficientvit-m0` ... `shvit-s4`);
- a local Hugging Face directory.
A directory's config.json `model_type` names its family in FAMILIES (models/families.py),
and the family its kind. Every source resolves to a ModelSource naming its kind ("encoder",
"decoder" or "vision"); the exporter prepares each kind with the recipe RECIPES names for it
(exporters/recipe.py).

Adding a model: a transformers architecture of a known kind is a Family in FAMILIES (plus an
adapter in models/adapters.py if its heads are to be transformed); a built-in checkpoint is a
`register_model` function in models/zoo.py; a vision variant is an entry in VARIANTS; a new
kind is a recipe module named in RECIPES.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from edgert._io import path_argument
from edgert.errors import SourceError, UnknownModelError, first_line
from edgert.models.families import FAMILIES, family_of
from edgert.models.vision_configs import VARIANTS, VisionConfig
from edgert.models.zoo import ZOO

KINDS = ("encoder", "decoder", "vision")


@dataclass(frozen=True)
class ModelSource:
    """A resolved source: its kind, and where its weights or architecture come from."""

    name: str  # as the user gave it (a directory: as a path)
    kind: str  # one of KINDS
    directory: Path | None = None  # encoders and decoders: the Hugging Face model directory
    model_type: str | None = None  # encoders and decoders: config.json's model_type (a FAMILIES key)
    default_task: str | None = None  # built-in models: the task they export as by default
    variant: VisionConfig | None = None  # vision: the variant's registered architecture


def resolve_source(source: str | os.PathLike, *, kinds: Collection[str] = KINDS) -> ModelSource:
    """Resolve a built-in name, a vision variant or a local Hugging Face model directory.

    kinds: the kinds the caller takes; a source of another kind is a SourceError
    (require_kind). UnknownModelError lists the known names when `source` is none of these."""
    path = path_argument(source, "source", SourceError)
    name = source if isinstance(source, str) else str(path)
    if name in ZOO:
        entry = ZOO[name]
        resolved = _hugging_face(name, entry.locate(), entry.default_task)
    elif name in VARIANTS:
        resolved = ModelSource(name, "vision", variant=VARIANTS[name])
    else:
        resolved = _hugging_face(str(path), _model_directory(name, path), None)
    require_kind(resolved, kinds)
    return resolved


def require_kind(source: ModelSource, kinds: Collection[str]) -> None:
    """SourceError unless `source` is of one of `kinds`, saying which models would do."""
    if source.kind in kinds:
        return
    if source.kind == "vision":
        raise SourceError(f"{source.name} is a vision model: `edgert export {source.name}` builds it; "
                          "this command takes text models")
    wanted = " or ".join(k for k in kinds if k != "vision")
    supported = ", ".join(f.model_type for f in FAMILIES.values() if f.kind in kinds)
    raise SourceError(f"model type {source.model_type!r} is not a supported {wanted} (supported: {supported})")


def read_config(directory: Path) -> dict:
    """config.json of a Hugging Face model directory, as a dict."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {path}: {first_line(exc)}") from None
    if not isinstance(config, dict):
        raise SourceError(f"{path} is not a JSON object")
    return config


def _model_directory(name: str, path: Path) -> Path:
    """`path` as a Hugging Face model directory, or the error saying what it is instead."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceError(f"{path} has no config.json; expected a Hugging Face model directory")
        return path
    if path.exists():
        raise SourceError(f"{path} is a file; expected a built-in name or a Hugging Face model directory")
    raise UnknownModelError(f"unknown model {name!r}: not a built-in name "
                            f"({', '.join([*sorted(ZOO), *VARIANTS])}) nor an existing directory")


def _hugging_face(name: str, directory: Path, default_task: str | None) -> ModelSource:
    """The source of a Hugging Face directory, its kind from its config.json's model_type."""
    model_type = read_config(directory).get("model_type")
    return ModelSource(name, family_of(model_type).kind, directory, model_type, default_task)
