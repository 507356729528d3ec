import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import edgert
from edgert import DeviceUnavailableError, EdgertError, InputError, ModelLoadError, Session
from edgert.plan import MANIFEST_KEY
from edgert.session import THREADS_PER_CORE, session_options, usable_cores
from edgert.synth import synthesize_inputs

from conftest import make_embedding_model, make_tiny_model


def feeds(batch=2, seq=5):
    return {"x": np.ones((batch, 4), np.float32), "ids": np.ones((batch, seq), np.int64)}


def test_run_returns_named_outputs(tiny_model):
    session = edgert.load(tiny_model, threads=1)
    out = session.run(feeds())
    assert set(out) == {"y", "n"}
    np.testing.assert_allclose(out["y"], np.ones((2, 4)) @ (np.arange(12).reshape(4, 3) / 10) + 1,
                               rtol=1e-6)
    assert int(out["n"]) == 10
    assert session.run(feeds(), ["n"]).keys() == {"n"}


@pytest.mark.parametrize("bad, message", [
    ({"x": np.ones((2, 4), np.float32)}, "missing input 'ids'"),
    ({**feeds(), "z": np.ones(1)}, "unknown input 'z'"),
    ({**feeds(), "x": np.ones((2, 4), np.float64)}, "input 'x' must be float32, got float64"),
    ({**feeds(), "ids": np.ones((2, 5), np.int32)}, "input 'ids' must be int64, got int32"),
    ({**feeds(), "x": np.ones((2, 4, 1), np.float32)}, "input 'x' must have rank 2"),
    ({**feeds(), "x": np.ones((2, 5), np.float32)}, "input 'x' axis 1 must be 4, got 5"),
    ({**feeds(), "ids": np.ones((3, 5), np.int64)}, "dimension 'batch' is 2 in input 'x' but 3"),
])
def test_wrong_inputs_raise_input_error(tiny_model, bad, message):
    session = edgert.load(tiny_model)
    with pytest.raises(InputError, match=message):
        session.run(bad)


def test_unknown_output_name(tiny_model):
    with pytest.raises(InputError, match="unknown output 'q'"):
        edgert.load(tiny_model).run(feeds(), ["q"])


def test_inputs_must_be_a_mapping(tiny_model):
    with pytest.raises(InputError, match="mapping"):
        edgert.load(tiny_model).run([np.ones(3)])


def test_bad_model_files(tmp_path, tiny_model):
    with pytest.raises(ModelLoadError, match="model not found"):
        edgert.load(tmp_path / "missing.onnx")
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model")
    with pytest.raises(ModelLoadError, match="cannot load .* as an ONNX model"):
        edgert.load(text)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(tiny_model.read_bytes()[:60])
    with pytest.raises(ModelLoadError):
        edgert.load(truncated)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        edgert.load(empty)
    with pytest.raises(ModelLoadError, match="not a file"):
        edgert.load(tmp_path)


def test_unavailable_device_falls_back_to_cpu_or_fails_when_strict(tiny_model):
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.warns(RuntimeWarning, match="device 'cuda' is unavailable"):
        session = edgert.load(tiny_model, device="cuda")
    assert session.device == "cpu" and session.providers == ["CPUExecutionProvider"]
    with pytest.raises(DeviceUnavailableError, match="tensorrt"):
        edgert.load(tiny_model, device="tensorrt", strict=True)
    assert edgert.load(tiny_model, device="auto").device == "cpu"
    with pytest.raises(EdgertError, match="unknown device 'tpu'"):
        edgert.load(tiny_model, device="tpu")


def test_threads_are_bounded_by_the_usable_cores(tiny_model):
    cores = len(os.sched_getaffinity(0))
    assert usable_cores() == cores
    limit = THREADS_PER_CORE * cores
    message = rf"threads must lie in 1\.\.{limit} \({THREADS_PER_CORE} per core for the {cores} cores"
    for threads in (0, -3, limit + 1, 100_000):
        with pytest.raises(EdgertError, match=message):
            edgert.load(tiny_model, threads=threads)
        with pytest.raises(EdgertError, match=message):  # every caller of session_options too
            session_options(threads)
    assert edgert.load(tiny_model, threads=limit).threads == limit
    assert edgert.load(tiny_model, threads=np.int64(1)).threads == 1


