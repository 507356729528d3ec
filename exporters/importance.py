"""Head importance (Michel et al. 2019) on an adapted model, the losses it differentiates, and
the loading of a model plus calibration data for `edgert analyze heads`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from edgert.errors import CalibrationError, EdgertError
from edgert.exporters.hf_loading import quiet_libraries
from edgert.exporters.recipe import recipe_for
from edgert.models.adapters import head_attentions, model_shape
from edgert.models.encoder import EncoderExport
from edgert.models.sources import resolve_source
from edgert.plan import HeadPlan
from edgert.quant.calib import BUNDLED, load_calibration

Feeds = dict[str, np.ndarray]
Loss = Callable[[object, dict[str, torch.Tensor], int], torch.Tensor]


def projection_loss(model, feeds: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    """r . output with r ~ N(0, I) drawn per example: a label-free loss whose mask gradient
    has E|dL/dxi_h| proportional to the norm of the output's sensitivity to head h."""
    output = model(**feeds)
    output = output if isinstance(output, torch.Tensor) else output[0]
    generator = torch.Generator().manual_seed(seed)
    return (output * torch.randn(output.shape, generator=generator)).sum()


def next_token_loss(model, feeds: dict[str, torch.Tensor], seed: int) -> torch.Tensor:
    """Causal LM loss on the calibration text itself (decoders)."""
    ids = feeds["input_ids"]
    return model(**feeds, labels=ids, use_cache=False).loss


def head_importance(model, samples: Sequence[Feeds], loss: Loss = projection_loss,
                    progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Michel et al. (2019) importance of every original head of an adapted model:
    E_x |dL/dxi_h| for a mask xi_h = 1 on each head's output, normalised per layer (L2) and
    then globally (max = 1). Pruned heads score 0. Returns [layers, original heads]."""
    attentions = head_attentions(model)
    masks = []
    for attention in attentions:
        attention.head_mask = torch.ones(attention.num_heads, requires_grad=True)
        masks.append(attention.head_mask)
    totals = [torch.zeros(a.num_heads) for a in attentions]
    try:
        for i, feeds in enumerate(samples):
            tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
            value = loss(model, tensors, i)
            grads = torch.autograd.grad(value, [m for m in masks if m.numel()], allow_unused=True)
            grads = iter(grads)
            for total, mask in zip(totals, masks):
                if mask.numel():
                    grad = next(grads)
                    if grad is not None:
                        total += grad.abs()
            if progress:
                progress(1)
    finally:
        for attention in attentions:
            attention.head_mask = None
    shape = model_shape(model)
    scores = np.zeros((shape.num_layers, shape.num_heads))
    for layer, (attention, total) in enumerate(zip(attentions, totals)):
        row = total.numpy() / max(len(samples), 1)
        norm = np.linalg.norm(row)
        scores[layer, attention.kept_heads] = row / norm if norm > 0 else row
    peak = scores.max()
    if samples and not peak > 0:
        raise EdgertError("no head changes the loss: the importance loss does not run the model being scored")
    return scores / peak


def random_scores(plan: HeadPlan, seed: int) -> np.ndarray:
    """Random head scores (the baseline that importance must beat)."""
    rng = np.random.default_rng(seed)
    return rng.random((len(plan.layers), plan.layers[0].num_heads))


def encoder_loss(task: str, uses_token_types: bool) -> Loss:
    """projection_loss on the output the export will have (pooled embedding or hidden states)
    of whichever encoder is being scored."""

    def loss(model, feeds, seed):
        return projection_loss(EncoderExport(model, task, uses_token_types=uses_token_types), feeds, seed)

    return loss


def load_for_heads(source: str, calib, calib_size: int):
    """(transformers model, calibration feeds, loss) for scoring the heads of `source` (a text
    model: a built-in name or a Hugging Face directory)."""
    model_source = resolve_source(source, kinds=("encoder", "decoder"))
    if calib is None:
        if model_source.name not in BUNDLED:
            raise CalibrationError("scoring heads needs calibration data: give --calib PATH")
        calib = BUNDLED[model_source.name][0]
    quiet_libraries()
    loaded = recipe_for(model_source.kind).load(model_source)
    model_shape(loaded.model)  # fails clearly for families without an adapter
    if model_source.kind == "decoder":
        loss = next_token_loss
    else:
        loss = encoder_loss(model_source.default_task or "feature-extraction",
                            "token_type_ids" in loaded.input_names)
    samples = load_calibration(calib, loaded.calibration_inputs(model_source.name), size=calib_size)
    return loaded.model, samples, loss
