"""The `edgert` command as a user runs it: help, happy paths, and one-line errors with exit 2."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import assert_one_error, invoke, make_embedding_model, make_tiny_model, run_cli

COMMANDS = ["export", "quantize", "run", "generate", "bench", "inspect", "analyze", "eval"]
HEAVY = ("torch", "transformers", "onnxscript", "onnx_ir", "tokenizers", "PIL")


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help(command):
    result = run_cli(*([command] if command else []), "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    if command is None:
        assert all(c in result.stdout for c in COMMANDS)


@pytest.mark.parametrize("command", [*COMMANDS, "analyze kv-heads", "eval passkey"])
def test_help_loads_nothing_heavy(command):
    """`--help` of every command imports none of the libraries kept lazy for that reason."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgert", *command.split(), "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "Usage:" in result.stdout, result.stderr[-500:]
    imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in result.stderr.splitlines()
                if line.startswith("import time:") and "|" in line}
    assert "edgert" in imported and not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_run_text_prints_and_saves_embedding(minilm_st, tmp_path):
    result = run_cli("run", str(minilm_st), "--text", "hello world", "--text", "edge inference")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header == "sentence_embedding float32[2, 384]"
    assert len(rows) == 2 and all(len(line) <= 80 for line in rows), rows
    assert rows[0].startswith("  [0] norm 1.0000  mean ") and rows[1].startswith("  [1] norm 1.0000")
    assert rows[0].endswith(" ...")  # 384 values do not fit: the first few only
    full = run_cli("run", str(minilm_st), "--text", "hello world", "--full")
    assert full.returncode == 0, full.stderr
    lines = full.stdout.splitlines()
    assert lines[0] == "sentence_embedding float32[1, 384]" and all(len(line) <= 80 for line in lines)
    printed = np.array(" ".join(lines[1:]).replace("[", " ").replace("]", " ").split(), dtype=np.float32)
    out = tmp_path / "e.npy"
    result = run_cli("run", str(minilm_st), "--text", "hello world", "--out", str(out))
    assert result.returncode == 0, result.stderr
    embedding = np.load(out)
    assert embedding.shape == (1, 384)
    assert abs(np.linalg.norm(embedding) - 1) < 1e-5
    np.testing.assert_allclose(printed, embedding[0], atol=5e-7)  # --full prints 6 decimals


def test_run_npz_inputs(tiny_model, tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.ones((1, 4), np.float32), ids=np.ones((1, 2), np.int64))
    result = run_cli("run", str(tiny_model), "--inputs", str(npz), "--output", "n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "2"


def test_run_summary_fits_80_columns(tmp_path):
    model = make_embedding_model(tmp_path / "m.onnx", heads=64, head_dim=8, tokenizer=True)
    texts = [a for t in ["hello world"] * 10 for a in ("--text", t)]
    result = run_cli("run", str(model), *texts)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "last_hidden_state float32[10, 4, 512]"
    assert [line[:6] for line in lines[1:9]] == [f"  [{i}] " for i in range(8)]
    assert lines[9] == "  ... 2 more rows (--full prints them, --out saves them)"
    assert all(len(line) <= 80 for line in lines)


@pytest.mark.parametrize("ids, message", [
    ([[2, 4, 99999, 3]], ("input 'input_ids' holds token id 99999 at [0, 2]; ids must lie in [0, 10) "
                          "(the model's vocab_size)")),
    ([[2, -1, 3]], ("input 'input_ids' holds token id -1 at [0, 1]; ids must lie in [0, 10) "
                    "(the model's vocab_size)")),
    ([[4] * 5000], ("sequence length 5000 (input 'input_ids' axis 1) is longer than the "
                    "model's max_length 16")),
])
def test_run_out_of_bounds_inputs_give_one_error_line(tmp_path, ids, message):
    model = make_embedding_model(tmp_path / "m.onnx")
    npz = tmp_path / "in.npz"
    ids = np.array(ids, np.int64)
    np.savez(npz, input_ids=ids, attention_mask=np.ones_like(ids))
    result = run_cli("run", str(model), "--inputs", str(npz))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"Error: {message}"]


def test_onnx_runtime_errors_give_one_error_line_and_no_log(tmp_path):
    # without a manifest edgert knows no vocab_size: ONNX Runtime itself rejects the id
    model = make_embedding_model(tmp_path / "m.onnx", manifest=False)
    npz = tmp_path / "in.npz"
    np.savez(npz, input_ids=np.array([[2, 99999]]), attention_mask=np.ones((1, 2), np.int64))
    result = run_cli("run", str(model), "--inputs", str(npz))
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ONNX Runtime rejected the inputs: Non-zero status code returned "
                           "while running Gather node"), line


