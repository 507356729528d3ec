"""EfficientViT-M (MSRA), timm's `efficientvit_m0` ... `efficientvit_m5`: cascaded group
attention in local windows, with timm's module and parameter names."""

from __future__ import annotations

import itertools
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from edgert.models.vision_configs import PATCH_SIZE, VisionConfig
from edgert.models.vision_layers import NormLinear, PatchMerging, Residual, conv_bn, dw_ffn, stem_layers


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
        self.dw0, self.ffn0 = dw_ffn(dim, "conv", bn_weight=0.0)
        self.mixer = Residual(LocalWindowAttention(dim, key_dim, num_heads, attn_ratio, resolution, window, kernels))
        self.dw1, self.ffn1 = dw_ffn(dim, "conv", bn_weight=0.0)

    def forward(self, x):
        return self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x)))))


class EfficientVitStage(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, key_dim: int, subsample: bool, num_heads: int,
                 resolution: int, window: int, kernels: tuple[int, ...], depth: int):
        super().__init__()
        if subsample:
            resolution = (resolution - 1) // 2 + 1
            res1, merge, res2 = dw_ffn(in_dim, "conv"), PatchMerging(in_dim, out_dim, "conv"), dw_ffn(out_dim, "conv")
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
        self.patch_embed = nn.Sequential(OrderedDict(stem_layers(config.in_chans, config.embed_dim[0], "conv")))
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
