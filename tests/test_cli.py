"""The `edgert` command as a user runs it: help, happy paths, and one-line errors with exit 2."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import make_tiny_model, run_cli

COMMANDS = ["export", "run", "bench", "inspect"]


def assert_clean_error(result, message):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error: "), result.stderr
    assert message in lines[-1], lines[-1]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command):
    result = run_cli(*([command] if command else []), "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    if command is None:
        assert all(c in result.stdout for c in COMMANDS)


def test_run_text_prints_and_saves_embedding(minilm_st, tmp_path):
    result = run_cli("run", str(minilm_st), "--text", "hello world", "--text", "edge inference")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("sentence_embedding float32[2, 384]")
    out = tmp_path / "e.npy"
    result = run_cli("run", str(minilm_st), "--text", "hello world", "--out", str(out))
    assert result.returncode == 0, result.stderr
    embedding = np.load(out)
    assert embedding.shape == (1, 384)
    assert abs(np.linalg.norm(embedding) - 1) < 1e-5


def test_run_npz_inputs(tiny_model, tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.ones((1, 4), np.float32), ids=np.ones((1, 2), np.int64))
    result = run_cli("run", str(tiny_model), "--inputs", str(npz), "--output", "n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "2"


def test_inspect_shows_manifest_and_writes_json(minilm_fe, tmp_path):
    out = tmp_path / "info.json"
    result = run_cli("inspect", str(minilm_fe), "--json", str(out))
    assert result.returncode == 0, result.stderr
    for text in ("input_ids", "last_hidden_state", "MatMul", "parameters: 22,565,907",  # no pooler
                 "task feature-extraction", "tokenizer: yes", "head plan: 6 layers"):
        assert text in result.stdout, text
    info = json.loads(out.read_text())
    assert info["opsets"]["ai.onnx"] == 18 and info["custom_ops"] == []
    assert info["manifest"]["validation"]["max_abs_diff"]["last_hidden_state"] <= 1e-4
    summary = json.loads(minilm_fe.with_suffix(".json").read_text())  # written by export --json
    assert summary["manifest"] == info["manifest"] and summary["seconds"] > 0


def test_bench_two_models_json(minilm_fe, tiny_model, tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", str(minilm_fe), str(minilm_fe), "--iters", "4", "--warmup", "1",
                     "--seq", "16", "--batch", "2", "--threads", "1", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "speedup" in result.stdout
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["interleaved"]
    model = report["models"][0]
    for key in ("path", "latency_ms", "throughput_per_s", "peak_rss_mb", "session_s", "first_ms"):
        assert key in model
    assert model["items_per_s"] == pytest.approx(2 * model["throughput_per_s"])


def test_error_missing_model():
    assert_clean_error(run_cli("bench", "nowhere.onnx"), "model not found: nowhere.onnx")
    assert_clean_error(run_cli("inspect", "nowhere.onnx"), "model not found")
    assert_clean_error(run_cli("run", "nowhere.onnx", "--text", "hi"), "model not found")


def test_error_non_onnx_and_truncated(tmp_path, tiny_model):
    text = tmp_path / "readme.onnx"
    text.write_text("hello, I am not a model\n" * 10)
    assert_clean_error(run_cli("run", str(text), "--text", "x"), "as an ONNX model")
    assert_clean_error(run_cli("inspect", str(text)), "not")
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(tiny_model.read_bytes()[:-20])
    assert_clean_error(run_cli("bench", str(truncated), "--iters", "1"), "as an ONNX model")
    assert_clean_error(run_cli("inspect", str(truncated)), "cut.onnx")


def test_error_wrong_input_file(tiny_model, tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.ones((1, 4), np.float64), ids=np.ones((1, 2), np.int64))
    assert_clean_error(run_cli("run", str(tiny_model), "--inputs", str(npz)),
                       "input 'x' must be float32, got float64")
    assert_clean_error(run_cli("run", str(tiny_model), "--text", "hi"), "carries no tokenizer")


def test_error_unresolvable_dims_in_bench(tmp_path):
    model = make_tiny_model(tmp_path / "odd.onnx", dims=("images", 4), with_ids=False)
    assert_clean_error(run_cli("bench", str(model)), "cannot resolve dimension 'images'")
    result = run_cli("bench", str(model), "--shape", "x:2x4", "--iters", "2")
    assert result.returncode == 0, result.stderr


def test_error_export_sources(tmp_path):
    out = tmp_path / "m.onnx"
    assert_clean_error(run_cli("export", "no-such-model", "-o", str(out)),
                       "unknown model 'no-such-model'")
    assert_clean_error(run_cli("export", str(tmp_path), "-o", str(out)), "has no config.json")
    assert_clean_error(run_cli("export", "minilm", "-o", str(tmp_path / "missing" / "m.onnx")),
                       "output directory does not exist")
    assert not out.exists()


def test_error_bench_json_in_missing_directory(tiny_model, tmp_path):
    assert_clean_error(run_cli("bench", str(tiny_model), "--json", str(tmp_path / "no" / "b.json")),
                       "output directory does not exist")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_export_leaves_no_file(tmp_path, sig):
    out = tmp_path / "m.onnx"
    proc = subprocess.Popen([sys.executable, "-m", "edgert", "export", "minilm", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + 120
    # the temporary output appears once the model is loaded and tracing starts
    while not list(tmp_path.glob(".m.onnx.*")) and time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "export ended before it could be interrupted"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "Error: interrupted; nothing was written"
    assert list(tmp_path.iterdir()) == []
