"""Every error a user can cause is an EdgertError subclass that lives in edgert.errors and can
be caught by name from `edgert`, whichever module raises it."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import edgert
import edgert.errors
from edgert.errors import EdgertError, OptionError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("edgert", "models", "exporters", "quant", "trt_plugins")


def _error_classes() -> list[type]:
    return [value for value in vars(edgert.errors).values()
            if inspect.isclass(value) and issubclass(value, EdgertError)]


@pytest.mark.parametrize("error", _error_classes(), ids=lambda c: c.__name__)
def test_every_error_class_is_exported_from_edgert(error):
    assert getattr(edgert, error.__name__) is error
    assert error.__name__ in edgert.__all__


def test_no_error_class_is_defined_outside_errors_module():
    """A subclass of an edgert error defined elsewhere could not be caught from `edgert`."""
    names = {c.__name__ for c in _error_classes()}
    outside = []
    for folder in PACKAGE_FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            if path == ROOT / "edgert" / "errors.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                    if bases & names:
                        outside.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert outside == []


def test_raising_modules_use_the_exported_classes():
    """The classes that modules re-use are the ones edgert exports (same objects)."""
    from edgert import cpu, images
    from edgert.quant import calib, quantize

    assert cpu.IsaError is edgert.IsaError
    assert images.ImageError is edgert.ImageError
    assert calib.CalibrationError is edgert.CalibrationError
    assert quantize.QuantizeError is edgert.QuantizeError


@pytest.mark.parametrize("call", [
    lambda: __import__("edgert.session", fromlist=["x"]).check_threads(0),
    lambda: __import__("edgert.session", fromlist=["x"]).session_options(spin="yes"),
    lambda: __import__("edgert.devices", fromlist=["x"]).resolve_device("tpu"),
    lambda: __import__("edgert.cpu", fromlist=["x"]).parse_isa("avx9000"),
], ids=["threads", "spin", "device", "isa"])
def test_bad_option_values_are_option_errors(call):
    with pytest.raises(OptionError):
        call()
