"""Activation statistics and calibration data for INT8."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import edgert
from edgert.quant.calib import CalibrationError, load_calibration
from edgert.quant.outliers import _Moments, activation_stats, fake_quantize_uint8

from conftest import run_cli


def test_fake_quantize_error_is_at_most_half_a_step():
    x = np.linspace(-3, 5, 1001)
    step = 8 / 255
    assert np.abs(fake_quantize_uint8(x, -3, 5) - x).max() <= step / 2 + 1e-12
    # the range always includes zero, and zero stays exact
    assert fake_quantize_uint8(np.array([0.0]), 1.0, 2.0)[0] == 0.0


@pytest.mark.parametrize("draw, expected", [
    (lambda rng: rng.standard_normal(400_000), 3.0),
    (lambda rng: rng.uniform(-1, 1, 400_000), 1.8),
])
def test_kurtosis_is_not_excess(draw, expected):
    moments = _Moments()
    data = draw(np.random.default_rng(0))
    for chunk in np.split(data, 4):
        moments.add(chunk + 10)  # a shifted mean must not change kurtosis
    assert moments.kurtosis() == pytest.approx(expected, abs=0.05)


def outlier_model(path):
    """relu = Relu(x); spiky = x + spikes, where `spikes` is zero but for rare huge values
    (the transformer case: a few tokens x channels carry outliers)."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["relu"]), helper.make_node("Add", ["x", "spikes"], ["spiky"])],
        "spikes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
                   helper.make_tensor_value_info("spikes", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("relu", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("spiky", TensorProto.FLOAT, ["batch", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_rare_outliers_rank_worst(tmp_path):
    path = outlier_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((4, 8)).astype(np.float32),
                "spikes": np.zeros((4, 8), np.float32)} for _ in range(16)]
    samples[5]["spikes"][2, 3] = 1000.0  # one value in 512
    seen = []
    stats = activation_stats(path, samples, progress=seen.append)
    assert sum(seen) == 32
    assert [s.name for s in stats] == ["spiky", "relu"]
    spiky, relu = stats
    assert spiky.op_type == "Add" and spiky.where == "" and spiky.numel == 16 * 32
    expected_max = 1000.0 + samples[5]["x"][2, 3]
    assert spiky.max_abs == pytest.approx(expected_max, rel=1e-6)
    assert spiky.kurtosis > 100 and relu.kurtosis < 10
    assert spiky.sqnr_db < relu.sqnr_db - 10


def test_calibration_errors(tmp_path, tiny_model):
    session = edgert.load(tiny_model)
    with pytest.raises(CalibrationError, match="not found"):
        load_calibration(tmp_path / "none.txt", session)
    with pytest.raises(CalibrationError, match="is a folder"):
        load_calibration(tmp_path, session)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(CalibrationError, match="has no examples"):
        load_calibration(empty, session)
    text = tmp_path / "calib.txt"
    text.write_text("a sentence\n")
    with pytest.raises(CalibrationError, match="needs a model that carries a tokenizer"):
        load_calibration(text, session)
    binary = tmp_path / "calib.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(CalibrationError, match="not a UTF-8 text file"):
        load_calibration(binary, session)
    npz = tmp_path / "calib.npz"
    np.savez(npz, x=np.ones((3, 4), np.float32))
    with pytest.raises(CalibrationError, match="lacks input 'ids'"):
        load_calibration(npz, session)
    np.savez(npz, x=np.ones((3, 4), np.float32), ids=np.ones((2, 5), np.int64))
    with pytest.raises(CalibrationError, match="disagree on the number of examples"):
        load_calibration(npz, session)
    with pytest.raises(CalibrationError, match="size must be >= 1"):
        load_calibration(npz, session, size=0)


def test_npz_calibration_splits_examples(tmp_path, tiny_model):
    npz = tmp_path / "calib.npz"
    np.savez(npz, x=np.ones((3, 4), np.float32), ids=np.ones((3, 5), np.int64))
    samples = load_calibration(npz, edgert.load(tiny_model), size=2)
    assert len(samples) == 2 and samples[0]["x"].shape == (1, 4) and samples[1]["ids"].shape == (1, 5)


def test_analyze_outliers_cli_on_minilm(minilm_st, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("The cat sat on the mat.\nStocks fell 3% on Monday after the report.\n"
                     "How do I boil an egg?\n")
    out = tmp_path / "outliers.json"
    result = run_cli("analyze", "outliers", str(minilm_st), "--calib", str(calib), "--top", "5",
                     "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "activation tensors over 3 examples" in result.stdout
    stats = json.loads(out.read_text())
    assert len(stats) > 50
    sqnr = [s["sqnr_db"] for s in stats]
    assert sqnr == sorted(sqnr)
    assert {"MatMul", "MultiHeadAttention"} <= {s["op_type"] for s in stats}  # export fuses attention
    assert any(s["where"].endswith("layer.5.output.dense") for s in stats)
    result = run_cli("analyze", "outliers", str(minilm_st), "--calib", str(tmp_path / "no.txt"))
    assert result.returncode == 2 and "calibration data not found" in result.stderr
