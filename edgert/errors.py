"""Errors a user can cause. The library raises these; only the CLI turns them into
one line and exit code 2."""

import os


class EdgertError(Exception):
    """Base class of every error edgert reports to a user."""


class ModelLoadError(EdgertError):
    """The model file is missing, unreadable, not ONNX, or truncated."""


class InputError(EdgertError):
    """Inputs given to a Session do not match the model's signature."""


class UnknownModelError(EdgertError):
    """A built-in model name is not in the zoo."""


class SourceError(EdgertError):
    """A model source (directory, checkpoint) cannot be used."""


class DeviceUnavailableError(EdgertError):
    """The requested device has no usable ONNX Runtime execution provider."""


class ShapeError(EdgertError):
    """A dynamic dimension cannot be resolved to a concrete size."""


class ValidationError(EdgertError):
    """An exported graph disagrees with its source model beyond tolerance."""


class PlanError(EdgertError):
    """A HeadPlan is malformed or impossible for the model it is applied to."""


class OutputPathError(EdgertError):
    """An output cannot be written where the user asked."""


class DependencyError(EdgertError):
    """An optional dependency needed for this feature is not installed."""


class OptionError(EdgertError):
    """An option or argument value is out of range, malformed, or does not fit the model."""


class IsaError(OptionError):
    """An instruction-set override names something edgert does not know."""


class ImageError(InputError):
    """An image, image folder or image model cannot be used as asked."""


class CheckpointError(SourceError):
    """A checkpoint does not fit the model it is loaded into."""


class CalibrationError(EdgertError):
    """Calibration data is missing, empty, or of the wrong kind for the model."""


class QuantizeError(EdgertError):
    """Quantization cannot be done as asked."""


def shown_path(path: object) -> str:
    """A path as one printable line (repr-quoted when it holds control characters)."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    return text if text.isprintable() else repr(text)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name if it has none."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
