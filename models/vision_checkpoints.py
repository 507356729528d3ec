"""Vision checkpoints: reading timm-layout weights (.safetensors, .pth/.pt/.bin) and loading
them into edgert's EfficientViT-M and SHViT, refusing weights of another variant."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from edgert.errors import CheckpointError, first_line
from edgert.models.vision_configs import VisionConfig
from edgert.models.weight_fit import check_fit


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or a torch checkpoint (.pth/.pt/.bin, optionally
    wrapped in {'model': ...} or {'state_dict': ...}); CheckpointError if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {first_line(exc)}") from None
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return state


def read_metadata(path) -> dict[str, str]:
    """The string metadata of a .safetensors checkpoint (edgert writes its config there);
    empty for other formats. Call it after read_state_dict, which reports unreadable files."""
    if Path(path).suffix != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (OSError, SafetensorError):
        return {}


def resize_bias_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """[heads, s*s] relative-position bias resampled (bicubic, antialiased) to [heads, size*size],
    as timm does when a checkpoint meets a model built for another window."""
    heads, old = table.shape
    side = math.isqrt(old)
    grid = table.float().view(1, heads, side, side)
    return F.interpolate(grid, size=(size, size), mode="bicubic", antialias=True).view(heads, size * size)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], *, variant: str) -> None:
    """Copy `state` into `model`; CheckpointError naming the first few mis-shaped, missing and
    unexpected parameters (a checkpoint of another variant). Attention bias tables of another
    window size are resampled."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("attention_bias_idxs")}
    for key, value in list(state.items()):
        if key.endswith("attention_biases") and key in own and value.shape != own[key].shape \
                and value.ndim == 2 and value.shape[0] == own[key].shape[0] and math.isqrt(value.shape[1]) ** 2 == value.shape[1]:
            state[key] = resize_bias_table(value, math.isqrt(own[key].shape[1]))
    # BatchNorm's step counter does not matter in eval mode; many checkpoints leave it out.
    state |= {k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}
    check_fit(f"checkpoint does not fit {variant}", variant,
              missing=[k for k in own if k not in state], unexpected=[k for k in state if k not in own],
              mismatched=[(k, state[k].shape, own[k].shape) for k in own if k in state and state[k].shape != own[k].shape],
              hint="a checkpoint of another variant or class count?")
    model.load_state_dict(state, strict=True)


def checkpoint_classes(state: dict[str, torch.Tensor], config: VisionConfig) -> int | None:
    """The class count a checkpoint's classifier has, if it has the family's classifier."""
    key = "head.linear.weight" if config.family == "efficientvit" else "head.l.weight"
    weight = state.get(key)
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def with_classes(config: VisionConfig, classes: int | None) -> VisionConfig:
    """`config` with `classes` output classes (unchanged when None or already so)."""
    return config if classes is None or classes == config.num_classes else replace(config, num_classes=classes)
