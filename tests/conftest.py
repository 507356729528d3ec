"""Shared fixtures: tiny hand-built ONNX graphs (no torch) and exports made once per run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]


def make_tiny_model(path: Path, *, dims=("batch", 4), with_ids: bool = True) -> Path:
    """y = x @ W + 1 (float), n = ReduceSum(ids) (int64): a model with named dynamic dims."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W")
    one = numpy_helper.from_array(np.ones(3, dtype=np.float32), "one")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "one"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 3])]
    if with_ids:
        nodes.append(helper.make_node("ReduceSum", ["ids"], ["n"], keepdims=0))
        inputs.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"]))
        outputs.append(helper.make_tensor_value_info("n", TensorProto.INT64, []))
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, [w, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return make_tiny_model(tmp_path / "tiny.onnx")


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m edgert ARGS` in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "edgert", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="session")
def minilm_st(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 exported as sentence-embedding through the Python API."""
    from edgert.exporters import export

    path = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    export("minilm", path, task="sentence-embedding")
    return path


@pytest.fixture(scope="session")
def minilm_fe(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 exported as feature-extraction through the CLI."""
    path = tmp_path_factory.mktemp("minilm_fe") / "minilm_fe.onnx"
    result = run_cli("export", "minilm", "-o", str(path), "--task", "feature-extraction",
                     "--json", str(path.with_suffix(".json")))
    assert result.returncode == 0, result.stderr
    return path
