"""edgert quantize: QDQ / dynamic INT8 with calibration, guard, speed check and manifest."""

import json
import sys

import numpy as np
import onnx
import pytest

import edgert
from edgert import cpu
from edgert.errors import CalibrationError, ModelLoadError, OptionError, QuantizeError
from edgert.quant.evaluate import Accuracy
from edgert.quant.guard import Guard
from edgert.quant.kernels import KERNELS, U8S8, U8S8_REDUCED, U8U8, Candidate, choose_kernel
from edgert.quant.quantize import QuantConfig, quantize_model

from conftest import assert_one_error, invoke, run_cli


@pytest.fixture
def tiny_calib(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "calib.npz"
    np.savez(path, x=rng.standard_normal((16, 4)).astype(np.float32),
             ids=rng.integers(0, 9, (16, 3)).astype(np.int64))
    return path


def quant_record(path):
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["edgert.quantization"])


def test_static_int8_of_a_small_graph(tiny_model, tiny_calib, tmp_path, monkeypatch):
    """With the kernels chosen for the CPU this runs on (an AVX2-only CPU saturates U8S8)."""
    monkeypatch.delenv(cpu.ISA_ENV, raising=False)
    out = tmp_path / "int8.onnx"
    result = quantize_model(tiny_model, out, QuantConfig(calib_size=8), calib=tiny_calib)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert result.accuracy.cosine_min > 0.99 and result.accuracy.sqnr_db > 25
    assert result.speed.fp32_ms.p50 > 0 and result.speed.int8_ms.p50 > 0
    detected = cpu.detect_isa()
    assert result.isa.names == tuple(detected) and not result.isa.overridden
    kernels = KERNELS[cpu.int8_class(detected)]["static"]
    assert [c.kernel for c in result.candidates] == list(kernels) and result.kernel in kernels
    record = quant_record(out)
    assert record["config"]["mode"] == "static" and record["float_nodes"] == []
    assert record["cpu"]["names"] == detected and record["cpu"]["overridden"] is False
    assert record["kernel"]["label"] == result.kernel.label
    assert [c["chosen"] for c in record["candidates"]].count(True) == 1
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
    # 90 dB is a valid guard, but INT8 of this graph reaches about 50 dB and its only MatMul
    # reads a graph input, which the outlier ranking cannot move to float
    out = tmp_path / "int8.onnx"
    with pytest.raises(QuantizeError, match=r"^guard sqnr>=90 cannot be met with INT8 U8\w+.*; tried "
                                            r"0 float nodes → sqnr \d+\.\d+; nothing written$"):
        quantize_model(tiny_model, out, QuantConfig(guard=Guard.parse("sqnr>=90")), calib=tiny_calib)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "tiny.onnx"]


@pytest.mark.parametrize("text", ["cosine>0.9", "accuracy>=0.9", "cosine>=x", "", "sqnr>=nan"])
def test_bad_guard(text):
    with pytest.raises(QuantizeError, match="bad guard"):
        Guard.parse(text)


@pytest.mark.parametrize("text, words", [
    ("cosine>=2", "at least 0 and below 1"), ("cosine>=1", "at least 0 and below 1"),
    ("cosine>=-5", "at least 0 and below 1"), ("sqnr>=500", "between 0 and 100 dB"),
    ("sqnr>=-3", "between 0 and 100 dB"), ("sqnr>=1e400", "between 0 and 100 dB"),
])
def test_impossible_guard_is_refused_up_front(text, words):
    with pytest.raises(QuantizeError, match=f"^guard {text.split('>=')[0]}.*: a .* guard must be {words}$"):
        Guard.parse(text)


def test_impossible_guard_in_a_config_is_refused_before_any_work(tiny_model, tmp_path):
    for guard in (Guard("cosine", 1.5), Guard("sqnr", float("nan")), Guard("sqnr", float("inf"))):
        with pytest.raises(QuantizeError, match="guard must be"):
            quantize_model(tiny_model, tmp_path / "q.onnx", QuantConfig(guard=guard), calib=tmp_path / "none.npz")


def accuracy_of(sqnr_db, cosine_mean=0.99):
    return Accuracy(cosine_mean, cosine_mean - 0.01, sqnr_db)


