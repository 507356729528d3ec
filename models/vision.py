"""EfficientViT-M (MSRA) and SHViT image classifiers, as edgert builds them: a config
(models/vision_configs.py, no torch) → a randomly initialised model of its family.

One module per job, as timm lays out its families:
- models/vision_layers.py: the layers both families share (conv_bn, Residual, ConvMlp, ...);
- models/efficientvit.py, models/shvit.py: one family each, with timm's parameter names
  (`efficientvit_m0` ... `efficientvit_m5`, `shvit_s1` ... `shvit_s4`), so a timm checkpoint
  loads unchanged, computing what timm's forward computes; tests compare both on outputs timm
  recorded (scripts/record_timm_vision.py);
- models/vision_checkpoints.py: reading and loading timm-layout checkpoints;
- models/batchnorm_folding.py and models/vision_op_swap.py: the export form (BatchNorms
  folded, each attention one edgert custom op).
timm itself is not imported: it needs torchvision, which does not install beside the CPU
build of torch that edgert pins.
"""

from __future__ import annotations

import torch
from torch import nn

from edgert.models.efficientvit import CascadedGroupAttention, EfficientVitMsra
from edgert.models.shvit import SHViT
from edgert.models.vision_configs import VisionConfig

# VisionConfig.family -> the model class that builds it.
FAMILY_MODELS: dict[str, type[nn.Module]] = {"efficientvit": EfficientVitMsra, "shvit": SHViT}


def create_model(config: VisionConfig, *, seed: int = 0) -> nn.Module:
    """A randomly initialised model (timm's initialisation, seeded) in eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = FAMILY_MODELS[config.family](config)
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
