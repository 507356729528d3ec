"""Record timm's EfficientViT-M and SHViT outputs for tests/test_vision_models.py.

Run with the peer environment that has timm (edgert's own cannot install it):

    bench/.venv-timm/bin/python scripts/record_timm_vision.py

For one small custom configuration of each family it builds timm's model, randomises every
BatchNorm (weights and running statistics), GroupNorm affine and attention bias table, rounds
every float tensor of the state dict to a float16 value (so storing it as float16 is exact and
halves the files), and writes tests/data/timm_vision/<name>.safetensors holding

* the state dict, under timm's keys, as float16;
* `record/<run>/input` (uint8 pixels; the model saw (pixels - 128) / 64, exact in float32) and
  `record/<run>/logits` (timm's float32 output) for each run;
* metadata: `config` (VisionConfig.from_dict-compatible JSON), `runs` (JSON list of run name,
  batch, height, width and the img_size the model was built for), `timm_version`, `torch_version`.

EfficientViT runs at another img_size use a timm model built for that size, loaded through
timm's checkpoint_filter_fn, which resamples attention bias tables whose window changed.
It also writes state_dict_shapes.json.gz: key -> shape of timm's ten registered variants.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from timm.models import efficientvit_msra, shvit

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "timm_vision"
SEED = 0
VARIANTS = [f"efficientvit_m{i}" for i in range(6)] + [f"shvit_s{i}" for i in range(1, 5)]

# VisionConfig fields (edgert) of the recorded configurations.
CONFIGS = {
    # Windows of 4 at 80 px: stage resolutions 5, 3, 2 -> stage 0 pads 5 to 8 and splits into
    # four windows; stages 1 and 2 shrink their window to 3 and 2.
    "efficientvit_tiny": dict(family="efficientvit", embed_dim=[32, 48, 64], depth=[1, 1, 1], num_heads=[2, 3, 2],
                              key_dim=[8, 8, 8], window_size=[4, 4, 4], kernels=[7, 5, 3, 3], num_classes=10,
                              img_size=80, in_chans=3),
    "shvit_tiny": dict(family="shvit", embed_dim=[32, 48, 64], depth=[1, 2, 1], partial_dim=[8, 12, 16],
                       key_dim=[8, 8, 8], types=["i", "s", "s"], num_classes=10, img_size=80, in_chans=3),
}

# (run name, batch, height, width, img_size the model is built for)
RUNS = {
    "efficientvit_tiny": [
        ("b1", 1, 80, 80, 80),
        ("b8", 8, 80, 80, 80),
        ("nonsquare", 1, 80, 112, 80),  # stage 1 is 3x4: windowed, padded on the right only
        ("r144", 1, 144, 144, 144),  # windows (4, 4, 3): tables of stages 1, 2 upsampled 3->4, 2->3
        ("r64", 2, 64, 64, 64),  # windows (4, 2, 1): stage 0 one whole window; tables downsampled
    ],
    "shvit_tiny": [
        ("b1", 1, 80, 80, 80),
        ("b8", 8, 80, 80, 80),
        ("r112x144", 1, 112, 144, 80),
    ],
}


def build_timm(config: dict, img_size: int) -> torch.nn.Module:
    """timm's model for an edgert config dict (constructor called directly, no registry)."""
    if config["family"] == "efficientvit":
        return efficientvit_msra.EfficientVitMsra(
            img_size=img_size, in_chans=config["in_chans"], num_classes=config["num_classes"],
            embed_dim=tuple(config["embed_dim"]), key_dim=tuple(config["key_dim"]), depth=tuple(config["depth"]),
            num_heads=tuple(config["num_heads"]), window_size=tuple(config["window_size"]),
            kernels=tuple(config["kernels"]))
    return shvit.SHViT(
        in_chans=config["in_chans"], num_classes=config["num_classes"], embed_dim=tuple(config["embed_dim"]),
        partial_dim=tuple(config["partial_dim"]), qk_dim=tuple(config["key_dim"]), depth=tuple(config["depth"]),
        types=tuple(config["types"]))


@torch.no_grad()
def randomise(model: torch.nn.Module, gen: torch.Generator) -> None:
    """LeCun-initialise every conv and linear weight; give every norm non-trivial affine parameters
    and statistics, and every attention bias table N(0, 1)."""
    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=gen) * std)

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):  # variance-preserving, so inputs matter
            fan_in = module.weight[0].numel()
            normal(module.weight, fan_in ** -0.5)
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.GroupNorm)):
            uniform(module.weight, 0.5, 1.5)
            normal(module.bias, 0.2)
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            normal(module.running_mean, 0.2)
            uniform(module.running_var, 0.5, 2.0)
    for name, param in model.named_parameters():
        if name.endswith("attention_biases"):
            normal(param, 1.0)


def pixels(gen: torch.Generator, batch: int, height: int, width: int) -> torch.Tensor:
    """Random uint8 images [batch, 3, height, width]: blocky 16x16-patch colours plus pixel noise,
    so that images differ after global pooling (pure noise images all pool to about the same)."""
    blocks = torch.rand((batch, 3, -(-height // 16), -(-width // 16)), generator=gen)
    blocks = blocks.repeat_interleave(16, 2).repeat_interleave(16, 3)[:, :, :height, :width]
    noise = torch.rand((batch, 3, height, width), generator=gen)
    return (255 * (0.7 * blocks + 0.3 * noise)).round().to(torch.uint8)


def to_input(images: torch.Tensor) -> torch.Tensor:
    """The float input of uint8 pixels: (pixels - 128) / 64, exact in float32."""
    return (images.float() - 128.0) / 64.0


@torch.no_grad()
def record(name: str, config: dict) -> Path:
    """Build, randomise and run one configuration; write its .safetensors file."""
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = build_timm(config, config["img_size"]).eval()
    randomise(model, gen)
    for value in model.state_dict().values():
        if value.is_floating_point():
            value.copy_(value.half().float())
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    runs = []
    for run, batch, height, width, img_size in RUNS[name]:
        net = model
        if img_size != config["img_size"]:
            net = build_timm(config, img_size).eval()
            net.load_state_dict(efficientvit_msra.checkpoint_filter_fn(state, net), strict=True)
        images = pixels(gen, batch, height, width)
        tensors[f"record/{run}/input"] = images
        tensors[f"record/{run}/logits"] = net(to_input(images)).contiguous()
        runs.append(dict(name=run, batch=batch, height=height, width=width, img_size=img_size))
    metadata = {"config": json.dumps(config), "runs": json.dumps(runs),
                "timm_version": timm.__version__, "torch_version": torch.__version__}
    path = OUT / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


def record_shapes() -> Path:
    """state_dict_shapes.json.gz: {timm variant: {key: shape}} for timm's ten registered variants."""
    shapes = {}
    for variant in VARIANTS:
        with torch.device("meta"):
            model = timm.create_model(variant, pretrained=False)
        shapes[variant] = {k: list(v.shape) for k, v in model.state_dict().items()}
    path = OUT / "state_dict_shapes.json.gz"
    text = json.dumps({"timm_version": timm.__version__, "variants": shapes}, separators=(",", ":"))
    path.write_bytes(gzip.compress(text.encode(), mtime=0))
    return path


def main() -> None:
    """Write every recording and report file sizes."""
    OUT.mkdir(parents=True, exist_ok=True)
    for path in [*(record(name, config) for name, config in CONFIGS.items()), record_shapes()]:
        print(f"{path.relative_to(OUT.parents[2])}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