@pytest.mark.parametrize("args, message", [
    (["--threads", "100000"], "threads must lie in 1.."),
    (["--threads", "0"], "threads must lie in 1.."),
    (["--iters", str(10**12)], "iters must lie in 1..100000"),
    (["--warmup", "-1"], "warmup must lie in 0..100000"),
    (["--batch", "0"], "batch must lie in 1..65536"),
    (["--seq", "17"], "sequence length 17 (input 'input_ids' axis 1) is longer than the model's max_length 16"),
])
def test_bench_bounds_give_one_error_line(tmp_path, args, message):
    model = make_embedding_model(tmp_path / "m.onnx")
    result = run_cli("bench", str(model), *args, timeout=60)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: {message}"), line


def test_bench_tables_fit_80_columns_with_long_names(tmp_path):
    long = tmp_path / ("a_rather_long_model_file_name_" * 3 + "int8.onnx")
    make_embedding_model(long)
    result = subprocess.run([sys.executable, "-m", "edgert", "bench", str(long), str(long), "--iters", "3",
                             "--warmup", "0", "--seq", "4", "--threads", "1"],
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "80"}, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    folded = "".join(line.split("│")[2].strip() for line in lines if line.count("│") > 3)
    assert long.name in folded  # the whole name survives, folded over several lines


def test_inspect_shows_manifest_and_writes_json(minilm_fe, tmp_path):
    out = tmp_path / "info.json"
    result = run_cli("inspect", str(minilm_fe), "--json", str(out))
    assert result.returncode == 0, result.stderr
    for text in ("input_ids", "last_hidden_state", "MatMul", "parameters: 22,565,902",  # no pooler
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
    assert_one_error(run_cli("bench", "nowhere.onnx"), "model not found: nowhere.onnx")
    assert_one_error(run_cli("inspect", "nowhere.onnx"), "model not found")
    assert_one_error(run_cli("run", "nowhere.onnx", "--text", "hi"), "model not found")


def test_error_non_onnx_and_truncated(tmp_path, tiny_model):
    text = tmp_path / "readme.onnx"
    text.write_text("hello, I am not a model\n" * 10)
    assert_one_error(run_cli("run", str(text), "--text", "x"), "as an ONNX model")
    assert_one_error(run_cli("inspect", str(text)), "not")
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(tiny_model.read_bytes()[:-20])
    assert_one_error(run_cli("bench", str(truncated), "--iters", "1"), "as an ONNX model")
    assert_one_error(run_cli("inspect", str(truncated)), "cut.onnx")


def test_error_wrong_input_file(tiny_model, tmp_path):
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.ones((1, 4), np.float64), ids=np.ones((1, 2), np.int64))
    assert_one_error(run_cli("run", str(tiny_model), "--inputs", str(npz)),
                       "input 'x' must be float32, got float64")
    assert_one_error(run_cli("run", str(tiny_model), "--text", "hi"), "carries no tokenizer")


def test_error_unresolvable_dims_in_bench(tmp_path):
    model = make_tiny_model(tmp_path / "odd.onnx", dims=("images", 4), with_ids=False)
    assert_one_error(run_cli("bench", str(model)), "cannot resolve dimension 'images'")
    result = run_cli("bench", str(model), "--shape", "x:2x4", "--iters", "2")
    assert result.returncode == 0, result.stderr


def test_error_export_sources(tmp_path):
    out = tmp_path / "m.onnx"
    assert_one_error(run_cli("export", "no-such-model", "-o", str(out)),
                       "unknown model 'no-such-model'")
    assert_one_error(run_cli("export", str(tmp_path), "-o", str(out)), "has no config.json")
    assert_one_error(run_cli("export", "minilm", "-o", str(tmp_path / "missing" / "m.onnx")),
                       "output directory does not exist")
    assert not out.exists()


def test_error_bench_json_in_missing_directory(tiny_model, tmp_path):
    assert_one_error(run_cli("bench", str(tiny_model), "--json", str(tmp_path / "no" / "b.json")),
                       "output directory does not exist")


@pytest.mark.slow
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


def test_run_checks_npz_arrays_against_memory_before_loading_them(tmp_path, monkeypatch):
    """A compressed .npz of a few KiB can declare arrays of any size: their headers are read
    first."""
    model = make_embedding_model(tmp_path / "embedding.onnx")
    np.savez_compressed(tmp_path / "in.npz", input_ids=np.ones((1, 4), np.int64),
                        attention_mask=np.ones((1, 4), np.int64))
    monkeypatch.setattr("edgert.memory.available_memory_bytes", lambda: 32)
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("the arrays were loaded"))
    result = invoke("run", model, "--inputs", tmp_path / "in.npz")
    assert_one_error(result, "loading the arrays of inputs file ")
    assert result.stderr.strip().endswith("in.npz needs 64 bytes; 32 bytes of memory is available")
