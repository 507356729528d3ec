"""The vision recipe: an EfficientViT-M or SHViT variant (random init or a timm-layout
checkpoint) → an image classifier graph `pixel_values [batch, 3, R, R] -> logits`, with
BatchNorm folded and each attention one edgert op (or plain ONNX with custom_ops=False)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

import edgert
from edgert.errors import CheckpointError, OptionError
from edgert.exporters.recipe import Prepared, Step, VisionOptions
from edgert.models.batchnorm_folding import fold_batchnorms
from edgert.models.sources import ModelSource
from edgert.models.vision import create_model, randomize_statistics
from edgert.models.vision_checkpoints import (checkpoint_classes, load_weights, read_metadata, read_state_dict,
                                              with_classes)
from edgert.models.vision_configs import VisionConfig, check_resolution
from edgert.models.vision_op_swap import use_custom_ops
from edgert.plan import Manifest

TASK = "image-classification"
INPUT, OUTPUT = "pixel_values", "logits"
RANDOM_SEED = 0
CHECK_BATCHES = (1, 8)


def prepare(source: ModelSource, task: str | None, options: VisionOptions, step: Step) -> Prepared:
    """Build the variant, load options.checkpoint into it, and wrap it for tracing; the
    unfused model is kept as the reference the graph is validated against."""
    name = source.name
    if task not in (None, TASK):
        raise OptionError(f"{name} is an image classifier; its task is {TASK}, not {task!r}")
    config, state, weights = _config_and_weights(source, options.checkpoint)
    resolution = check_resolution(config.img_size if options.resolution is None else options.resolution)
    config = replace(config, img_size=resolution)
    model = create_model(config, seed=RANDOM_SEED)
    if state is None:
        randomize_statistics(model, seed=RANDOM_SEED)
    else:
        load_weights(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                     variant=name)
    reference = model.eval()
    module = copy.deepcopy(reference)
    folded = fold_batchnorms(module)
    if options.custom_ops:
        use_custom_ops(module)
    module.eval()  # the swapped-in op modules start in training mode
    manifest = Manifest(
        edgert_version=edgert.__version__, source=name, task=TASK, opset=0,
        inputs={INPUT: INPUT}, dims={"batch": "batch"},
        extra={"image": image_spec(config),
               "vision": {"variant": name, "family": config.family, "weights": weights,
                          "parameters": sum(p.numel() for p in reference.parameters()),
                          "batchnorms_folded": folded, "custom_ops_requested": options.custom_ops,
                          "architecture": config.to_dict()}},
    )
    rng = np.random.default_rng(0)
    trace = {INPUT: rng.standard_normal((2, 3, resolution, resolution), dtype=np.float32)}
    checks = [{INPUT: rng.standard_normal((b, 3, resolution, resolution), dtype=np.float32)} for b in CHECK_BATCHES]
    return Prepared(module, [INPUT], [OUTPUT], {INPUT: {0: "batch"}}, trace, checks, manifest,
                    reference=reference)


def image_spec(config: VisionConfig) -> dict:
    """How an image becomes this model's input, for the runtime (edgert/images.py)."""
    return {"resolution": config.img_size, "channels": config.in_chans, "mean": list(config.mean),
            "std": list(config.std), "crop_pct": config.crop_pct, "interpolation": "bicubic",
            "labels": list(config.labels) or None}


def _config_and_weights(source: ModelSource, checkpoint):
    """(config, state dict or None, what the weights are) for a variant: its registered
    config, adjusted to a checkpoint's class count, or the config edgert stored in its own
    checkpoints (classes, resolution, normalisation, labels)."""
    config = source.variant
    if checkpoint is None:
        return config, None, (f"random init (seed {RANDOM_SEED}, BatchNorm statistics randomised); "
                              "no checkpoint given")
    state = read_state_dict(checkpoint)
    metadata = read_metadata(checkpoint)
    stored = metadata.get("edgert_variant")
    if stored and stored != source.name:
        raise CheckpointError(f"{checkpoint} is a {stored} checkpoint, not {source.name}")
    if "edgert_config" in metadata:
        config = VisionConfig.from_dict(json.loads(metadata["edgert_config"]))
    else:
        config = with_classes(config, checkpoint_classes(state, config))
    return config, state, f"checkpoint {Path(checkpoint).name}"
