"""Images for image-classification models: the preprocessing their manifest describes,
image files and ImageFolder labels, and the top classes of their logits.

Preprocessing is timm's evaluation transform: resize the shorter side to
floor(resolution / crop_pct) with the manifest's interpolation, crop the centre
resolution x resolution, scale to [0, 1] and normalise with the manifest's mean and std.
Pillow is imported only when an image is read (`pip install pillow`).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgert._io import input_file
from edgert.errors import DependencyError, ImageError, first_line, shown_path
from edgert.memory import check_memory

TASK = "image-classification"
PIXEL_VALUES = "pixel_values"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
INTERPOLATIONS = ("bicubic", "bilinear")
TOP_K = 5
# Bytes per pixel of a decoded image (Pillow keeps up to 4 bytes per pixel: RGBA, CMYK, I, F)
# plus its RGB copy: what reading an image takes before it is resized.
DECODED_BYTES_PER_PIXEL = 4 + 3
# The resized image (shorter side to resolution / crop_pct) is made whole, as timm makes it, up
# to this many pixels (32 MiB; aspect ratios up to 128:1 at 224 px). Beyond it, e.g. for a 100000 x 1
# image whose resized form would take gigabytes, only the centre crop is resized (Pillow's
# resize with a box): the same source positions and filter, but Pillow may then run its two
# passes in the other order, so pixels can differ by a few levels from the whole-image path.
MAX_RESIZED_PIXELS = 2**23


@dataclass(frozen=True)
class ImageSpec:
    """How a model wants its images: manifest extra["image"] of an image-classification model."""

    resolution: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    interpolation: str
    labels: tuple[str, ...] | None = None
    channels: int = 3

    @classmethod
    def from_manifest(cls, manifest, *, name: str = "the model") -> ImageSpec:
        """The spec of an image-classification manifest; ImageError naming `name` if the
        model is not an image model or its image facts are malformed."""
        task = getattr(manifest, "task", None)
        image = (getattr(manifest, "extra", None) or {}).get("image")
        if task != TASK or not isinstance(image, dict):
            what = f"its manifest says task {task!r}" if manifest is not None else "it has no edgert manifest"
            raise ImageError(f"{name} is not an image model ({what}); images need a model exported "
                             f"for {TASK}, e.g. `edgert export efficientvit-m0 -o model.onnx`")
        return cls(resolution=_whole(image.get("resolution"), "resolution", name),
                   mean=_triple(image.get("mean"), "mean", name),
                   std=_triple(image.get("std"), "std", name, positive=True),
                   crop_pct=_crop_pct(image.get("crop_pct"), name),
                   interpolation=_interpolation(image.get("interpolation"), name),
                   labels=_labels(image.get("labels"), name),
                   channels=_channels(image.get("channels", 3), name))

    @property
    def resize_to(self) -> int:
        """The shorter side before the centre crop: floor(resolution / crop_pct)."""
        return math.floor(self.resolution / self.crop_pct)


def is_image_model(manifest) -> bool:
    """Whether `manifest` (a Manifest or None) is an image-classification model's."""
    return getattr(manifest, "task", None) == TASK


def image_spec(session) -> tuple[ImageSpec, str]:
    """The ImageSpec of `session`'s model and the name of its pixel input, checked against
    the graph: one float32 input [batch, channels, resolution, resolution]."""
    name = shown_path(session.path.name)
    spec = ImageSpec.from_manifest(session.manifest, name=name)
    roles = session.manifest.inputs or {}
    input_name = next((n for n, role in roles.items() if role == PIXEL_VALUES), PIXEL_VALUES)
    tensor = next((s for s in session.inputs if s.name == input_name), None)
    if tensor is None or len(session.inputs) != 1:
        raise ImageError(f"{name}: an image model takes one input {input_name!r}; "
                         f"this one takes {', '.join(session.input_names)}")
    want = (spec.channels, spec.resolution, spec.resolution)
    clash = any(isinstance(d, int) and d != w for d, w in zip(tensor.shape[1:], want))
    if tensor.dtype != np.float32 or len(tensor.shape) != 4 or clash:
        raise ImageError(f"{name}: input {tensor.describe()} does not match its manifest's "
                         f"images (float32[batch, {', '.join(map(str, want))}])")
    return spec, input_name


