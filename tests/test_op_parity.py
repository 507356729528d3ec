"""One parity test per edgert op (edgert/op_spec.py): every backend this machine has, against
the op's torch reference (models/ops.py), on the same small inputs.

Backends: ONNX Runtime (the op exported by torch.onnx with edgert's translation table, run
through its function body, or for prefill_attention through ONNX Runtime's
GroupQueryAttention), Triton (trt_plugins/ kernels: CUDA on a GPU machine, the interpreter in
CI) and TensorRT (the TensorRT issue: skipped until its plugins exist).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgert.op_spec import (CASCADED_GROUP_ATTENTION, CLIPPED_SOFTMAX, DOMAIN, FUNCTION,  # noqa: E402
                            HEADWISE_ATTENTION, HEADWISE_DECODE_ATTENTION, NO_ONNX_FORM, OPS, PREFILL_ATTENTION, SINGLE_HEAD_ATTENTION,
                            channels_last_overload)


def _clipped_softmax_case(rng):
    return [rng.standard_normal((2, 3, 5, 7)) * 3], {"gamma": -0.03, "zeta": 1.02}


def _cascaded_group_attention_case(rng):
    heads, key_dim, channels, side = 2, 4, 8, 4
    value_dim, largest = channels // heads, 5
    tensors = [rng.standard_normal((2, channels, side, side)),
               rng.standard_normal((heads, 2 * key_dim + value_dim, channels // heads, 1, 1)) * 0.5,
               rng.standard_normal((heads, 2 * key_dim + value_dim)) * 0.1,
               rng.standard_normal((heads, key_dim, 1, largest, largest)) * 0.3,
               rng.standard_normal((heads, key_dim)) * 0.1,
               rng.standard_normal((heads, side * side, side * side)) * 0.5]
    # The second head's 3x3 kernel sits zero-padded in the 5x5 stack, as the export form stores it.
    tensors[3][1, :, :, [0, 4], :] = 0
    tensors[3][1, :, :, :, [0, 4]] = 0
    return tensors, {"num_heads": heads, "key_dim": key_dim, "kernels": [5, 3], "scale": key_dim ** -0.5}


def _single_head_attention_case(rng):
    channels, partial, qk = 12, 4, 4
    tensors = [rng.standard_normal((2, channels, 4, 4)), 1 + 0.1 * rng.standard_normal(partial),
               0.1 * rng.standard_normal(partial), rng.standard_normal((2 * qk + partial, partial, 1, 1)) * 0.5,
               rng.standard_normal(2 * qk + partial) * 0.1]
    return tensors, {"partial_dim": partial, "qk_dim": qk, "scale": qk ** -0.5, "eps": 1e-5}


def _prefill_attention_case(rng):
    batch, heads, kv, seq, past, d = 1, 4, 2, 3, 5, 8
    q = rng.standard_normal((batch, heads, seq, d))
    new = [rng.standard_normal((batch, kv, seq, d)) for _ in range(2)]
    cached = [rng.standard_normal((batch, kv, past, d)) for _ in range(2)]
    return [q, *new, *cached, None], {"scale": d ** -0.5}  # bias None: causal in cache coordinates


def _headwise_decode_attention_case(rng):
    batch, kv, retrieval, group, d, capacity, sink, recent = 2, 3, 1, 2, 16, 12, 2, 3
    window, streaming = sink + recent, kv - retrieval
    past_mask = np.ones((batch, capacity), np.int64)
    past_mask[1, :4] = 0  # the second row is left-padded
    past_mask[:, 10:] = 0  # slots not written yet
    position = np.array([9, 5])
    # Row 0's ring has wrapped (positions 0, 1 are sinks; 7..9 fill the recent slots in ring order);
    # row 1 still has an empty slot.
    window_positions = np.array([[0, 1, 9, 7, 8], [0, 1, 2, 3, -1]])
    return [rng.standard_normal((batch, kv * group, d)), rng.standard_normal((batch, kv, d)),
            rng.standard_normal((batch, kv, d)), rng.standard_normal((batch, retrieval, capacity, d)),
            rng.standard_normal((batch, retrieval, capacity, d)), past_mask, np.array([10, 10], np.int32),
            rng.standard_normal((batch, streaming, window, d)), rng.standard_normal((batch, streaming, window, d)),
            window_positions, position], {"sink": sink, "recent": recent, "scale": d ** -0.5}


def _headwise_attention_case(rng):
    """A prefill chunk of 3 tokens over one retrieval kv head (5 slots, two empty) and one
    streaming kv head (4 window slots, one empty), 2 query heads per kv head."""
    batch, group, d, seq, past, window = 1, 2, 8, 3, 5, 4
    masked = np.finfo(np.float32).min
    causal = np.where(np.tril(np.ones((seq, seq), bool)), 0.0, masked)[None, None]
    retrieval_bias = np.where(np.array([1, 1, 0, 1, 0], bool), 0.0, masked)[None, None, None]
    streaming_bias = np.where(np.array([[1, 1, 1, 0], [1, 0, 1, 0], [0, 0, 1, 0]], bool), 0.0, masked)[None, None]
    return [rng.standard_normal((batch, 2 * group, seq, d)), rng.standard_normal((batch, 2, seq, d)),
            rng.standard_normal((batch, 2, seq, d)), rng.standard_normal((batch, 1, past, d)),
            rng.standard_normal((batch, 1, past, d)), retrieval_bias, causal, rng.standard_normal((batch, 1, window, d)),
            rng.standard_normal((batch, 1, window, d)), streaming_bias, causal, None], \
        {"group": group, "retrieval_heads": 1, "softmax": "standard", "gamma": 0.0, "zeta": 1.0, "fused_prefill": False}


# op name -> inputs (numpy; floats cast to the test's dtype, integers kept; None for an absent
# optional input) and the
# torch op's non-tensor arguments, in its signature's order.
CASES = {CLIPPED_SOFTMAX.name: _clipped_softmax_case,
         CASCADED_GROUP_ATTENTION.name: _cascaded_group_attention_case,
         SINGLE_HEAD_ATTENTION.name: _single_head_attention_case,
         PREFILL_ATTENTION.name: _prefill_attention_case,
         HEADWISE_DECODE_ATTENTION.name: _headwise_decode_attention_case,
         HEADWISE_ATTENTION.name: _headwise_attention_case}
BACKENDS = ("onnxruntime", "triton", "tensorrt")


def _inputs(name: str, dtype=torch.float32):
    tensors, arguments = CASES[name](np.random.default_rng(0))
    def tensor(value):
        value = torch.from_numpy(np.asarray(value))
        return value.to(dtype) if value.is_floating_point() else value

    return [None if t is None else tensor(t) for t in tensors], arguments


def _reference(spec, tensors, arguments):
    import edgert.models.ops  # noqa: F401  (registers the ops)

    op = getattr(getattr(torch.ops, DOMAIN), spec.torch_name)
    return op(*tensors, *arguments.values())


def test_every_op_has_a_parity_case_and_one_registered_torch_op():
    import edgert.models.ops  # noqa: F401

    assert set(CASES) == set(OPS)
    for spec in OPS.values():
        assert hasattr(getattr(torch.ops, DOMAIN), spec.torch_name), spec.torch_qualname


def test_spec_names_overloads_and_node_attributes():
    cascade = CASCADED_GROUP_ATTENTION
    assert cascade.overload({"num_heads": 4, "kernels": [5, 5, 3, 3]}) == "heads4.k5-5-3-3"
    assert cascade.overload({"num_heads": 2, "kernels": [7, 5]}, channels_last=True) == "heads2.k7-5.channels-last"
    assert SINGLE_HEAD_ATTENTION.overload({}, channels_last=True) == channels_last_overload("") == "channels-last"
    assert CLIPPED_SOFTMAX.node_attributes(gamma=-0.1, zeta=1.0) == {"gamma": -0.1, "zeta": 1.0,
                                                                     "plugin_namespace": "edgert"}
    with pytest.raises(ValueError, match="takes attributes"):
        CLIPPED_SOFTMAX.node_attributes(gamma=-0.1)
    assert CLIPPED_SOFTMAX.plugin_id == "edgert::ClippedSoftmax"


class _OneOp(torch.nn.Module):
    def __init__(self, spec, arguments, absent: list[int]):
        super().__init__()
        self.spec, self.arguments, self.absent = spec, list(arguments.values()), absent

    def forward(self, *tensors):
        tensors = list(tensors)
        for index in self.absent:
            tensors.insert(index, None)
        return _reference(self.spec, tensors, dict(enumerate(self.arguments)))


def _run_onnxruntime(spec, tensors, arguments, tmp_path):
    import onnx
    import onnxruntime as ort

    from edgert.exporters.custom_ops import attach_functions, translation_table

    present = [t for t in tensors if t is not None]
    absent = [i for i, t in enumerate(tensors) if t is None]
    names = [f"input{i}" for i in range(len(present))]
    path = tmp_path / f"{spec.name}.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(_OneOp(spec, arguments, absent), tuple(present), str(path), dynamo=True, opset_version=18,
                          input_names=names, custom_translation_table=translation_table(), external_data=False)
    model = onnx.load(str(path))
    attach_functions(model)
    if spec.onnx_form == FUNCTION:
        assert [n.op_type for n in model.graph.node if n.domain == DOMAIN] == [spec.name]
        node = next(n for n in model.graph.node if n.domain == DOMAIN)
        assert {a.name for a in node.attribute} == set(spec.attribute_names)
    else:  # exported as another domain's op: ONNX Runtime's own kernel runs it
        domain, op_type = spec.onnx_form.rsplit(".", 1)
        assert (domain, op_type) in {(n.domain, n.op_type) for n in model.graph.node}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {n: t.numpy() for n, t in zip(names, present)})[0]


def _triton_launcher(spec):
    pytest.importorskip("triton")
    from edgert.trt_plugins.kernels import launchers

    launcher = launchers().get(spec.name)
    if launcher is None:
        pytest.skip(f"{spec.name}: no Triton kernel yet")
    return launcher


# fp32 tolerances: the backends sum in different orders (tiled softmax, fused convolutions).
TOLERANCE = {"onnxruntime": 2e-5, "triton": 2e-5}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_backend_matches_torch_reference(name, backend, tmp_path):
    spec = OPS[name]
    tensors, arguments = _inputs(name)
    expected = _reference(spec, tensors, arguments).numpy()
    if backend == "onnxruntime":
        if spec.onnx_form == NO_ONNX_FORM:
            pytest.skip(f"{spec.name} has no ONNX form yet")
        got = _run_onnxruntime(spec, tensors, arguments, tmp_path)
    elif backend == "triton":
        launcher = _triton_launcher(spec)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        moved = [None if t is None else t.to(device) for t in tensors]
        got = launcher(*moved, *arguments.values()).float().cpu().numpy()
    else:
        pytest.skip("TensorRT plugins are not built yet (the TensorRT issue)")
    np.testing.assert_allclose(got, expected, atol=TOLERANCE[backend], rtol=1e-4)



def test_triton_kernels_register_as_the_cuda_implementation_of_their_ops():
    pytest.importorskip("triton")
    from edgert.trt_plugins import kernels

    kernels.register_cuda_kernels()
    assert kernels.registered_ops() == set(kernels.launchers())
    assert kernels.register_cuda_kernels() == []  # idempotent


def test_every_kernel_compiles_for_sm90_and_sm89_without_global_scratch(aot_compile_report):
    assert aot_compile_report["returncode"] == 0, aot_compile_report["failures"]
    assert aot_compile_report["results"] and not aot_compile_report["failures"]
