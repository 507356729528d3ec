"""The wheel a regular `pip install .` builds holds every file the code reads at run time."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # builds the wheel from a copy of the tree

PACKAGE_DIRS = {"edgert": "edgert", "models": "edgert/models", "exporters": "edgert/exporters",
                "quant": "edgert/quant", "trt_plugins": "edgert/trt_plugins"}


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory) -> set[str]:
    """The wheel built from the tracked files alone, as a fresh clone would build it (a
    checkout's build/ and *.egg-info/ would otherwise leak earlier builds' file lists in)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in listed.stdout.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps",
                             "--no-build-isolation", "-q", "-w", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    (wheel,) = out.glob("edgert-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def tracked_package_files() -> list[str]:
    """Every file git tracks in the package folders, as its path inside the wheel."""
    listed = subprocess.run(["git", "ls-files", *PACKAGE_DIRS], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    return [PACKAGE_DIRS[path.split("/", 1)[0]] + "/" + path.split("/", 1)[1] for path in listed]


def test_wheel_has_every_tracked_package_file(wheel_files):
    files = tracked_package_files()
    assert any(f.endswith(".txt") for f in files)  # the bundled calibration sets are among them
    missing = [f for f in files if f not in wheel_files]
    assert not missing, f"not in the wheel: {missing}"


def test_wheel_has_the_bundled_calibration_sets(wheel_files):
    from edgert.quant.calib import BUNDLED

    for paths in BUNDLED.values():
        for path in paths:
            inside = "edgert/quant/" + path.relative_to(ROOT / "quant").as_posix()
            assert inside in wheel_files, inside


def test_wheel_carries_the_tiny_lm_but_no_example_images(wheel_files):
    """What `pip install edgert` downloads: code, the bundled calibration text and the tiny LM
    (a built-in model name), not the digit classifiers and their PNGs (examples/, in the
    repository only)."""
    assert "edgert/models/weights/tiny-lm/model.safetensors" in wheel_files
    assert not [f for f in wheel_files if f.endswith((".png", ".jpg")) or "digits" in f]
    assert not [f for f in wheel_files if f.startswith(("examples/", "tests/", "bench/", "scripts/"))]