@pytest.mark.parametrize("threads", ["2", 2.5, True, [1]])
def test_threads_must_be_a_whole_number(tiny_model, threads):
    with pytest.raises(EdgertError, match="threads must be a whole number"):
        edgert.load(tiny_model, threads=threads)


def test_threads_and_options_are_exclusive(tiny_model):
    with pytest.raises(EdgertError, match="threads or options, not both"):
        Session(tiny_model, threads=1, options=session_options(1))


@pytest.mark.parametrize("path, message", [
    (123, "model path must be a str or os.PathLike, got int"),
    (None, "model path must be a str or os.PathLike, got NoneType"),
    (b"m.onnx", "got bytes"),
    ("", "model path is empty"),
    ("a\0b.onnx", "NUL"),
    ("x" * 5000, "cannot read model"),
    ("missing\n.onnx", r"model not found: 'missing\\n.onnx'"),
])
def test_load_rejects_bad_paths(path, message):
    with pytest.raises(ModelLoadError, match=message) as info:
        edgert.load(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("device, message", [
    (5, "device must be a string .*got int"),
    (np.ones(3), "got ndarray"),
    ("CPU", "unknown device 'CPU'"),
])
def test_load_rejects_bad_devices(tiny_model, device, message):
    with pytest.raises(EdgertError, match=message):
        edgert.load(tiny_model, device=device)


@pytest.mark.parametrize("value, message", [
    ("abc", "input 'x' must be float32, got str"),
    (object(), "input 'x' must be float32, got object"),
    ([[1.0, 2.0, 3.0, 4.0], [1.0]], "input 'x' is not a rectangular array"),
    ([[1, 2, 3, 4]], "input 'x' must be float32, got int64"),
])
def test_values_numpy_cannot_use_raise_input_error(tiny_model, value, message):
    with pytest.raises(InputError, match=message):
        edgert.load(tiny_model).run({**feeds(), "x": value})


@pytest.mark.parametrize("names, message", [
    ("y", r"output_names must be a list of names, not the string 'y'; e\.g\. \['y'\]"),
    (5, "output_names must be a list of output names, got int"),
    ([], "output_names is empty"),
    ([1], "unknown output int 1"),
    (["y", "q"], "unknown output 'q'; the model has y, n"),
])
def test_bad_output_names(tiny_model, names, message):
    with pytest.raises(InputError, match=message):
        edgert.load(tiny_model).run(feeds(), names)


def test_unknown_input_names_of_any_type(tiny_model):
    with pytest.raises(InputError, match="unknown input 1;"):
        edgert.load(tiny_model).run({**feeds(), 1: np.ones(1)})
    with pytest.raises(InputError, match="unknown input"):  # keys that do not sort together
        edgert.load(tiny_model).run({**feeds(), 1: np.ones(1), (2,): np.ones(1), "z": np.ones(1)})


def embedding_feeds(ids, mask=None):
    ids = np.asarray(ids, np.int64)
    mask = np.ones_like(ids) if mask is None else np.asarray(mask, np.int64)
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("ids, mask, message", [
    (np.full((1, 17), 4), None,
     r"sequence length 17 \(input 'input_ids' axis 1\) is longer than the model's max_length 16"),
    ([[2, 10, 3]], None,
     r"input 'input_ids' holds token id 10 at \[0, 1\]; ids must lie in \[0, 10\) \(the model's vocab_size\)"),
    ([[2, 4, 3], [2, -1, 3]], None, r"token id -1 at \[1, 1\]; ids must lie in \[0, 10\)"),
    ([[2, 4, 3]], [[1, 2, 1]],
     r"input 'attention_mask' holds 2 at \[0, 1\]; an attention mask holds 1 for a token and 0"),
    (np.zeros((0, 3)), None, r"input 'input_ids' has an empty batch axis \(axis 0, shape \(0, 3\)\)"),
    (np.zeros((2, 0)), None,
     r"has an empty sequence axis \(axis 1, shape \(2, 0\)\); give at least one token"),
])
def test_manifest_limits(embedding_model, ids, mask, message):
    session = edgert.load(embedding_model)
    with pytest.raises(InputError, match=message):
        session.run(embedding_feeds(ids, mask))


def test_manifest_limits_allow_the_edges(embedding_model):
    session = edgert.load(embedding_model)
    ids = np.tile(np.arange(16) % 10, (2, 1))  # every id from 0 to vocab_size - 1, max_length tokens
    mask = np.ones_like(ids)
    mask[1, 8:] = 0
    out = session.run(embedding_feeds(ids, mask))["last_hidden_state"]
    assert out.shape == (2, 16, 4) and not out[1, 8:].any()


def test_memory_estimate_is_inputs_outputs_and_two_hidden_states(embedding_model, monkeypatch):
    session = edgert.load(embedding_model)
    shapes = {"input_ids": (3, 5), "attention_mask": (3, 5)}
    # output [3, 5, 4] float32; activations 2 hidden states [3, 5, 2 heads x 2] float32
    assert session.estimate_run_bytes(shapes) == (240, 480)
    monkeypatch.setattr("edgert.session.available_memory_bytes", lambda: 719)
    with pytest.raises(InputError, match=r"batch 3 x sequence 5 needs about 720 bytes \(outputs 240 bytes, "
                                         r"activations at least 480 bytes\), more than the 719 bytes of "
                                         r"memory available; use a smaller batch or shorter sequences"):
        session.run(embedding_feeds(np.ones((3, 5))))
    monkeypatch.setattr("edgert.session.available_memory_bytes", lambda: 720)
    session.check_shapes(shapes)
    with pytest.raises(InputError, match=r"needs about 960 bytes \(inputs 240 bytes, outputs"):
        session.check_shapes(shapes, allocating=True)  # inputs still to be made count too


def test_minilm_batch_64_seq_256_passes_the_checks(minilm_st):
    session = edgert.load(minilm_st)
    feeds = synthesize_inputs(session, batch=64, seq=256)  # checks the shapes, allocating
    session.check_inputs(feeds)
    assert session.max_length == 256 and session.vocab_size == 30522
    with pytest.raises(InputError, match="longer than the model's max_length 256"):
        synthesize_inputs(session, batch=1, seq=257)


@pytest.mark.parametrize("texts, message", [
    (5, "text must be a string or a list of strings, got int"),
    ([], "no text given"),
    (["a", None], "text 1 is NoneType, not str"),
    (b"bytes", "text must be str, not bytes"),
    ((t for t in ["a"]), "got generator"),
])
def test_run_text_rejects_non_text(embedding_model, texts, message):
    with pytest.raises(InputError, match=message):
        edgert.load(embedding_model).run_text(texts)


def test_run_text_truncates_to_max_length(embedding_model):
    session = edgert.load(embedding_model)
    out = session.run_text(["hello world", "edge " * 100])["last_hidden_state"]
    assert out.shape == (2, 16, 4)


def test_ort_errors_are_one_clean_line_and_ort_logs_nothing(tmp_path, capfd):
    # no manifest: edgert knows no vocab_size, so ONNX Runtime itself rejects the id
    model = make_embedding_model(tmp_path / "plain.onnx", manifest=False)
    session = edgert.load(model)
    with pytest.raises(InputError, match="ONNX Runtime rejected the inputs: Non-zero status") as info:
        session.run(embedding_feeds([[2, 99, 3]]))
    assert "[ONNXRuntimeError]" not in str(info.value)
    assert capfd.readouterr().err == ""


def test_corrupt_manifest_is_a_load_error(tmp_path):
    path = make_tiny_model(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {MANIFEST_KEY: "[1, 2]"})
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match=r"corrupt edgert manifest \(manifest must be a JSON object"):
        edgert.load(path)


