"""SHViT, timm's `shvit_s1` ... `shvit_s4`: single-head attention over part of the channels,
with timm's module and parameter names."""

from __future__ import annotations

import torch
from torch import nn

from edgert.models.vision_configs import VisionConfig
from edgert.models.vision_layers import ConvMlp, NormLinear, PatchMerging, Residual, conv_bn, dw_ffn, stem_layers


def _downsample(dim: int, out_dim: int, conv_name: str) -> list[nn.Module]:
    """Residual conv and FFN, PatchMerging to `out_dim`, residual conv and FFN (between stages)."""
    return [*dw_ffn(dim, conv_name), PatchMerging(dim, out_dim, conv_name), *dw_ffn(out_dim, conv_name)]


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
        stem = stem_layers(config.in_chans, config.embed_dim[0], "c")
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