def load_image(path: str | os.PathLike):
    """The image at `path` as an RGB Pillow image; ImageError naming the file if it is
    missing or not a readable image."""
    image_module = _pillow()
    path = input_file(path, "image", ImageError)
    try:
        with image_module.open(path) as image:  # reads the header only: the size, not the pixels
            _check_decoded_size(path, image.size)
            image.load()
            return image.convert("RGB")
    except ImageError:
        raise
    except Exception as exc:  # Pillow raises many types for truncated or foreign files
        raise ImageError(f"cannot read {shown_path(path)} as an image: {first_line(exc)}") from None


def _check_decoded_size(path: Path, size: tuple[int, int]) -> None:
    """ImageError when decoding an image of `size` (width, height) would take more memory than
    is available (Pillow's own guard, MAX_IMAGE_PIXELS, refuses only sizes past its limit)."""
    width, height = size
    check_memory(width * height * DECODED_BYTES_PER_PIXEL,
                 f"decoding {shown_path(path)} ({width} x {height} pixels)", error=ImageError)


def preprocess(image, spec: ImageSpec) -> np.ndarray:
    """An RGB Pillow image as the model's float32 [3, R, R] input, the way timm's eval
    transform makes it (torchvision Resize on the shorter side, CenterCrop, ToTensor, Normalize)."""
    image_module = _pillow()
    resample = {"bicubic": image_module.Resampling.BICUBIC,
                "bilinear": image_module.Resampling.BILINEAR}[spec.interpolation]
    width, height = image.size
    short, long = sorted((width, height))
    size = (spec.resize_to, int(spec.resize_to * long / short))
    resized = size if width <= height else size[::-1]
    crop = spec.resolution
    # torchvision's CenterCrop: round() of the half-difference, Python's round-half-to-even
    left, top = int(round((resized[0] - crop) / 2.0)), int(round((resized[1] - crop) / 2.0))
    image = image.convert("RGB")
    if resized[0] * resized[1] <= MAX_RESIZED_PIXELS:
        image = image.resize(resized, resample).crop((left, top, left + crop, top + crop))
    else:  # an extreme aspect ratio: resize only the crop's part of the image (see MAX_RESIZED_PIXELS)
        sx, sy = width / resized[0], height / resized[1]
        image = image.resize((crop, crop), resample, box=(left * sx, top * sy, (left + crop) * sx, (top + crop) * sy))
    pixels = np.asarray(image, dtype=np.float32) / np.float32(255)
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def load_preprocessed(paths: Sequence[str | os.PathLike], spec: ImageSpec) -> np.ndarray:
    """Images at `paths` preprocessed for `spec`, stacked: float32 [N, 3, R, R]."""
    size = (len(paths), spec.channels, spec.resolution, spec.resolution)
    batch = np.empty(size, np.float32)
    for i, path in enumerate(paths):
        batch[i] = preprocess(load_image(path), spec)
    return batch


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Every image under `folder` and its sub-folders, sorted by path.

    Images are recognised by extension (IMAGE_EXTENSIONS, any case). Hidden files and
    folders (names starting with '.', such as .DS_Store or .ipynb_checkpoints) are skipped;
    any other file is an ImageError naming it, so a stray file is never silently left out.
    A corrupt image is found when it is read (load_image).
    """
    root = Path(folder)
    if not root.is_dir():
        raise ImageError(f"image folder not found: {shown_path(root)}" if not root.exists()
                         else f"{shown_path(root)} is not a folder of images")
    found = []
    for parent, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            path = Path(parent) / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                raise ImageError(f"{shown_path(path)} is not an image ({', '.join(IMAGE_EXTENSIONS)}); "
                                 "move it out of the image folder")
            found.append(path)
    if not found:
        raise ImageError(f"{shown_path(root)} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return sorted(found)


def folder_labels(files: Sequence[Path], folder: str | os.PathLike, labels: Sequence[str] | None,
                  classes: int | None = None) -> np.ndarray | None:
    """Class indices of `files` when `folder` is laid out as an ImageFolder, else None.

    The layout counts when every image sits (at any depth) in a first-level sub-folder and
    those sub-folders are named by the model's `labels`; a model without labels takes
    sub-folders named by class index (0, 1, ...; below `classes` when known). If some
    sub-folders are labels and others are not, the first that is not is an ImageError.
    """
    root = Path(folder)
    parts = [Path(f).relative_to(root).parts for f in files]
    if not parts or any(len(p) < 2 for p in parts):
        return None
    names = sorted({p[0] for p in parts})
    if labels is not None:
        index = {label: i for i, label in enumerate(labels)}
    else:
        index = {n: int(n) for n in names if n.isdecimal() and (classes is None or int(n) < classes)}
    unknown = [n for n in names if n not in index]
    if len(unknown) == len(names):
        return None
    if unknown:
        words = "one of the model's labels" if labels is not None else "a class index"
        raise ImageError(f"sub-folder {shown_path(root / unknown[0])} is not {words}, while other "
                         "sub-folders are: name each class folder by its label")
    return np.array([index[p[0]] for p in parts], np.int64)


@dataclass(frozen=True)
class Prediction:
    """One class of an image's top-k: its index, name and softmax probability."""

    index: int
    label: str
    probability: float


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 (stable for large logits)."""
    shifted = np.asarray(logits, np.float64) - np.max(logits, axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def top_k(logits: np.ndarray, labels: Sequence[str] | None, k: int = TOP_K) -> list[list[Prediction]]:
    """For each row of `logits` ([N, classes], or one [classes] row), its `k` most probable
    classes, most probable first; a class without a label is named by its index."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ImageError(f"k must be a whole number >= 1, got {k!r}")
    logits = np.asarray(logits)
    rows = logits[None] if logits.ndim == 1 else logits
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ImageError(f"logits must be [images, classes], got shape {logits.shape}")
    probabilities = softmax(rows)
    k = min(int(k), rows.shape[1])
    result = []
    for row in probabilities:
        order = np.argsort(-row, kind="stable")[:k]
        result.append([Prediction(int(i), labels[i] if labels is not None and i < len(labels) else str(int(i)),
                                  float(row[i])) for i in order])
    return result


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DependencyError("reading images needs Pillow: pip install pillow") from None
    return Image


def _whole(value: object, field: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ImageError(f"{name}: manifest image.{field} must be a whole number >= 1, got {value!r}")
    return value


def _channels(value: object, name: str) -> int:
    if value != 3 or isinstance(value, bool):
        raise ImageError(f"{name}: manifest image.channels must be 3 (RGB), got {value!r}")
    return 3


def _triple(value: object, field: str, name: str, *, positive: bool = False) -> tuple[float, float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
        for v in value)
    if not ok:
        words = "positive " if positive else ""
        raise ImageError(f"{name}: manifest image.{field} must be 3 finite {words}numbers (R, G, B), got {value!r}")
    return tuple(float(v) for v in value)


def _crop_pct(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ImageError(f"{name}: manifest image.crop_pct must be a number in (0, 1], got {value!r}")
    return float(value)


def _interpolation(value: object, name: str) -> str:
    if value not in INTERPOLATIONS:
        raise ImageError(f"{name}: manifest image.interpolation must be {' or '.join(INTERPOLATIONS)}, "
                         f"got {value!r}")
    return value


def _labels(value: object, name: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ImageError(f"{name}: manifest image.labels must be a list of class names or null")
    return tuple(value)