def test_choose_kernel_rules():
    safe, fast = Candidate(U8S8_REDUCED, accuracy_of(40, 0.995), 1.2), Candidate(U8U8, accuracy_of(41.5, 0.992), 1.5)
    assert choose_kernel([safe], None) == (0, "the only candidate for this CPU")
    assert choose_kernel([safe, fast], Guard.parse("cosine>=0.99"))[0] == 1  # both meet it: fastest
    assert choose_kernel([safe, fast], Guard.parse("cosine>=0.994"))[0] == 0  # only one meets it
    index, why = choose_kernel([safe, fast], Guard.parse("cosine>=0.999"))
    assert index == 0 and "none meets guard cosine>=0.999" in why  # closest on the guard metric
    assert choose_kernel([safe, fast], Guard.parse("sqnr>=45"))[0] == 1
    assert choose_kernel([safe, fast], None)[0] == 1  # the most accurate is also the fastest
    fast.accuracy = accuracy_of(39.5)
    assert choose_kernel([safe, fast], None)[0] == 1  # within 1 dB of the best: the fastest wins
    fast.accuracy = accuracy_of(38)
    index, why = choose_kernel([safe, fast], None)  # 2 dB worse: faster does not make up for it
    assert index == 0 and why == "fastest within 1 dB SQNR of the most accurate"


