"""bench/gpu_check.sh rehearsed on CPU (--dry-run: Triton's interpreter, tiny shapes), so the
one run on the GPU machine works the first time."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("triton")


@pytest.mark.slow
def test_gpu_script_dry_run_writes_every_result(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path), "--dry-run"],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "failed" not in result.stdout.replace("0 failed", "")
    environment = json.loads((tmp_path / "environment.json").read_text())
    assert environment["interpreter"] is True and environment["gpu"] is None
    for name in ("gpu_headwise_decode.json", "gpu_vision_attention.json", "gpu-tests.xml"):
        assert (tmp_path / name).stat().st_size > 0, name
    section = (tmp_path / "gpu_section.md").read_text()
    assert "dry run" in section and "0 failed" in section and "Vision attention kernels" in section
