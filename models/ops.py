"""edgert's torch custom ops (reference implementations; GPU kernels live in trt_plugins/).

Each op is opaque to torch.export, so the ONNX exporter maps it to one `edgert`-domain node
(exporters/custom_ops.py) instead of inlining its arithmetic.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("edgert::clipped_softmax", mutates_args=())
def clipped_softmax(scores: torch.Tensor, gamma: float, zeta: float) -> torch.Tensor:
    """clip((zeta - gamma) * softmax(scores, -1) + gamma, 0, 1) (Bondarenko et al. 2023)."""
    return torch.clamp((zeta - gamma) * torch.softmax(scores, dim=-1) + gamma, 0.0, 1.0)


@clipped_softmax.register_fake
def _clipped_softmax_fake(scores, gamma, zeta):
    return torch.empty_like(scores)


def _clipped_softmax_setup(ctx, inputs, output):
    scores, gamma, zeta = inputs
    ctx.save_for_backward(scores)
    ctx.gamma, ctx.zeta = gamma, zeta


def _clipped_softmax_backward(ctx, grad):
    (scores,) = ctx.saved_tensors
    probs = torch.softmax(scores, dim=-1)
    stretched = (ctx.zeta - ctx.gamma) * probs + ctx.gamma
    # The clip passes gradient only where it is inactive.
    grad_probs = grad * (ctx.zeta - ctx.gamma) * ((stretched > 0) & (stretched < 1)).to(grad.dtype)
    grad_scores = probs * (grad_probs - (grad_probs * probs).sum(dim=-1, keepdim=True))
    return grad_scores, None, None


clipped_softmax.register_autograd(_clipped_softmax_backward, setup_context=_clipped_softmax_setup)
