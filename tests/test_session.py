import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest

import edgert
from edgert import DeviceUnavailableError, EdgertError, InputError, ModelLoadError

from conftest import make_tiny_model


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


def test_threads_must_be_positive(tiny_model):
    with pytest.raises(EdgertError, match="threads must be >= 1"):
        edgert.load(tiny_model, threads=0)


def test_model_without_tokenizer_says_so(tiny_model):
    with pytest.raises(EdgertError, match="carries no tokenizer"):
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
