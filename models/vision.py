"""EfficientViT-M (MSRA) and SHViT image classifiers, written for edgert.

The modules keep timm's parameter names (`efficientvit_m0` ... `efficientvit_m5`,
`shvit_s1` ... `shvit_s4`), so a timm checkpoint loads unchanged, and compute what timm's
forward computes; tests compare both on outputs timm recorded (scripts/record_timm_vision.py).
timm itself is not imported: it needs torchvision, which does not install beside the CPU
build of torch that edgert pins.

Attention runs in plain torch here (training, checkpoints); `for_export` folds every
BatchNorm and swaps each attention for one edgert custom op (models/ops.py).
The variants' configurations live in models/vision_configs.py (no torch).
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from edgert.errors import CheckpointError
from edgert.models.vision_configs import (IMAGENET_MEAN, IMAGENET_STD, PATCH_SIZE, VARIANTS,  # noqa: F401
                                          VisionConfig, check_resolution, variant_config)



# --- building blocks (parameter names as in timm) -------------------------------------------

def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, *,
            bn_weight: float = 1.0, conv_name: str = "conv") -> nn.Sequential:
    """Conv2d without bias, then BatchNorm2d; EfficientViT calls the conv `conv`, SHViT `c`."""
    block = nn.Sequential(OrderedDict([
        (conv_name, nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)),
        ("bn", nn.BatchNorm2d(cout)),
    ]))
    nn.init.constant_(block.bn.weight, bn_weight)
    return block


class Residual(nn.Module):
    def __init__(self, m: nn.Module):
        super().__init__()
        self.m = m

    def forward(self, x):
        return x + self.m(x)


class ConvMlp(nn.Module):
    """1x1 conv-BN, ReLU, 1x1 conv-BN (EfficientViT's ConvMlp, SHViT's FFN)."""

    def __init__(self, dim: int, hidden: int, conv_name: str):
        super().__init__()
        self.pw1 = conv_bn(dim, hidden, conv_name=conv_name)
        self.act = nn.ReLU()
        self.pw2 = conv_bn(hidden, dim, bn_weight=0.0, conv_name=conv_name)

    def forward(self, x):
        return self.pw2(self.act(self.pw1(x)))


def _divisible(value: float, divisor: int = 8) -> int:
    """Channels rounded to the nearest multiple of `divisor` (at least one), as timm's SE does."""
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, ratio: float = 0.25):
        super().__init__()
        reduced = _divisible(channels * ratio)
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class PatchMerging(nn.Module):
    """Halve the resolution: 1x1 expand x4, stride-2 depthwise 3x3, squeeze-excite, 1x1 project."""

    def __init__(self, dim: int, out_dim: int, conv_name: str):
        super().__init__()
        hidden = dim * 4
        self.conv1 = conv_bn(dim, hidden, conv_name=conv_name)
        self.act = nn.ReLU()
        self.conv2 = conv_bn(hidden, hidden, 3, 2, groups=hidden, conv_name=conv_name)
        self.se = SqueezeExcite(hidden)
        self.conv3 = conv_bn(hidden, out_dim, conv_name=conv_name)

    def forward(self, x):
        return self.conv3(self.se(self.act(self.conv2(self.act(self.conv1(x))))))


def _dw_ffn(dim: int, conv_name: str, bn_weight: float = 1.0) -> list[nn.Module]:
    """A residual depthwise 3x3 conv-BN and a residual ConvMlp."""
    return [Residual(conv_bn(dim, dim, 3, groups=dim, bn_weight=bn_weight, conv_name=conv_name)),
            Residual(ConvMlp(dim, dim * 2, conv_name))]


def _downsample(dim: int, out_dim: int, conv_name: str) -> list[nn.Module]:
    return [*_dw_ffn(dim, conv_name), PatchMerging(dim, out_dim, conv_name), *_dw_ffn(out_dim, conv_name)]


