"""edgert: edge inference for attention-efficient transformers.

The runtime needs only numpy and onnxruntime; it never imports torch. Names are loaded on
first use, so the `edgert` command starts (and installs its interrupt handlers) before
onnxruntime is imported.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "edgert.errors": ["CalibrationError", "CheckpointError", "DependencyError", "DeviceUnavailableError",
                      "EdgertError", "ImageError", "InputError", "IsaError", "ModelLoadError", "OptionError",
                      "OutputPathError", "PlanError", "QuantizeError", "ShapeError", "SourceError",
                      "UnknownModelError", "ValidationError"],
    "edgert.generator": ["Generator"],
    "edgert.kv_cache": ["CacheLayout"],
    "edgert.plan": ["CachePolicy", "HeadPlan", "LayerPlan", "Manifest", "Softmax"],
    "edgert.session": ["Session", "TensorSpec", "load"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF) + ["__version__"]


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'edgert' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