def test_no_vnni_cpu_gets_unsaturated_kernels(tiny_model, tiny_calib, tmp_path, monkeypatch):
    """Forced to an AVX2-only CPU: both unsaturated configurations are measured, one is chosen,
    and it is accurate (7-bit weights and U8U8 are accurate on every x86 CPU)."""
    monkeypatch.setenv(cpu.ISA_ENV, "avx512_vnni")  # the config field beats the environment
    out = tmp_path / "int8.onnx"
    result = quantize_model(tiny_model, out, QuantConfig(calib_size=8, isa="avx2"), calib=tiny_calib)
    assert result.isa.names == ("avx2",) and result.isa.source == "config"
    assert [c.kernel for c in result.candidates] == [U8S8_REDUCED, U8U8]
    assert result.kernel in (U8S8_REDUCED, U8U8)
    assert all(c.speedup > 0 and c.accuracy.cosine_min > 0.99 and c.accuracy.sqnr_db > 25
               for c in result.candidates)
    assert result.accuracy.cosine_min > 0.99 and result.accuracy.sqnr_db > 25
    assert "fastest within 1 dB SQNR" in result.choice
    record = quant_record(out)
    assert record["cpu"]["names"] == ["avx2"] and record["cpu"]["class"] == "no-vnni"
    assert record["cpu"]["overridden"] is True and record["config"]["isa"] == "avx2"
    assert [c["kernel"] for c in record["candidates"]] == ["U8S8 reduce-range", "U8U8"]
    chosen = [c for c in record["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["kernel"] == record["kernel"]["label"] == result.kernel.label
    assert set(chosen[0]) >= {"cosine_mean", "cosine_min", "sqnr_db", "speedup", "config"}
    weight_zero_points = [i for i in onnx.load(str(out)).graph.initializer if i.name.endswith("W_zero_point")]
    assert weight_zero_points and weight_zero_points[0].data_type == (
        onnx.TensorProto.UINT8 if result.kernel == U8U8 else onnx.TensorProto.INT8)


def test_vnni_cpu_gets_u8s8(tiny_model, tiny_calib, tmp_path, monkeypatch):
    """Forced by the environment to a VNNI CPU: U8S8, the one candidate, is not timed twice.
    Accuracy is not asserted: on a CPU without VNNI this kernel saturates."""
    monkeypatch.setenv(cpu.ISA_ENV, "avx2,avx512f,avx512_vnni")
    result = quantize_model(tiny_model, tmp_path / "int8.onnx", QuantConfig(calib_size=8), calib=tiny_calib)
    assert result.isa.source == cpu.ISA_ENV and result.isa.int8_class == cpu.VNNI
    assert result.kernel == U8S8 and [c.kernel for c in result.candidates] == [U8S8]
    assert result.candidates[0].chosen and result.candidates[0].speedup == result.speed.speedup
    assert result.choice == "the only candidate for this CPU"


def test_dynamic_mode_candidates_on_a_no_vnni_cpu(tiny_model, tiny_calib, tmp_path):
    result = quantize_model(tiny_model, tmp_path / "int8.onnx", QuantConfig(mode="dynamic", isa="avx2"),
                            calib=tiny_calib)
    assert [c.kernel for c in result.candidates] == [U8S8_REDUCED, U8U8]
    assert result.accuracy.cosine_min > 0.99 and result.accuracy.sqnr_db > 25


def test_unknown_isa_is_refused(tiny_model, tiny_calib, tmp_path):
    with pytest.raises(cpu.IsaError, match="unknown instruction set 'avx1024'; accepted: auto, "):
        quantize_model(tiny_model, tmp_path / "q.onnx", QuantConfig(isa="avx1024"), calib=tiny_calib)


def test_bad_inputs(tiny_model, tiny_calib, tmp_path):
    out = tmp_path / "int8.onnx"
    with pytest.raises(QuantizeError, match="no built-in calibration set"):
        quantize_model(tiny_model, out, QuantConfig())
    with pytest.raises(CalibrationError, match="^calibration data not found"):
        quantize_model(tiny_model, out, QuantConfig(), calib=tmp_path / "none.txt")
    with pytest.raises(CalibrationError, match="^held-out data not found: .*held.txt"):
        quantize_model(tiny_model, out, QuantConfig(), calib=tiny_calib, heldout=tmp_path / "held.txt")
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
    assert record["fused"] == {"MultiHeadAttention": 6, "BiasGelu": 6}
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"MultiHeadAttention", "DynamicQuantizeMatMul"} <= ops or {"MultiHeadAttention", "MatMulInteger"} <= ops
    assert session.run_text(["still embeds text"])["sentence_embedding"].shape == (1, 384)
    inspected = run_cli("inspect", str(out))
    shown = " ".join(inspected.stdout.split())  # rich folds long lines at 80 columns
    assert f"quantization: dynamic int8 {record['kernel']['label']} (minmax, target cpu)" in shown
    assert f"kernels chosen for CPU {', '.join(record['cpu']['names'])}" in shown


@pytest.mark.slow
def test_cli_quantize_errors(tiny_model, tiny_calib, tmp_path):
    out = tmp_path / "q.onnx"
    for args, message in [
        ((), "--int8"),
        (("--int8",), "no built-in calibration set"),
        (("--int8", "--calib", str(tmp_path / "none.txt")), "calibration data not found"),
        (("--int8", "--guard", "cos>=1"), "bad guard"),
        (("--int8", "--guard", "cosine>=2"), "a cosine guard must be at least 0 and below 1"),
        (("--int8", "--isa", "avx9"), "unknown instruction set 'avx9'"),
        (("--int8", "--calib", str(tiny_calib), "--heldout", str(tmp_path / "held.txt")),
         "held-out data not found"),
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
    result = quantize_model(tiny_model, out, QuantConfig(target="tensorrt", isa="avx2"), calib=tiny_calib)
    assert result.fused == {}
    assert result.kernel.label == "S8S8 symmetric" and [c.kernel for c in result.candidates] == [result.kernel]
    assert quant_record(out)["kernel"] == {"label": "S8S8 symmetric", "activation": "int8", "weight": "int8",
                                           "reduce_range": False, "symmetric": True}
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    zero_points = [inits[n.input[2]] for n in qdq if len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_cli_prints_cpu_candidates_and_guard(tiny_model, tiny_calib, tmp_path):
    out = tmp_path / "q.onnx"
    result = run_cli("quantize", str(tiny_model), "--int8", "-o", str(out), "--calib", str(tiny_calib),
                     "--isa", "avx2", "--guard", "sqnr>=20", "--report", "0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("CPU instruction sets: avx2 (no-vnni INT8 class; set by --isa, this CPU has ")
               for line in lines), result.stdout
    assert "INT8 kernel candidates" in result.stdout and "U8S8 reduce-range" in result.stdout
    assert sum("chosen" in line and ("U8U8" in line or "reduce-range" in line) for line in lines) == 1
    assert any(line.startswith("guard sqnr>=20 held: SQNR ") and "cosine mean" in line and ", min " in line
               for line in lines), result.stdout
    plain = run_cli("quantize", str(tiny_model), "--int8", "-o", str(out), "--calib", str(tiny_calib),
                    "--isa", "avx2", "--report", "0")
    assert plain.returncode == 0 and "no guard: cosine mean" in plain.stdout


def test_tensorrt_target_refuses_onnx_runtime_only_ops(tmp_path, tiny_calib):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, 3, dtype=np.float32), "W")
    bias = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]),
         helper.make_node("BiasGelu", ["xw", "b"], ["y"], domain="com.microsoft"),
         helper.make_node("ReduceSum", ["ids"], ["n"], keepdims=0)], "fused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [])], [w, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    path = tmp_path / "fused.onnx"
    onnx.save(model, str(path))
    with pytest.raises(QuantizeError, match="com.microsoft ops \\(BiasGelu\\).*export it with --no-optimize"):
        quantize_model(path, tmp_path / "trt.onnx", QuantConfig(target="tensorrt"), calib=tiny_calib)
    cpu_result = quantize_model(path, tmp_path / "cpu.onnx", QuantConfig(), calib=tiny_calib)
    assert cpu_result.path.exists()


