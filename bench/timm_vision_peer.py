"""timm as a peer, run inside bench/.venv-timm (timm needs torchvision, which does not install
beside edgert's CPU torch):

    bench/.venv-timm/bin/python bench/timm_vision_peer.py WORK --threads 2 --iters 30

For each `WORK/<name>.safetensors` written by bench/vision_check.py (edgert's weights, timm's
parameter names), and for mobilenetv3_large_100 with timm's own random init: build the timm
model, load the weights strictly, export it with `torch.onnx.export` (opset 18, dynamic
batch) to `WORK/<name>.timm.onnx`, record its logits on `WORK/pixels.npy`, and time torch
eager at each batch. Prints one JSON line: {name: {"logits": ..., "eager_ms": {batch: [...]}}}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
import warnings
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import load_file

REFERENCE_CNN = "mobilenetv3_large_100"


def timm_model(name: str, weights: Path | None, resolution: int) -> torch.nn.Module:
    """The timm model `name` (edgert spelling or timm's) with `weights` loaded strictly."""
    timm_name = name.replace("-", "_")
    kwargs = {"img_size": resolution} if timm_name.startswith("efficientvit_m") else {}
    if weights is None:
        return timm.create_model(timm_name, **kwargs).eval()
    state = load_file(str(weights))
    classes = state["head.linear.weight" if "head.linear.weight" in state else "head.l.weight"].shape[0]
    model = timm.create_model(timm_name, num_classes=classes, **kwargs).eval()
    model.load_state_dict(state, strict=True)
    return model


def export(model: torch.nn.Module, path: Path, resolution: int) -> None:
    """torch.onnx.export as a timm user would call it: opset 18, dynamic batch."""
    sample = torch.randn(2, 3, resolution, resolution)
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (sample,), str(path), dynamo=True, opset_version=18, input_names=["pixel_values"],
                          output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False)


@torch.no_grad()
def eager_ms(model: torch.nn.Module, batch: int, resolution: int, iters: int, warmup: int = 3) -> list[float]:
    """Per-call latency of the eager model in milliseconds."""
    pixels = torch.randn(batch, 3, resolution, resolution)
    for _ in range(warmup):
        model(pixels)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        model(pixels)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pixels = torch.from_numpy(np.load(args.work / "pixels.npy"))
    names = sorted(p.name.removesuffix(".safetensors") for p in args.work.glob("*.safetensors"))
    out = {}
    for name in [*names, REFERENCE_CNN]:
        weights = args.work / f"{name}.safetensors" if name != REFERENCE_CNN else None
        torch.manual_seed(0)
        model = timm_model(name, weights, args.resolution)
        export(model, args.work / f"{name}.timm.onnx", args.resolution)
        with torch.no_grad():
            logits = model(pixels).numpy()
        out[name] = {"logits": logits.tolist(),
                     "eager_ms": {b: eager_ms(model, int(b), args.resolution, args.iters)
                                  for b in args.batches.split(",")},
                     "timm_version": timm.__version__, "torch_version": torch.__version__}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
