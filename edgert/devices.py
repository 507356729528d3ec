"""Map edgert device names to ONNX Runtime execution providers."""

from __future__ import annotations

import warnings

import onnxruntime as ort

from edgert.errors import DeviceUnavailableError, OptionError

DEVICE_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
DEVICES = ("cpu", "cuda", "tensorrt", "auto")


def resolve_device(device: str, *, strict: bool = False) -> tuple[str, list[str]]:
    """Return (device actually used, provider list) for `device`.

    `auto` picks the fastest available of tensorrt, cuda, cpu. A device whose provider
    is missing falls back to cpu with a warning, or raises DeviceUnavailableError if strict.
    """
    if not isinstance(device, str):
        raise OptionError(f"device must be a string ({', '.join(DEVICES)}), got {type(device).__name__}")
    if device not in DEVICES:
        raise OptionError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    available = set(ort.get_available_providers())
    if device == "auto":
        for name in ("tensorrt", "cuda", "cpu"):
            if DEVICE_PROVIDERS[name][0] in available:
                return name, DEVICE_PROVIDERS[name]
    if DEVICE_PROVIDERS[device][0] in available:
        return device, DEVICE_PROVIDERS[device]
    fallback_to_cpu(device, f"this onnxruntime has no {DEVICE_PROVIDERS[device][0]}", strict=strict)
    return "cpu", DEVICE_PROVIDERS["cpu"]


def fallback_to_cpu(device: str, reason: str, *, strict: bool) -> None:
    """Warn that `device` is not usable (or raise when strict)."""
    message = f"device {device!r} is unavailable ({reason})"
    if strict:
        raise DeviceUnavailableError(message)
    warnings.warn(f"{message}; running on cpu", RuntimeWarning, stacklevel=3)
