"""Calibration data: a text file (one example per line, tokenized with the model's own
tokenizer) or an .npz of named input arrays. Yields one feed dict per example, or for
decoders (whose feeds include a KV cache) one prompt of token ids per example. Image
models take a folder of images (preprocessed as their manifest says) or an .npz of
pixel_values, with labels from an ImageFolder layout or the .npz (load_images)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgert.errors import CalibrationError, EdgertError, shown_path
from edgert.images import ImageSpec, folder_labels, image_files, image_spec, is_image_model, load_preprocessed
from edgert.session import Session

DATA = Path(__file__).resolve().parent / "data"
# (calibration set, held-out set) of English sentences, written in the repo: a built-in
# model's data, and the prompts of a decoder whose tokenizer knows the words.
BUNDLED_TEXT = (DATA / "minilm_calib.txt", DATA / "minilm_heldout.txt")
# Built-in model name -> (calibration set, held-out set).
BUNDLED = {"minilm": BUNDLED_TEXT}



def load_calibration(path: str | Path, session: Session, *, size: int | None = None,
                     same_length: bool = False, role: str = "calibration data"
                     ) -> list[dict[str, np.ndarray]]:
    """Read up to `size` calibration examples from `path` as feed dicts for `session`
    (a Session, or anything with its input_names, tokenizer, check_inputs and path).

    Each example is a batch of one and unpadded, so padding never enters the activation
    statistics, unless `same_length` (histogram calibrators need equal shapes): then text
    examples are padded to the longest one. `role` names the file in errors
    (e.g. "held-out data"). An image model also takes a folder of images (load_images).
    """
    if is_image_model(getattr(session, "manifest", None)) and Path(path).is_dir():
        spec, input_name = image_spec(session)
        return load_images(path, spec, size=size, role=role).feeds(input_name)
    path = _checked_path(path, size, role)
    if path.suffix == ".npz":
        samples = _npz_samples(path, session)
    else:
        samples = _text_samples(path, session, size, same_length, role)
    if not samples:
        raise CalibrationError(f"{role} {path} has no examples")
    samples = samples[:size] if size else samples
    for feeds in samples:
        session.check_inputs(feeds)
    return samples


def load_prompts(path: str | Path, session: Session, *, size: int | None = None,
                 role: str = "calibration data") -> list[list[int]]:
    """Read up to `size` prompts (lists of token ids) for a decoder from `path`: a text file
    (one prompt per line, tokenized with the model's tokenizer) or an .npz whose `input_ids`
    array is [N, L] (with an optional `attention_mask` marking padding to drop)."""
    path = _checked_path(path, size, role)
    if path.suffix == ".npz":
        arrays = _read_npz(path)
        if "input_ids" not in arrays or arrays["input_ids"].ndim != 2:
            raise CalibrationError(f"{path.name} needs an input_ids array [prompts, tokens] of token ids")
        ids = arrays["input_ids"]
        mask = arrays.get("attention_mask")
        if mask is not None and mask.shape != ids.shape:
            raise CalibrationError(f"{path.name}: attention_mask {mask.shape} and input_ids {ids.shape} differ in shape")
        if not np.issubdtype(ids.dtype, np.integer):
            raise CalibrationError(f"{path.name}: input_ids must hold integers, not {ids.dtype}")
        prompts = [[int(t) for t, m in zip(row, mask[i] if mask is not None else np.ones_like(row)) if m]
                   for i, row in enumerate(ids)]
    else:
        lines = _text_lines(path, size)
        tokenize = _tokenizer(session, role, "input_ids")
        prompts = [[int(t) for t in tokenize([line])["input_ids"][0]] for line in lines]
    prompts = [p for p in prompts if p][:size]
    if not prompts:
        raise CalibrationError(f"{role} {path} has no examples")
    return prompts


def _checked_path(path: str | Path, size: int | None, role: str) -> Path:
    path = Path(path)
    if size is not None and size < 1:
        raise CalibrationError(f"calibration size must be >= 1, got {size}")
    if not path.exists():
        raise CalibrationError(f"{role} not found: {path}")
    if path.is_dir():
        raise CalibrationError(f"{role} {path} is a folder; folders of images are for image "
                               "models (task image-classification): give a .txt or .npz file")
    return path


def _text_lines(path: Path, size: int | None) -> list[str]:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise CalibrationError(f"{path} is not a UTF-8 text file (one example per line) "
                               "nor an .npz of input arrays") from None
    return [line for line in lines if line][:size]


def _tokenizer(session: Session, role: str, takes: str):
    try:
        return session.tokenizer
    except EdgertError:
        raise CalibrationError(f"text {role} needs a model that carries a tokenizer; "
                               f"{session.path.name} takes {takes}: "
                               "give an .npz of those arrays instead") from None


def _text_samples(path: Path, session: Session, size: int | None, same_length: bool,
                  role: str) -> list[dict[str, np.ndarray]]:
    lines = _text_lines(path, size)
    if not lines:
        return []
    tokenize = _tokenizer(session, role, ", ".join(session.input_names))
    if same_length:
        batch = tokenize(lines)
        return [{name: array[i:i + 1] for name, array in batch.items()} for i in range(len(lines))]
    return [tokenize([line]) for line in lines]


def _npz_samples(path: Path, session: Session) -> list[dict[str, np.ndarray]]:
    """Each array is [N, ...]: example i is every array's slice i, kept as a batch of one."""
    arrays = _read_npz(path)
    missing = [n for n in session.input_names if n not in arrays]
    if missing:
        raise CalibrationError(f"{path.name} lacks input {missing[0]!r}; the model takes "
                               f"{', '.join(session.input_names)}")
    counts = {len(arrays[n]) for n in session.input_names}
    if len(counts) != 1:
        raise CalibrationError(f"{path.name}: arrays disagree on the number of examples ({sorted(counts)})")
    count = counts.pop()
    return [{n: arrays[n][i:i + 1] for n in session.input_names} for i in range(count)]


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:
        raise CalibrationError(f"cannot read {path} as .npz: {exc}") from None


@dataclass
class ImageData:
    """Images for an image model: pixel_values float32 [N, 3, R, R], labels int64 [N] class
    indices (None: unlabelled), and where they came from, in words."""

    pixel_values: np.ndarray
    labels: np.ndarray | None
    source: str

    def feeds(self, input_name: str) -> list[dict[str, np.ndarray]]:
        """One feed dict per image, each a batch of one (what calibration reads)."""
        return [{input_name: self.pixel_values[i:i + 1]} for i in range(len(self.pixel_values))]


def load_images(path: str | Path, spec: ImageSpec, *, classes: int | None = None, size: int | None = None,
                role: str = "calibration data") -> ImageData:
    """Up to `size` images for a model with `spec` from `path`: a folder of images
    (edgert.images.image_files; labels from an ImageFolder layout, folder_labels) or an .npz
    with `pixel_values` [N, 3, R, R] (already preprocessed) and optional integer `labels` [N].
    With fewer than all, they are spread evenly over the sorted files, so every class folder
    contributes. `classes`: the model's number of classes, to check labels against."""
    path = Path(path)
    if size is not None and size < 1:
        raise CalibrationError(f"calibration size must be >= 1, got {size}")
    if not path.exists():
        raise CalibrationError(f"{role} not found: {shown_path(path)}")
    if path.is_dir():
        files = image_files(path)
        labels = folder_labels(files, path, spec.labels, classes)
        chosen = _spread(len(files), size)
        pixels = load_preprocessed([files[i] for i in chosen], spec)
        labels = labels[chosen] if labels is not None else None
        words = f"{shown_path(path)} ({len(chosen)} images" + (", labelled by folder)" if labels is not None else ")")
        return ImageData(pixels, labels, words)
    if path.suffix != ".npz":
        raise CalibrationError(f"{role} for an image model is a folder of images or an .npz of "
                               f"pixel_values, not {shown_path(path)}")
    pixels, labels = _npz_images(path, spec, classes)
    chosen = _spread(len(pixels), size)
    labels = labels[chosen] if labels is not None else None
    words = f"{shown_path(path)} ({len(chosen)} images" + (", labelled)" if labels is not None else ")")
    return ImageData(np.ascontiguousarray(pixels[chosen]), labels, words)


def _spread(count: int, size: int | None) -> np.ndarray:
    """Indices of `size` items spread evenly over `count` (all of them when size is None or larger)."""
    if size is None or size >= count:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, size).round().astype(np.int64))


