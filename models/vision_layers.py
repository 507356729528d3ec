"""Layers EfficientViT-M and SHViT share, with timm's parameter names (so timm checkpoints load).

EfficientViT calls its convolutions `conv`, SHViT `c`; every builder takes that name.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


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


def dw_ffn(dim: int, conv_name: str, bn_weight: float = 1.0) -> list[nn.Module]:
    """A residual depthwise 3x3 conv-BN and a residual ConvMlp."""
    return [Residual(conv_bn(dim, dim, 3, groups=dim, bn_weight=bn_weight, conv_name=conv_name)),
            Residual(ConvMlp(dim, dim * 2, conv_name))]


def stem_layers(in_chans: int, dim: int, conv_name: str) -> list[tuple[str, nn.Module]]:
    """(name, layer) of the patch stem: four stride-2 3x3 conv-BNs with ReLUs between, [B, in_chans,
    H, W] -> [B, dim, H/16, W/16]."""
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