def _stem(in_chans: int, dim: int, conv_name: str) -> list[tuple[str, nn.Module]]:
    widths = [in_chans, dim // 8, dim // 4, dim // 2, dim]
    layers = []
    for i in range(4):
        layers.append((f"conv{i + 1}", conv_bn(widths[i], widths[i + 1], 3, 2, conv_name=conv_name)))
        if i < 3:
            layers.append((f"relu{i + 1}", nn.ReLU()))
    return layers


class NormLinear(nn.Module):
    """BatchNorm1d then Linear: both families' classifier head (the Linear is `linear` or `l`)."""

    def __init__(self, dim: int, classes: int, linear_name: str):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.linear_name = linear_name
        setattr(self, linear_name, nn.Linear(dim, classes))
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    @property
    def fc(self) -> nn.Linear:
        return self._modules[self.linear_name]

    def forward(self, x):
        return self.fc(self.bn(x))


# --- EfficientViT-M ------------------------------------------------------------------------------

def relative_offsets(resolution: int) -> torch.Tensor:
    """[N, N] index of each token pair's (|dy|, |dx|) offset in a resolution x resolution window,
    numbered in order of first appearance (the layout of timm's attention_biases)."""
    points = list(itertools.product(range(resolution), range(resolution)))
    seen: dict[tuple[int, int], int] = {}
    idxs = [seen.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(seen)) for a in points for b in points]
    return torch.tensor(idxs, dtype=torch.long).view(len(points), len(points))


