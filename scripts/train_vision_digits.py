"""Train EfficientViT-M0 and SHViT-S1 (models/efficientvit.py, models/shvit.py) on scikit-learn's 8x8 digits, upscaled.

    .venv/bin/python scripts/train_vision_digits.py   # the committed weights in examples/digits

No pretrained weights can be downloaded here, so these small from-scratch classifiers give
edgert's vision path real accuracy to check. Writes, under --out: one fp16 .safetensors per
variant (config and training record in its metadata), calib/ (64 train-split PNGs for INT8
calibration), heldout/<label>/ (the whole test split, ImageFolder layout) and README.md.

The training inputs are exactly what edgert's runtime makes of the PNGs: grayscale PNG ->
RGB -> /255 -> (x - 0.5) / 0.5. Seeded: the same seed, torch build and thread count give
the same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from edgert.models.vision import create_model
from edgert.models.vision_checkpoints import load_weights
from edgert.models.vision_configs import VARIANTS, VisionConfig, check_resolution

MODELS = ("efficientvit-m0", "shvit-s1")
MEAN = STD = (0.5, 0.5, 0.5)
SPLIT_SEED = 0  # the train/test split is fixed, whatever --seed, so heldout/ fits every model
TEST_FRACTION = 0.2
CALIB_IMAGES = 64
BATCH_SIZE = 64
LR, WEIGHT_DECAY, WARMUP_EPOCHS, LABEL_SMOOTHING = 2e-3, 0.05, 2, 0.1


def digit_image(pixels: np.ndarray, resolution: int) -> Image.Image:
    """An 8x8 digit (values 0..16) as a resolution x resolution grayscale image (bilinear upscale)."""
    gray = np.rint(np.asarray(pixels, dtype=np.float64).reshape(8, 8) * 255 / 16).astype(np.uint8)
    return Image.fromarray(gray).resize((resolution, resolution), Image.BILINEAR)


def image_tensor(image: Image.Image) -> torch.Tensor:
    """[3, R, R] model input of an image, as edgert's runtime makes it: RGB, /255, (x - mean) / std."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


