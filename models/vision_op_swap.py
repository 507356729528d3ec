"""The export form of the vision models: each BN-folded attention swapped for a module that
runs it as one edgert custom op (models/ops.py registers them; exporters/vision_ops.py gives
them ONNX function bodies)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import edgert.models.ops  # noqa: F401  (registers torch.ops.edgert.*)
from edgert.models.batchnorm_folding import fold_batchnorms
from edgert.models.efficientvit import CascadedGroupAttention, LocalWindowAttention
from edgert.models.shvit import SingleHeadAttention
from edgert.models.vision_layers import Residual


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
