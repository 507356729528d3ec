"""BatchNorm folding: each conv-BN pair and the BN-linear classifier head become one conv or
linear layer with the (eval-mode) statistics folded into its weights."""

from __future__ import annotations

import torch
from torch import nn

from edgert.models.vision_layers import NormLinear


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