def load_split(resolution: int) -> dict[str, tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """{'train'|'test': (dataset indices, [N, 3, R, R] inputs, [N] labels)}, stratified ~80/20."""
    digits = load_digits()
    idx = np.arange(len(digits.target))
    splits = dict(zip(("train", "test"), train_test_split(
        idx, test_size=TEST_FRACTION, stratify=digits.target, random_state=SPLIT_SEED)))
    return {name: (i, torch.stack([image_tensor(digit_image(digits.images[j], resolution)) for j in i]),
                   torch.from_numpy(digits.target[i]).long()) for name, i in splits.items()}


def model_config(variant: str, resolution: int) -> VisionConfig:
    """The variant's full architecture with a 10-digit head at `resolution`."""
    return replace(VARIANTS[variant], num_classes=10, img_size=resolution, mean=MEAN, std=STD,
                   crop_pct=1.0, labels=tuple("0123456789"))


def shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by up to `max_shift` pixels each way, the gap filled with background."""
    background = (0 - MEAN[0]) / STD[0]
    padded = F.pad(x, [max_shift] * 4, value=background)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, len(x)), generator=generator).tolist()
    R = x.shape[-1]
    return torch.stack([padded[i, :, y:y + R, c:c + R] for i, (y, c) in enumerate(zip(dy, dx))])


def lr_at(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to zero: the learning rate multiplier."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of `model` in eval mode."""
    model.eval()
    preds = torch.cat([model(chunk).argmax(-1) for chunk in x.split(256)])
    return (preds == y).float().mean().item()


def train(variant: str, data: dict, resolution: int, epochs: int, seed: int) -> tuple[torch.nn.Module, float]:
    """A trained model (AdamW, warmup + cosine, random shifts) and its training seconds."""
    _, x, y = data["train"]
    _, x_test, y_test = data["test"]
    model = create_model(model_config(variant, resolution), seed=seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(x) / BATCH_SIZE)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_at(s, epochs * steps_per_epoch, WARMUP_EPOCHS * steps_per_epoch))
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total_loss, correct = 0.0, 0
        for batch in torch.randperm(len(x), generator=gen).split(BATCH_SIZE):
            inputs = shift(x[batch], resolution // 16, gen)
            logits = model(inputs)
            loss = F.cross_entropy(logits, y[batch], label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += loss.item() * len(batch)
            correct += (logits.argmax(-1) == y[batch]).sum().item()
        print(f"{variant} epoch {epoch + 1:2d}/{epochs}  loss {total_loss / len(x):.4f}  "
              f"train acc {correct / len(x):.4f}  test acc {accuracy(model, x_test, y_test):.4f}  "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    return model.eval(), time.perf_counter() - start


def fp16_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The persistent state dict, floating tensors in float16 (num_batches_tracked stays int64:
    edgert's load_weights wants every key)."""
    return {k: (v.half() if v.is_floating_point() else v).detach().contiguous()
            for k, v in model.state_dict().items()}


def fp32_model(state: dict[str, torch.Tensor], variant: str, config: VisionConfig) -> torch.nn.Module:
    """An fp32 model holding an fp16 state dict, loaded as edgert loads checkpoints."""
    model = create_model(config)
    load_weights(model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, variant=variant)
    return model.eval()


def write_pngs(out: Path, data: dict, resolution: int) -> None:
    """calib/: the first CALIB_IMAGES train images; heldout/<label>/: the whole test split."""
    digits = load_digits()
    for idx in data["train"][0][:CALIB_IMAGES]:
        path = out / "calib" / f"{idx:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        digit_image(digits.images[idx], resolution).save(path, optimize=True)
    for idx in data["test"][0]:
        path = out / "heldout" / str(digits.target[idx]) / f"{idx:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        digit_image(digits.images[idx], resolution).save(path, optimize=True)


def check_pngs(out: Path, data: dict) -> None:
    """Every heldout PNG read back as the runtime would gives exactly the training-pipeline tensor."""
    idx, x, _ = data["test"]
    labels = load_digits().target
    for i, j in enumerate(idx):
        png = image_tensor(Image.open(out / "heldout" / str(labels[j]) / f"{j:04d}.png"))
        assert torch.equal(png, x[i]), f"heldout PNG {j} differs from its training tensor"


def write_readme(out: Path) -> None:
    """README.md from the metadata of the checkpoints present in `out`."""
    rows, commands = [], []
    for variant in MODELS:
        path = out / f"{variant}.safetensors"
        if not path.exists():
            continue
        with safe_open(str(path), framework="pt") as f:
            rec = json.loads(f.metadata()["edgert_trained"])
        rows.append(f"| `{variant}` | {rec['test_accuracy_fp32']:.2%} | {rec['test_accuracy']:.2%} | "
                    f"{rec['seconds']:.0f} s | {path.stat().st_size / 1e6:.1f} MB |")
        commands.append(rec["command"])
    res = rec["resolution"]
    text = f"""# Digit classifiers (EfficientViT-M0, SHViT-S1)

edgert's vision models trained from scratch on scikit-learn's `load_digits` (1797 8x8 digits,
values 0..16) upscaled to {res}x{res}: the full architectures with a 10-class head, so edgert's
image-classifier path has real accuracy to check. Stratified split: {rec['train_size']} train,
{rec['test_size']} test (`train_test_split(random_state={SPLIT_SEED})`); seed {rec['seed']},
{rec['epochs']} epochs, torch {rec['torch']}, 2 CPU threads.

- `<variant>.safetensors`: the state dict in float16; metadata `edgert_variant`, `edgert_config`
  (VisionConfig.to_dict(): mean = std = 0.5, crop_pct 1.0, labels "0".."9") and `edgert_trained`.
- `calib/`: {CALIB_IMAGES} train-split PNGs ({res}x{res} grayscale), for INT8 calibration.
- `heldout/<label>/`: the whole test split as PNGs (ImageFolder layout).

Pixel pipeline: digit * 255 / 16 rounded to uint8 -> PIL bilinear resize -> RGB -> / 255 ->
(x - 0.5) / 0.5; the training inputs equal these PNGs read back (the script checks). Training
times are wall-clock on a shared 2-core machine.

| model | test acc (fp32) | test acc (fp16 weights) | training | file |
|---|---|---|---|---|
{chr(10).join(rows)}

Made by (2 CPU cores):

    {(chr(10) + '    ').join(dict.fromkeys(commands))}
"""
    (out / "README.md").write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("examples/digits"))
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=MODELS)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    resolution = check_resolution(args.resolution)
    command = shlex.join([".venv/bin/python", *sys.argv])

    data = load_split(resolution)
    write_pngs(args.out, data, resolution)
    check_pngs(args.out, data)
    for variant in [args.only] if args.only else MODELS:
        torch.manual_seed(args.seed)
        model, seconds = train(variant, data, resolution, args.epochs, args.seed)
        fp32_acc = accuracy(model, *data["test"][1:])
        config = model_config(variant, resolution)
        state = fp16_state(model)
        record = {"seed": args.seed, "epochs": args.epochs, "resolution": resolution,
                  "train_size": len(data["train"][0]), "test_size": len(data["test"][0]),
                  "test_accuracy": accuracy(fp32_model(state, variant, config), *data["test"][1:]),
                  "test_accuracy_fp32": fp32_acc, "seconds": round(seconds, 1),
                  "torch": torch.__version__, "threads": torch.get_num_threads(), "command": command}
        path = args.out / f"{variant}.safetensors"
        save_file(state, str(path), metadata={"edgert_variant": variant, "edgert_config": json.dumps(config.to_dict()),
                                              "edgert_trained": json.dumps(record)})
        saved = load_file(str(path))
        assert saved.keys() == state.keys() and all(torch.equal(saved[k], v) for k, v in state.items())
        print(f"{variant}: test acc {fp32_acc:.4f} (fp32), {record['test_accuracy']:.4f} (fp16 weights), "
              f"{seconds:.0f} s, {path.stat().st_size / 1e6:.2f} MB -> {path}", flush=True)
    write_readme(args.out)


if __name__ == "__main__":
    main()
