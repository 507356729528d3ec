"""The one recipe table, and what a recipe hands the shared export steps.

Every source resolves to a kind (models/sources.py); RECIPES names the module that prepares
each kind for export:

    encoder  exporters/encoder.py  BERT-family model -> hidden states or a sentence embedding
    decoder  exporters/decoder.py  Llama-family causal LM -> one step over a per-head KV cache
    vision   exporters/vision.py   EfficientViT-M / SHViT variant -> image classifier logits

Each entry also names the option group the kind takes (TextOptions or VisionOptions), so an
option of the other kind is refused before anything loads. A recipe module has
`prepare(source, task, options, step) -> Prepared`: it loads the model, applies what the
options ask, and returns the torch module to trace with its input/output names, dynamic
axes, sample inputs, manifest and tokenizer. `export()` (exporters/export.py) then only
traces, pins, optimizes, validates and writes. The text recipes also have `load(source)`,
which `edgert analyze heads` uses. A new kind is a new recipe module named in RECIPES.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgert._io import path_argument
from edgert.errors import CalibrationError, CheckpointError, OptionError
from edgert.exporters.optimize import Optimization
from edgert.models.sources import ModelSource
from edgert.models.vision_configs import VARIANTS, check_resolution
from edgert.plan import Manifest

Feeds = dict[str, np.ndarray]
Step = Callable[[str], None]

@dataclass(frozen=True)
class TextOptions:
    """What `edgert export` takes for text models (encoders and decoders) only."""

    transform: object = None  # exporters.heads.Transform: the attention heads' plan, pruning, GQA...
    calib: str | os.PathLike | None = None  # calibration data of the transform (.txt or .npz)
    calib_size: int = 64

    def check(self) -> None:
        """OptionError (CalibrationError for the path) for a value no export could use."""
        if self.calib is not None:
            path_argument(self.calib, "calibration data path", CalibrationError)
        if isinstance(self.calib_size, bool) or not isinstance(self.calib_size, int) or self.calib_size < 1:
            raise OptionError(f"calib_size must be a whole number >= 1, got {self.calib_size!r}")

    def refusal(self) -> str | None:
        """Why a recipe that does not take these options refuses them (the first one set),
        or None when none is set."""
        if self.transform is not None:
            return ("head transforms (--plan, --prune, --kv-heads, --softmax, --retrieval-heads) "
                    "apply to transformers text models, not to the vision variants")
        if self.calib is not None:
            return ("--calib at export feeds head transforms of text models; "
                    "vision models take calibration images at `edgert quantize --calib`")
        return None


@dataclass(frozen=True)
class VisionOptions:
    """What `edgert export` takes for vision models only."""

    checkpoint: str | os.PathLike | None = None  # timm-layout weights (None: random init)
    resolution: int | None = None  # input height and width (None: the checkpoint's or variant's)
    custom_ops: bool = True  # each attention one edgert op (False: plain ONNX)

    def check(self) -> None:
        """OptionError (CheckpointError for the path) for a value no export could use."""
        if self.checkpoint is not None:
            path_argument(self.checkpoint, "checkpoint path", CheckpointError)
        if self.resolution is not None:
            check_resolution(self.resolution)

    def refusal(self) -> str | None:
        """Why a recipe that does not take these options refuses them (the first one set),
        or None when none is set."""
        for value, option in ((self.checkpoint, "--checkpoint"), (self.resolution, "--resolution")):
            if value is not None:
                return f"{option} applies to the vision models ({', '.join(VARIANTS)})"
        if not self.custom_ops:
            return f"--no-custom-ops applies to the vision models ({', '.join(VARIANTS)})"
        return None


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
    # Switches the module to ONNX Runtime CPU's fused ops before tracing (where the fusion is
    # chosen in torch, not found in the graph afterwards); returns what it did.
    fuse_before_trace: Callable[[], Optimization] | None = None
    reference: object = None  # the module to validate against, if not `module` (e.g. before BN folding)


class Recipe(Protocol):
    """What a module named in RECIPES provides."""

    def prepare(self, source: ModelSource, task: str | None, options, step: Step) -> Prepared: ...


@dataclass(frozen=True)
class RecipeEntry:
    module: str  # the recipe module, imported when used (recipes need torch; --help must not)
    options: type  # the option group it takes


# Source kind (models/sources.py KINDS) -> its recipe.
RECIPES = {
    "encoder": RecipeEntry("edgert.exporters.encoder", TextOptions),
    "decoder": RecipeEntry("edgert.exporters.decoder", TextOptions),
    "vision": RecipeEntry("edgert.exporters.vision", VisionOptions),
}


def recipe_for(kind: str) -> Recipe:
    """The recipe module of a source kind."""
    return importlib.import_module(RECIPES[kind].module)


def options_for(kind: str, *groups: TextOptions | VisionOptions):
    """The one of `groups` that the recipe of `kind` takes, checked; OptionError naming the
    first option set in any other group (an option that does not apply to this kind of model)."""
    taken_type = RECIPES[kind].options
    for group in groups:
        if not isinstance(group, taken_type) and (reason := group.refusal()):
            raise OptionError(reason)
    taken = next(group for group in groups if isinstance(group, taken_type))
    taken.check()
    return taken
