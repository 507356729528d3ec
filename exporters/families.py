"""What every family recipe hands the shared export steps, and what the recipes share.

A recipe (exporters/encoder.py, exporters/decoder.py) loads a Hugging Face model, applies the
head transform, and returns a `Prepared`: the torch module to trace, its input/output names
and dynamic axes, sample inputs, the manifest and the tokenizer. `export()` then only traces,
pins, validates and writes. A new family is a new recipe module named in RECIPES.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgert.errors import CalibrationError, SourceError, first_line
from edgert.models.families import family_of
from edgert.models.zoo import ModelSource
from edgert.plan import Manifest
from edgert.text import TextTokenizer

Feeds = dict[str, np.ndarray]
Step = Callable[[str], None]

# Family kind -> the module whose `prepare(source, request, step)` builds its Prepared.
RECIPES = {"encoder": "edgert.exporters.encoder", "decoder": "edgert.exporters.decoder"}


@dataclass
class ExportRequest:
    """What the user asked of `edgert export`, beyond source and output."""

    task: str | None = None
    transform: object = None  # exporters.heads.Transform
    calib: str | os.PathLike | None = None
    calib_size: int = 64
    optimize: bool = True
    checkpoint: str | os.PathLike | None = None  # vision models: timm-layout weights
    resolution: int | None = None  # vision models: input height and width
    custom_ops: bool = True  # vision models: attention as edgert ops (False: plain ONNX)


@dataclass
class Prepared:
    """A model ready to trace: module(*[trace[n] for n in input_names]) -> output_names."""

    module: object  # torch.nn.Module in eval mode
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]  # input -> {axis: dimension name}
    trace: Feeds
    checks: list[Feeds]  # differently shaped inputs to validate the graph on
    manifest: Manifest
    tokenizer_json: str | None = None
    ort_cpu_fusions: bool = False  # whether exporters/optimize.py's fusions apply
    reference: object = None  # the module to validate against, if not `module` (e.g. before BN folding)


def recipe_for(source: ModelSource):
    """(Family, recipe module) for a resolved source, from its config.json model_type."""
    family = family_of(read_config(source.directory).get("model_type"))
    return family, importlib.import_module(RECIPES[family.kind])


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


def load_config(source: ModelSource, kind: str):
    """The transformers config of `source` (offline), refusing families of another kind."""
    from transformers import AutoConfig

    from edgert.models.families import FAMILIES

    try:
        config = AutoConfig.from_pretrained(source.directory, local_files_only=True)
    except Exception as exc:
        raise SourceError(f"cannot read config of {source.directory}: {first_line(exc)}") from None
    family = FAMILIES.get(config.model_type)
    if family is None or family.kind != kind:
        supported = ", ".join(f.model_type for f in FAMILIES.values() if f.kind == kind)
        raise SourceError(f"model type {config.model_type!r} is not a supported {kind} (supported: {supported})")
    return config


def read_tokenizer(source: ModelSource) -> tuple[str | None, int | None]:
    """The fast tokenizer of `source` as tokenizer.json text, and its model_max_length."""
    from transformers import AutoTokenizer

    # transformers 5 builds an empty-vocabulary tokenizer for a directory with no tokenizer
    # files at all; such a tokenizer must not travel with the model.
    if not any((source.directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        warnings.warn(f"{source.directory} has no tokenizer; the model takes token ids only", stacklevel=2)
        return None, None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.directory, local_files_only=True)
    except Exception:
        warnings.warn(f"{source.directory} has no usable tokenizer; the model takes token ids only", stacklevel=2)
        return None, None
    if not getattr(tokenizer, "is_fast", False):
        warnings.warn(f"{source.directory} has a slow tokenizer, which edgert cannot use (only fast "
                      "`tokenizers` ones); the model takes token ids only", stacklevel=2)
        return None, None
    model_max = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else None
    return tokenizer.backend_tokenizer.to_str(), model_max


def load_pretrained(auto_class, source: ModelSource):
    """`auto_class.from_pretrained` offline with eager attention, in eval mode; SourceError on
    failure, naming the first tensor whose shape in the checkpoint differs from the one its
    config.json makes (transformers would refer to a load report that edgert keeps quiet)."""
    try:
        model, info = auto_class.from_pretrained(source.directory, local_files_only=True, attn_implementation="eager",
                                                 ignore_mismatched_sizes=True, output_loading_info=True)
    except Exception as exc:
        reason = first_line(exc)
        if "above report" in reason:  # transformers' weight conversion failed; its report is silenced
            reason = "transformers could not convert the checkpoint's weights to this model's layout"
        raise SourceError(f"cannot load weights of {source.directory}: {reason}") from None
    mismatched = sorted(info.get("mismatched_keys") or [])
    if mismatched:
        name, stored, wanted = mismatched[0]
        more = f" (and {len(mismatched) - 1} more tensors)" if len(mismatched) > 1 else ""
        raise SourceError(f"cannot load weights of {source.directory}: {name} is {list(stored)} in the checkpoint "
                          f"but {list(wanted)} by its config.json{more}")
    return model.eval()


def quiet_libraries() -> None:
    """Silence transformers' weight-loading bars and torch.onnx's registration warnings."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import torch.onnx  # noqa: F401  (torch sets its loggers' levels when this is imported)

    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class TorchInputs:
    """What load_calibration needs to know about a model that is not in ONNX yet."""

    def __init__(self, input_names: list[str], name: str, tokenizer_json: str | None, max_length: int):
        self.input_names = list(input_names)
        self.path = Path(name)
        self._tokenizer_json, self._max_length = tokenizer_json, max_length

    @property
    def tokenizer(self) -> TextTokenizer:
        if not self._tokenizer_json:
            raise CalibrationError("text calibration data needs a model with a tokenizer; this one has none")
        return TextTokenizer(self._tokenizer_json, max_length=self._max_length,
                             input_roles={n: n for n in self.input_names})

    def check_inputs(self, feeds):
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise CalibrationError(f"calibration data lacks input {missing[0]!r}")
        return {n: np.asarray(feeds[n], dtype=np.int64) for n in self.input_names}


def calibration_samples(inputs: TorchInputs, source: ModelSource, calib, calib_size: int,
                        step: Step) -> list[Feeds]:
    """Calibration feeds for a head transform: `calib`, else the built-in model's set
    (none: an empty list, and the transform says what it is missing)."""
    from edgert.quant.calib import BUNDLED, load_calibration

    calib = calib or BUNDLED.get(source.name, (None,))[0]
    if calib is None:
        return []
    step("calibration")
    return load_calibration(calib, inputs, size=calib_size)