def _npz_images(path: Path, spec: ImageSpec, classes: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    arrays = _read_npz(path)
    want = (spec.channels, spec.resolution, spec.resolution)
    shape_words = f"[N, {', '.join(map(str, want))}]"
    pixels = arrays.get("pixel_values")
    if pixels is None:
        raise CalibrationError(f"{path.name} needs a pixel_values array {shape_words} of preprocessed "
                               f"images; it has {', '.join(arrays) or 'no arrays'}")
    if pixels.ndim != 4 or pixels.shape[1:] != want or len(pixels) == 0:
        raise CalibrationError(f"{path.name}: pixel_values must be {shape_words} with N >= 1, "
                               f"got shape {pixels.shape}")
    if pixels.dtype.kind != "f":
        raise CalibrationError(f"{path.name}: pixel_values must be floats (preprocessed and normalised "
                               f"as the model's manifest says), not {pixels.dtype}")
    pixels = pixels.astype(np.float32, copy=False)
    if not np.isfinite(pixels).all():
        raise CalibrationError(f"{path.name}: pixel_values holds NaN or infinite values")
    labels = arrays.get("labels")
    if labels is None:
        return pixels, None
    if labels.shape != (len(pixels),) or labels.dtype.kind not in "iu":
        raise CalibrationError(f"{path.name}: labels must be integers [{len(pixels)}] (one class index "
                               f"per image), got {labels.dtype}{list(labels.shape)}")
    top = classes if classes is not None else len(spec.labels) if spec.labels else None
    if labels.min() < 0 or (top is not None and labels.max() >= top):
        raise CalibrationError(f"{path.name}: labels must lie in [0, {top or 'classes'}), "
                               f"got {labels.min()}..{labels.max()}")
    return pixels, labels.astype(np.int64)
