"""edgert quantize: QDQ / dynamic INT8 with calibration, guard, speed check and manifest."""

import json

import numpy as np
import onnx
import pytest

import edgert
from edgert.errors import ModelLoadError
from edgert.quant.calib import CalibrationError
from edgert.quant.quantize import Guard, QuantConfig, QuantizeError, quantize_model

from conftest import run_cli


@pytest.fixture
def tiny_calib(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "calib.npz"
    np.savez(path, x=rng.standard_normal((16, 4)).astype(np.float32),
             ids=rng.integers(0, 9, (16, 3)).astype(np.int64))
    return path


def test_static_int8_of_a_small_graph(tiny_model, tiny_calib, tmp_path):
    out = tmp_path / "int8.onnx"
    result = quantize_model(tiny_model, out, QuantConfig(calib_size=8), calib=tiny_calib)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert result.accuracy.cosine_min > 0.99 and result.accuracy.sqnr_db > 25
    assert result.speed.fp32_ms.p50 > 0 and result.speed.int8_ms.p50 > 0
    record = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["edgert.quantization"])
    assert record["config"]["mode"] == "static" and record["float_nodes"] == []
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_model(out, tmp_path / "again.onnx", QuantConfig(), calib=tiny_calib)


def test_excluded_op_type_stays_float(tiny_model, tiny_calib, tmp_path):
    out = tmp_path / "int8.onnx"
    result = quantize_model(tiny_model, out, QuantConfig(exclude=("MatMul",)), calib=tiny_calib)
    assert len(result.float_nodes) == 1
    assert "QuantizeLinear" not in {n.op_type for n in onnx.load(str(out)).graph.node}
    with pytest.raises(QuantizeError, match="matches no node name or op type"):
        quantize_model(tiny_model, out, QuantConfig(exclude=("Softmax",)), calib=tiny_calib)


def test_unreachable_guard_names_what_was_tried(tiny_model, tiny_calib, tmp_path):
    out = tmp_path / "int8.onnx"
    with pytest.raises(QuantizeError, match=r"guard sqnr>=500 cannot be met; tried 0 float nodes"):
        quantize_model(tiny_model, out, QuantConfig(guard=Guard.parse("sqnr>=500")), calib=tiny_calib)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "tiny.onnx"]


@pytest.mark.parametrize("text", ["cosine>0.9", "accuracy>=0.9", "cosine>=x", ""])
def test_bad_guard(text):
    with pytest.raises(QuantizeError, match="bad guard"):
        Guard.parse(text)


def test_bad_inputs(tiny_model, tiny_calib, tmp_path):
    out = tmp_path / "int8.onnx"
    with pytest.raises(QuantizeError, match="no built-in calibration set"):
        quantize_model(tiny_model, out, QuantConfig())
    with pytest.raises(CalibrationError, match="not found"):
        quantize_model(tiny_model, out, QuantConfig(), calib=tmp_path / "none.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(CalibrationError, match="has no examples"):
        quantize_model(tiny_model, out, QuantConfig(), calib=empty)
    text = tmp_path / "calib.txt"
    text.write_text("words for a model that takes floats\n")
    with pytest.raises(CalibrationError, match="needs a model that carries a tokenizer"):
        quantize_model(tiny_model, out, QuantConfig(), calib=text)
    junk = tmp_path / "junk.onnx"
    junk.write_text("not onnx")
    with pytest.raises(ModelLoadError):
        quantize_model(junk, out, QuantConfig(), calib=tiny_calib)
    with pytest.raises(QuantizeError, match="static"):
        quantize_model(tiny_model, out, QuantConfig(mode="dynamic", target="tensorrt"), calib=tiny_calib)
    assert not out.exists()


def test_cli_quantizes_minilm_with_builtin_data(minilm_st, tmp_path):
    out = tmp_path / "minilm.int8.onnx"
    result = run_cli("quantize", str(minilm_st), "--int8", "-o", str(out), "--mode", "dynamic",
                     "--guard", "cosine>=0.9", "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert "minilm_heldout.txt" in result.stdout and "FP32" in result.stdout
    assert "activation outliers" in result.stdout and "kurtosis" in result.stdout
    session = edgert.load(out)
    record = session.manifest.extra["quantization"]
    assert record["accuracy"]["cosine_mean"] >= 0.9 and record["speedup"] > 0
    assert record["fused"] == {"MultiHeadAttention": 6, "SkipLayerNormalization": 12, "BiasGelu": 6}
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"MultiHeadAttention", "DynamicQuantizeMatMul"} <= ops or {"MultiHeadAttention", "MatMulInteger"} <= ops
    assert session.run_text(["still embeds text"])["sentence_embedding"].shape == (1, 384)
    inspected = run_cli("inspect", str(out))
    assert "quantization: dynamic" in inspected.stdout


def test_cli_quantize_errors(tiny_model, tmp_path):
    out = tmp_path / "q.onnx"
    for args, message in [
        ((), "--int8"),
        (("--int8",), "no built-in calibration set"),
        (("--int8", "--calib", str(tmp_path / "none.txt")), "calibration data not found"),
        (("--int8", "--guard", "cos>=1"), "bad guard"),
    ]:
        result = run_cli("quantize", str(tiny_model), "-o", str(out), *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr.strip().splitlines()[-1]
    assert not out.exists()


def test_fusion_keeps_outputs_and_projection_names(minilm_st, tmp_path):
    from edgert.quant.fuse import fuse_for_ort_cpu

    fused = tmp_path / "fused.onnx"
    counts = fuse_for_ort_cpu(minilm_st, fused)
    assert counts == {"MultiHeadAttention": 6, "SkipLayerNormalization": 12, "BiasGelu": 6}
    before = {n.name for n in onnx.load(str(minilm_st)).graph.node if n.op_type == "MatMul"}
    after = {n.name for n in onnx.load(str(fused)).graph.node if n.op_type == "MatMul"}
    assert len(after) == 36 and after <= before  # the Q/K/V/O/FFN projections, still quantizable
    a, b = edgert.load(minilm_st), edgert.load(fused)
    texts = ["fusion must not change the embedding", "short"]
    want = a.run_text(texts)["sentence_embedding"]
    assert np.abs(b.run_text(texts)["sentence_embedding"] - want).max() < 1e-4


def test_fusion_of_a_graph_without_attention_is_a_no_op(tiny_model, tiny_calib, tmp_path):
    result = quantize_model(tiny_model, tmp_path / "int8.onnx", QuantConfig(mode="dynamic"), calib=tiny_calib)
    assert not any(result.fused.values())
    assert result.outliers and result.outliers[0].sqnr_db <= result.outliers[-1].sqnr_db


def test_tensorrt_target_is_symmetric_int8_qdq_and_unfused(tiny_model, tiny_calib, tmp_path):
    from onnx import numpy_helper

    out = tmp_path / "trt.onnx"
    result = quantize_model(tiny_model, out, QuantConfig(target="tensorrt"), calib=tiny_calib)
    assert result.fused == {}
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    zero_points = [inits[n.input[2]] for n in qdq if len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