def test_model_without_tokenizer_says_so(tiny_model):
    with pytest.raises(InputError, match="carries no tokenizer"):
        edgert.load(tiny_model).run_text("hello")


def test_runtime_never_imports_torch(tmp_path):
    path = make_tiny_model(tmp_path / "m.onnx")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        import edgert
        s = edgert.load({str(path)!r})
        s.run({{"x": np.ones((1, 4), np.float32), "ids": np.ones((1, 3), np.int64)}})
        from edgert.profiler import BenchConfig, bench_models
        bench_models([{str(path)!r}], BenchConfig(iters=2, warmup=0, seq=3))
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("transformers", "torch", "onnx")
                       and sys.modules[m] is not None)
        assert not heavy, heavy
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _residual_layer_norm_model(path):
    """y = LayerNormalization(x + skip) with static shapes, which ONNX Runtime's own
    SkipLayerNormFusion rewrites into com.microsoft.SkipLayerNormalization unless told not to."""
    rng = np.random.default_rng(0)
    hidden = 16
    inits = [onnx.numpy_helper.from_array(rng.random(hidden, dtype=np.float32), n) for n in ("g", "b")]
    nodes = [onnx.helper.make_node("Add", ["x", "skip"], ["s"]),
             onnx.helper.make_node("LayerNormalization", ["s", "g", "b"], ["y"], axis=-1, epsilon=1e-12)]
    shape = [1, 8, hidden]
    graph = onnx.helper.make_graph(
        nodes, "residual_ln",
        [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, shape) for n in ("x", "skip")],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, shape)], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _op_types(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_sessions_keep_onnxruntime_from_fusing_skip_layer_norm(tmp_path, monkeypatch):
    import edgert.session as session_module

    path = _residual_layer_norm_model(tmp_path / "residual_ln.onnx")
    # control: ONNX Runtime's defaults do fuse this graph, so the check below can fail
    plain = ort.SessionOptions()
    plain.log_severity_level = 4
    plain.optimized_model_filepath = str(tmp_path / "ort_default.onnx")
    ort.InferenceSession(str(path), plain, providers=["CPUExecutionProvider"])
    assert "SkipLayerNormalization" in _op_types(tmp_path / "ort_default.onnx")

    real_session_options = session_module.session_options

    def recording_options(*args, **kwargs):
        options = real_session_options(*args, **kwargs)
        options.optimized_model_filepath = str(tmp_path / "edgert.onnx")
        return options

    monkeypatch.setattr(session_module, "session_options", recording_options)
    session = edgert.load(path, threads=1)
    assert _op_types(tmp_path / "edgert.onnx") == {"Add", "LayerNormalization"}
    x, skip = np.ones((1, 8, 16), np.float32), np.arange(128, dtype=np.float32).reshape(1, 8, 16)
    s = x + skip
    gamma, beta = (onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer)
    want = (s - s.mean(-1, keepdims=True)) / np.sqrt(s.var(-1, keepdims=True) + 1e-12) * gamma + beta
    np.testing.assert_allclose(session.run({"x": x, "skip": skip})["y"], want, atol=1e-5)


def _denormal_product(tmp_path, flag: str) -> float:
    """x * 1e-30 with x = 1e-10 is 1e-40, a float32 denormal, run by edgert in a fresh process
    with one thread (the calling thread does all the work)."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])
    scale = onnx.numpy_helper.from_array(np.full(4, 1e-30, np.float32), "scale")
    graph = onnx.helper.make_graph([onnx.helper.make_node("Mul", ["x", "scale"], ["y"])], "g", [x], [y], [scale])
    path = tmp_path / "mul.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    script = textwrap.dedent(f"""
        import numpy as np, edgert
        from edgert.session import session_options
        options = session_options(1, denormal_as_zero={flag})
        session = edgert.load({str(path)!r}, options=options)
        y = float(session.run({{"x": np.full(4, 1e-10, np.float32)}})["y"][0])
        # the calling thread is flushed only while edgert runs: the app's own numpy is not
        assert np.float32(1e-40) * np.float32(1) > 0, "the calling thread still flushes denormals"
        print(y)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return float(result.stdout)


def test_denormals_are_flushed_by_default_and_kept_on_request(tmp_path):
    assert _denormal_product(tmp_path, "True") == 0.0
    assert 0.0 < _denormal_product(tmp_path, "False") < 1.2e-38


def test_denormal_as_zero_must_be_a_bool():
    with pytest.raises(EdgertError, match="denormal_as_zero must be True or False"):
        session_options(denormal_as_zero="yes")


def test_float_mode_flushes_only_inside_the_block():
    from edgert import float_mode

    tiny = np.float32(1e-40)
    if not float_mode.controlled():
        pytest.skip("the float environment is not reachable on this platform")
    with float_mode.denormals_flushed():
        assert tiny * np.float32(1) == 0
    assert tiny * np.float32(1) > 0
    with float_mode.denormals_flushed(False):
        assert tiny * np.float32(1) > 0
