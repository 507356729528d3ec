"""The EfficientViT-M and SHViT variants edgert knows, as plain data (no torch), so the CLI
can name and check them before loading anything heavy (models/sources.py looks names up
here). models/vision.py builds them."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgert.errors import OptionError

PATCH_SIZE = 16  # both families' stems: four stride-2 3x3 convolutions
MIN_RESOLUTION = 64
MAX_RESOLUTION = 1024
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VisionConfig:
    """One variant's architecture; the field names follow timm's constructor arguments."""

    family: str  # "efficientvit" (cascaded group attention) or "shvit" (single-head attention)
    embed_dim: tuple[int, ...]
    depth: tuple[int, ...]
    num_heads: tuple[int, ...] = ()  # efficientvit
    key_dim: tuple[int, ...] = (16, 16, 16)  # efficientvit; shvit's qk_dim
    window_size: tuple[int, ...] = (7, 7, 7)  # efficientvit
    kernels: tuple[int, ...] = (5, 5, 5, 5)  # efficientvit: the query's depthwise kernel, per head
    partial_dim: tuple[int, ...] = ()  # shvit: channels that go through attention
    types: tuple[str, ...] = ()  # shvit: "s" (attention) or "i" (convolution only), per stage
    num_classes: int = 1000
    img_size: int = 224
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float = 0.875
    labels: tuple[str, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict) -> VisionConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _efficientvit(embed_dim, depth, num_heads, kernels) -> VisionConfig:
    return VisionConfig("efficientvit", embed_dim, depth, num_heads=num_heads, kernels=kernels)


def _shvit(embed_dim, depth, partial_dim, img_size=224) -> VisionConfig:
    return VisionConfig("shvit", embed_dim, depth, partial_dim=partial_dim, types=("i", "s", "s"),
                        img_size=img_size, crop_pct=0.875)


# timm's registered configurations (efficientvit_msra.py, shvit.py), under edgert's names.
VARIANTS: dict[str, VisionConfig] = {
    "efficientvit-m0": _efficientvit((64, 128, 192), (1, 2, 3), (4, 4, 4), (5, 5, 5, 5)),
    "efficientvit-m1": _efficientvit((128, 144, 192), (1, 2, 3), (2, 3, 3), (7, 5, 3, 3)),
    "efficientvit-m2": _efficientvit((128, 192, 224), (1, 2, 3), (4, 3, 2), (7, 5, 3, 3)),
    "efficientvit-m3": _efficientvit((128, 240, 320), (1, 2, 3), (4, 3, 4), (5, 5, 5, 5)),
    "efficientvit-m4": _efficientvit((128, 256, 384), (1, 2, 3), (4, 4, 4), (7, 5, 3, 3)),
    "efficientvit-m5": _efficientvit((192, 288, 384), (1, 3, 4), (3, 3, 4), (7, 5, 3, 3)),
    "shvit-s1": _shvit((128, 224, 320), (2, 4, 5), (32, 48, 68)),
    "shvit-s2": _shvit((128, 308, 448), (2, 4, 5), (32, 66, 96)),
    "shvit-s3": _shvit((192, 352, 448), (3, 5, 5), (48, 75, 96)),
    "shvit-s4": _shvit((224, 336, 448), (4, 7, 6), (48, 72, 96), img_size=256),
}


def check_resolution(resolution: object) -> int:
    """`resolution` if the models take it: a multiple of the 16-pixel patch between 64 and 1024."""
    if (isinstance(resolution, bool) or not isinstance(resolution, int)
            or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION or resolution % PATCH_SIZE):
        raise OptionError(f"resolution {resolution!r} is not one these models take: it must be a multiple of "
                          f"{PATCH_SIZE} (the patch size) from {MIN_RESOLUTION} to {MAX_RESOLUTION} pixels")
    return resolution
