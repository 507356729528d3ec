"""edgert: edge inference for attention-efficient transformers.

The runtime needs only numpy and onnxruntime; it never imports torch.
"""

from edgert.errors import (
    DependencyError,
    DeviceUnavailableError,
    EdgertError,
    InputError,
    ModelLoadError,
    OutputPathError,
    PlanError,
    ShapeError,
    SourceError,
    UnknownModelError,
    ValidationError,
)
from edgert.plan import CachePolicy, HeadPlan, LayerPlan, Manifest, Softmax
from edgert.session import Session, TensorSpec, load

__version__ = "0.1.0"

__all__ = [
    "CachePolicy", "DependencyError", "DeviceUnavailableError", "EdgertError", "HeadPlan",
    "InputError", "LayerPlan", "Manifest", "ModelLoadError", "OutputPathError", "PlanError",
    "Session", "ShapeError", "Softmax", "SourceError", "TensorSpec", "UnknownModelError",
    "ValidationError", "load", "__version__",
]