def test_speed_check_fits_a_short_max_length(tmp_path):
    from conftest import make_embedding_model

    model = make_embedding_model(tmp_path / "short.onnx", max_length=16, tokenizer=True)
    calib = tmp_path / "calib.txt"
    calib.write_text("hello world\nedge inference a b\n")
    result = quantize_model(model, tmp_path / "q.onnx", QuantConfig(mode="dynamic"), calib=calib)
    assert result.speed.seq == 16 and result.speed.speedup > 0


@pytest.mark.parametrize("option, value, message", [
    ("--guard", "", "bad guard ''"),
    ("--guard", " ", "bad guard ' '"),
    ("--exclude", "", "--exclude '' is blank"),
    ("--exclude", " ", "--exclude ' ' is blank"),
    ("--calib", "", "calibration data path is empty"),
    ("--heldout", "", "held-out data path is empty"),
    ("--json", "", "output path is empty"),
])
def test_cli_refuses_blank_option_values(tiny_model, tiny_calib, tmp_path, option, value, message):
    """An empty or blank value is refused up front, never read as "not given" (`--guard ""` used
    to quantize without a guard, `--exclude ""` kept unnamed nodes in float, `--heldout ""` judged
    on the calibration data)."""
    out = tmp_path / "q.onnx"
    args = ["quantize", str(tiny_model), "--int8", "-o", str(out), "--report", "0"]
    args += ["--calib", str(tiny_calib)] if option != "--calib" else []
    assert_one_error(invoke(*args, option, value), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "tiny.onnx"]


def test_api_refuses_blank_excludes_and_data_paths(tiny_model, tiny_calib, tmp_path):
    out = tmp_path / "q.onnx"
    with pytest.raises(OptionError, match="--exclude '' is blank"):
        quantize_model(tiny_model, out, QuantConfig(exclude=("MatMul", "")), calib=tiny_calib)
    with pytest.raises(OptionError, match="held-out data path is empty"):
        quantize_model(tiny_model, out, QuantConfig(), calib=tiny_calib, heldout="")
    with pytest.raises(OptionError, match="calibration data path is empty"):
        quantize_model(tiny_model, out, QuantConfig(), calib=" ")
    assert not out.exists()


def test_quantize_without_onnxscript_runs_unfused(tiny_model, tiny_calib, tmp_path, monkeypatch):
    """onnxscript (and onnx_ir) come with edgert[export]: without them there is no fusion, and a
    warning says so."""
    for name in ("onnxscript", "onnx_ir"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "edgert.quant.fuse", raising=False)  # imported afresh
    out = tmp_path / "int8.onnx"
    with pytest.warns(UserWarning, match="onnxscript is not installed"):
        result = quantize_model(tiny_model, out, QuantConfig(mode="dynamic"), calib=tiny_calib)
    assert result.fused == {} and out.exists()