class CascadedGroupAttention(nn.Module):
    """Head i attends over channel chunk i plus head i-1's output; q gets a depthwise conv;
    a learned bias per (|dy|, |dx|) offset joins the scores."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, resolution: int,
                 kernels: tuple[int, ...]):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.val_dim = int(attn_ratio * key_dim)
        self.scale = key_dim ** -0.5
        self.resolution = resolution
        self.qkvs = nn.ModuleList(conv_bn(dim // num_heads, key_dim * 2 + self.val_dim)
                                  for _ in range(num_heads))
        self.dws = nn.ModuleList(conv_bn(key_dim, key_dim, kernels[i], groups=key_dim) for i in range(num_heads))
        self.proj = nn.Sequential(nn.ReLU(), conv_bn(self.val_dim * num_heads, dim, bn_weight=0.0))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, resolution * resolution))
        self.register_buffer("attention_bias_idxs", relative_offsets(resolution), persistent=False)

    def bias(self) -> torch.Tensor:
        """[heads, N, N] additive attention bias."""
        return self.attention_biases[:, self.attention_bias_idxs]

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated head outputs (what proj takes) of a batch of windows."""
        B, _, H, W = x.shape
        chunks = x.chunk(self.num_heads, dim=1)
        bias = self.bias()
        outputs, feat = [], chunks[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if i:
                feat = feat + chunks[i]
            q, k, v = qkv(feat).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            q = dw(q).flatten(2) * self.scale
            scores = q.transpose(-2, -1) @ k.flatten(2) + bias[i]
            feat = (v.flatten(2) @ scores.softmax(dim=-1).transpose(-2, -1)).view(B, self.val_dim, H, W)
            outputs.append(feat)
        return torch.cat(outputs, 1)

    def forward(self, x):
        return self.proj(self.heads(x))


class LocalWindowAttention(nn.Module):
    """Cascaded group attention within non-overlapping windows (the input zero-padded to whole windows)."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, resolution: int,
                 window: int, kernels: tuple[int, ...]):
        super().__init__()
        self.attn = CascadedGroupAttention(dim, key_dim, num_heads, attn_ratio, min(window, resolution), kernels)

    def forward(self, x):
        B, C, H, W = x.shape
        ws = self.attn.resolution
        if H == ws and W == ws:
            return self.attn(x)
        pad_b, pad_r = (ws - H % ws) % ws, (ws - W % ws) % ws
        x = F.pad(x, (0, pad_r, 0, pad_b))
        nh, nw = (H + pad_b) // ws, (W + pad_r) // ws
        windows = x.view(B, C, nh, ws, nw, ws).permute(0, 2, 4, 1, 3, 5).reshape(B * nh * nw, C, ws, ws)
        out = self.attn(windows)
        out = out.view(B, nh, nw, C, ws, ws).permute(0, 3, 1, 4, 2, 5).reshape(B, C, nh * ws, nw * ws)
        return out[:, :, :H, :W]


class EfficientVitBlock(nn.Module):
    def __init__(self, dim: int, key_dim: int, num_heads: int, attn_ratio: float, resolution: int,
                 window: int, kernels: tuple[int, ...]):
        super().__init__()
        self.dw0, self.ffn0 = _dw_ffn(dim, "conv", bn_weight=0.0)
        self.mixer = Residual(LocalWindowAttention(dim, key_dim, num_heads, attn_ratio, resolution, window, kernels))
        self.dw1, self.ffn1 = _dw_ffn(dim, "conv", bn_weight=0.0)

    def forward(self, x):
        return self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x)))))


class EfficientVitStage(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, key_dim: int, subsample: bool, num_heads: int,
                 resolution: int, window: int, kernels: tuple[int, ...], depth: int):
        super().__init__()
        if subsample:
            resolution = (resolution - 1) // 2 + 1
            res1, merge, res2 = _dw_ffn(in_dim, "conv"), PatchMerging(in_dim, out_dim, "conv"), _dw_ffn(out_dim, "conv")
            self.downsample = nn.Sequential(OrderedDict(
                [("res1", nn.Sequential(*res1)), ("patchmerge", merge), ("res2", nn.Sequential(*res2))]))
        else:
            self.downsample = nn.Identity()
        self.resolution = resolution
        attn_ratio = out_dim / (key_dim * num_heads)
        self.blocks = nn.Sequential(*(EfficientVitBlock(out_dim, key_dim, num_heads, attn_ratio, resolution,
                                                        window, kernels) for _ in range(depth)))

    def forward(self, x):
        return self.blocks(self.downsample(x))


class EfficientVitMsra(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.patch_embed = nn.Sequential(OrderedDict(_stem(config.in_chans, config.embed_dim[0], "conv")))
        resolution = config.img_size // PATCH_SIZE
        stages, previous = [], config.embed_dim[0]
        for i, dim in enumerate(config.embed_dim):
            stage = EfficientVitStage(previous, dim, config.key_dim[i], i > 0, config.num_heads[i], resolution,
                                      config.window_size[i], config.kernels, config.depth[i])
            resolution, previous = stage.resolution, dim
            stages.append(stage)
        self.stages = nn.Sequential(*stages)
        self.head = NormLinear(previous, config.num_classes, "linear")

    def forward(self, x):
        return self.head(self.stages(self.patch_embed(x)).mean((2, 3)))


# --- SHViT -----------------------------------------------------------------------------------------

class SingleHeadAttention(nn.Module):
    """One attention head over the first `pdim` channels (GroupNorm'd); the rest pass through."""

    def __init__(self, dim: int, qk_dim: int, pdim: int):
        super().__init__()
        self.dim, self.qk_dim, self.pdim = dim, qk_dim, pdim
        self.scale = qk_dim ** -0.5
        self.pre_norm = nn.GroupNorm(1, pdim)
        self.qkv = conv_bn(pdim, qk_dim * 2 + pdim, conv_name="c")
        self.proj = nn.Sequential(nn.ReLU(), conv_bn(dim, dim, bn_weight=0.0, conv_name="c"))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """Attention output over the partial channels, concatenated with the untouched rest."""
        B, _, H, W = x.shape
        x1, x2 = x.split([self.pdim, self.dim - self.pdim], dim=1)
        q, k, v = self.qkv(self.pre_norm(x1)).flatten(2).split([self.qk_dim, self.qk_dim, self.pdim], dim=1)
        probs = ((q.transpose(-2, -1) @ k) * self.scale).softmax(dim=-1)
        return torch.cat([(v @ probs.transpose(-2, -1)).reshape(B, self.pdim, H, W), x2], dim=1)

    def forward(self, x):
        return self.proj(self.mix(x))


class SHViTBlock(nn.Module):
    def __init__(self, dim: int, qk_dim: int, pdim: int, attention: bool):
        super().__init__()
        self.conv = Residual(conv_bn(dim, dim, 3, groups=dim, bn_weight=0.0, conv_name="c"))
        self.mixer = Residual(SingleHeadAttention(dim, qk_dim, pdim)) if attention else nn.Identity()
        self.ffn = Residual(ConvMlp(dim, dim * 2, "c"))

    def forward(self, x):
        return self.ffn(self.mixer(self.conv(x)))


class SHViTStage(nn.Module):
    def __init__(self, prev_dim: int, dim: int, qk_dim: int, pdim: int, attention: bool, depth: int):
        super().__init__()
        self.downsample = nn.Sequential(*_downsample(prev_dim, dim, "c")) if prev_dim != dim else nn.Identity()
        self.blocks = nn.Sequential(*(SHViTBlock(dim, qk_dim, pdim, attention) for _ in range(depth)))

    def forward(self, x):
        return self.blocks(self.downsample(x))


class SHViT(nn.Module):
    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        stem = _stem(config.in_chans, config.embed_dim[0], "c")
        self.patch_embed = nn.Sequential(*(module for _, module in stem))
        stages, previous = [], config.embed_dim[0]
        for i, dim in enumerate(config.embed_dim):
            stages.append(SHViTStage(previous, dim, config.key_dim[i], config.partial_dim[i],
                                     config.types[i] == "s", config.depth[i]))
            previous = dim
        self.stages = nn.Sequential(*stages)
        self.head = NormLinear(previous, config.num_classes, "l")

    def forward(self, x):
        return self.head(self.stages(self.patch_embed(x)).mean((2, 3)))


# --- building, checkpoints, export form ------------------------------------------------------------

def create_model(config: VisionConfig, *, seed: int = 0) -> nn.Module:
    """A randomly initialised model (timm's initialisation, seeded) in eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = (EfficientVitMsra if config.family == "efficientvit" else SHViT)(config)
    return model.eval()


@torch.no_grad()
def randomize_statistics(model: nn.Module, *, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random affine parameters and running statistics, and every
    attention bias table random values, in place.

    timm's initialisation zeroes the last BatchNorm of each residual branch, so a freshly
    built model is its stem and classifier only, with logits near 1e-4: a graph checked
    against it proves little, and its INT8 accuracy says nothing. These statistics make
    every branch contribute (logits of order one)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.weight.uniform_(0.5, 1.5, generator=generator)
            module.bias.normal_(0.0, 0.1, generator=generator)
            module.running_mean.normal_(0.0, 0.1, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
        elif isinstance(module, CascadedGroupAttention):
            module.attention_biases.normal_(0.0, 0.5, generator=generator)
    return model


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file or a torch checkpoint (.pth/.pt/.bin, optionally
    wrapped in {'model': ...} or {'state_dict': ...}); CheckpointError if unreadable."""
    from pathlib import Path

    from edgert.errors import first_line

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

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
    """The string metadata of a .safetensors checkpoint (edgert writes its config there)."""
    from pathlib import Path

    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def resize_bias_table(table: torch.Tensor, size: int) -> torch.Tensor:
    """[heads, s*s] relative-position bias resampled (bicubic, antialiased) to [heads, size*size],
    as timm does when a checkpoint meets a model built for another window."""
    heads, old = table.shape
    side = math.isqrt(old)
    grid = table.float().view(1, heads, side, side)
    return F.interpolate(grid, size=(size, size), mode="bicubic", antialias=True).view(heads, size * size)


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], *, variant: str) -> None:
    """Copy `state` into `model`; CheckpointError naming the first missing, unexpected or
    mis-shaped parameter (a checkpoint of another variant). Attention bias tables of another
    window size are resampled."""
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("attention_bias_idxs")}
    for key, value in list(state.items()):
        if key.endswith("attention_biases") and key in own and value.shape != own[key].shape \
                and value.ndim == 2 and value.shape[0] == own[key].shape[0] and math.isqrt(value.shape[1]) ** 2 == value.shape[1]:
            state[key] = resize_bias_table(value, math.isqrt(own[key].shape[1]))
    # BatchNorm's step counter does not matter in eval mode; many checkpoints leave it out.
    state |= {k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    for key in own:
        if key in state and state[key].shape != own[key].shape:
            raise CheckpointError(f"checkpoint does not fit {variant}: {key} has shape {list(state[key].shape)} "
                                  f"in the checkpoint, {list(own[key].shape)} in the model "
                                  "(a checkpoint of another variant or class count?)")
    if missing or unexpected:
        words = ([f"{missing[0]} is missing" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")]
                 if missing else []) + \
                ([f"{unexpected[0]} is not a parameter of {variant}" +
                  (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")] if unexpected else [])
        raise CheckpointError(f"checkpoint does not fit {variant}: {'; '.join(words)}")
    model.load_state_dict(state, strict=True)


def checkpoint_classes(state: dict[str, torch.Tensor], config: VisionConfig) -> int | None:
    """The class count a checkpoint's classifier has, if it has the family's classifier."""
    key = "head.linear.weight" if config.family == "efficientvit" else "head.l.weight"
    weight = state.get(key)
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def with_classes(config: VisionConfig, classes: int | None) -> VisionConfig:
    return config if classes is None or classes == config.num_classes else replace(config, num_classes=classes)


@torch.no_grad()
def _folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True)
    fused.weight.copy_(conv.weight * scale[:, None, None, None])
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


@torch.no_grad()
def _folded_linear(bn: nn.BatchNorm1d, linear: nn.Linear) -> nn.Linear:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    fused = nn.Linear(linear.in_features, linear.out_features)
    fused.weight.copy_(linear.weight * scale[None, :])
    fused.bias.copy_(linear.weight @ shift + (linear.bias if linear.bias is not None else 0))
    return fused


def fold_batchnorms(module: nn.Module) -> int:
    """Fold every conv-BN pair and the BN-linear head into single convs/linears, in place
    (eval-mode statistics); return how many BatchNorms went."""
    folded = 0
    for name, child in list(module.named_children()):
        parts = list(child.children())
        if isinstance(child, nn.Sequential) and len(parts) == 2 and isinstance(parts[0], nn.Conv2d) \
                and isinstance(parts[1], nn.BatchNorm2d):
            setattr(module, name, _folded_conv(*parts))
            folded += 1
        elif isinstance(child, NormLinear):
            setattr(module, name, _folded_linear(child.bn, child.fc))
            folded += 1
        else:
            folded += fold_batchnorms(child)
    return folded


class CascadedGroupAttentionOp(nn.Module):
    """A BN-folded CascadedGroupAttention whose heads run as one edgert::cascaded_group_attention."""

    def __init__(self, attn: CascadedGroupAttention):
        super().__init__()
        if not all(isinstance(m, nn.Conv2d) for m in [*attn.qkvs, *attn.dws]):
            raise ValueError("fold the BatchNorms first")
        self.resolution, self.num_heads, self.key_dim, self.scale = (attn.resolution, attn.num_heads,
                                                                     attn.key_dim, attn.scale)
        self.kernels = [dw.kernel_size[0] for dw in attn.dws]
        kernel = max(self.kernels)
        with torch.no_grad():
            # Smaller depthwise kernels are zero-padded to the largest, so all heads' weights are one
            # tensor; the op crops each back to its own size (`kernels`).
            dw = [F.pad(d.weight, [(kernel - d.kernel_size[0]) // 2] * 4) for d in attn.dws]
            self.register_buffer("qkv_weight", torch.stack([q.weight for q in attn.qkvs]).clone())
            self.register_buffer("qkv_bias", torch.stack([q.bias for q in attn.qkvs]).clone())
            self.register_buffer("dw_weight", torch.stack(dw).clone())
            self.register_buffer("dw_bias", torch.stack([d.bias for d in attn.dws]).clone())
            self.register_buffer("bias", attn.bias().detach().clone())
        self.proj = attn.proj

    def forward(self, x):
        from edgert.models import ops  # noqa: F401  (registers torch.ops.edgert.*)

        heads = torch.ops.edgert.cascaded_group_attention(x, self.qkv_weight, self.qkv_bias, self.dw_weight,
                                                          self.dw_bias, self.bias, self.num_heads, self.key_dim,
                                                          self.kernels, self.scale)
        return self.proj(heads)


class SingleHeadAttentionOp(nn.Module):
    """A BN-folded SingleHeadAttention whose attention runs as one edgert::single_head_attention."""

    def __init__(self, attn: SingleHeadAttention):
        super().__init__()
        if not isinstance(attn.qkv, nn.Conv2d):
            raise ValueError("fold the BatchNorms first")
        self.pdim, self.qk_dim, self.scale, self.eps = attn.pdim, attn.qk_dim, attn.scale, attn.pre_norm.eps
        self.pre_norm, self.qkv, self.proj = attn.pre_norm, attn.qkv, attn.proj

    def forward(self, x):
        from edgert.models import ops  # noqa: F401

        mixed = torch.ops.edgert.single_head_attention(x, self.pre_norm.weight, self.pre_norm.bias, self.qkv.weight,
                                                       self.qkv.bias, self.pdim, self.qk_dim, self.scale, self.eps)
        return self.proj(mixed)


def use_custom_ops(model: nn.Module) -> None:
    """Swap each attention of a BN-folded `model` for its edgert-op module, in place."""
    for module in list(model.modules()):
        if isinstance(module, LocalWindowAttention):
            module.attn = CascadedGroupAttentionOp(module.attn)
        elif isinstance(module, Residual) and isinstance(module.m, SingleHeadAttention):
            module.m = SingleHeadAttentionOp(module.m)


def for_export(model: nn.Module, *, custom_ops: bool = True) -> nn.Module:
    """`model` made ready to trace, in place: BatchNorms folded and, with `custom_ops`, each
    attention one edgert op."""
    fold_batchnorms(model)
    if custom_ops:
        use_custom_ops(model)
    return model.eval()
