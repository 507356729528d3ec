"""The Triton kernels of the vision attention ops and the clipped softmax against their torch
references (models/ops.py): under Triton's interpreter on CPU at small shapes here, compiled
on a GPU at the real model shapes; and their AOT compile check."""

from __future__ import annotations

import pytest  # conftest sets TRITON_INTERPRET=1 on a machine without an NVIDIA GPU

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from edgert.models.ops import (  # noqa: E402
    cascaded_group_attention_reference,
    clipped_softmax,
    single_head_attention_reference,
)
from edgert.trt_plugins import clipped_softmax as cs  # noqa: E402
from edgert.trt_plugins import vision_attention as va  # noqa: E402
from edgert.trt_plugins.triton_support import interpreting  # noqa: E402

DEVICE = "cpu" if interpreting() else "cuda"
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                reason="Triton kernels need TRITON_INTERPRET=1 or a CUDA GPU")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Kernel in `dtype` vs the reference in float32 on the same (dtype-rounded) inputs. fp32: only the
# summation order differs. fp16/bf16: q, k, v and the softmax weights are rounded to the dtype
# before their dots (fp32 accumulation), and the output is rounded; outputs are of order one.
ATTENTION_TOLERANCES = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=5e-3, rtol=5e-3),
                        torch.bfloat16: dict(atol=4e-2, rtol=4e-2)}
# The clipped softmax's output lies in [0, 1] and is computed in fp32: only its final rounding
# to the dtype differs (half an ulp below 1, 2.4e-4 in fp16, 2e-3 in bf16), with margin.
SOFTMAX_TOLERANCES = {torch.float32: dict(atol=1e-6, rtol=1e-5), torch.float16: dict(atol=5e-4, rtol=0),
                      torch.bfloat16: dict(atol=4e-3, rtol=0)}


def _to(args: tuple, **kwargs) -> tuple:
    return tuple(a.to(**kwargs) if isinstance(a, torch.Tensor) else a for a in args)


def check_against_reference(kernel, reference, args: tuple, dtype: torch.dtype) -> None:
    """kernel(args in dtype) against reference(the same values in float32), in float32."""
    rounded = _to(args, device=DEVICE, dtype=dtype)
    got = kernel(*rounded)
    expected = reference(*_to(rounded, device="cpu", dtype=torch.float32))
    assert got.dtype == dtype and got.shape == expected.shape
    torch.testing.assert_close(got.float().cpu(), expected, **ATTENTION_TOLERANCES[dtype])


# ---- clipped softmax -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 3, 33), (2, 1, 4, 129), (2, 4097)],
                         ids=["row5", "3x7", "odd33", "4d129", "streamed4097"])
def test_clipped_softmax_matches_reference(shape, dtype):
    gen = torch.Generator().manual_seed(0)
    scores = (torch.randn(shape, generator=gen) * 4).to(dtype)
    for gamma, zeta in [(-0.03, 1.03), (-0.5, 1.5)]:  # the second clips many values at 0 and some at 1
        got = cs.clipped_softmax(scores.to(DEVICE), gamma, zeta)
        expected = clipped_softmax(scores.float(), gamma, zeta)
        assert got.dtype == dtype and got.shape == scores.shape
        torch.testing.assert_close(got.float().cpu(), expected, **SOFTMAX_TOLERANCES[dtype])


def test_clipped_softmax_takes_a_non_contiguous_view():
    scores = torch.randn(6, 40).t()[:, 1::2]  # [40, 3], strided
    got = cs.clipped_softmax(scores.to(DEVICE), -0.1, 1.1)
    torch.testing.assert_close(got.cpu(), clipped_softmax(scores.contiguous(), -0.1, 1.1),
                               **SOFTMAX_TOLERANCES[torch.float32])


def test_clipped_softmax_refuses_integers_and_scalars():
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        cs.clipped_softmax(torch.ones(3, dtype=torch.int32, device=DEVICE), 0.0, 1.0)
    with pytest.raises(ValueError, match="at least one dimension"):
        cs.clipped_softmax(torch.tensor(1.0, device=DEVICE), 0.0, 1.0)


# ---- single-head attention (SHViT) -----------------------------------------------------------

SHA_SHAPES = {
    "passthrough_qk4": dict(channels=12, partial_dim=8, qk_dim=4, size=5),
    "two_query_blocks": dict(channels=40, partial_dim=20, qk_dim=16, size=9),  # 81 tokens: blocks of 64
    "all_channels": dict(channels=8, partial_dim=8, qk_dim=16, size=4),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHA_SHAPES.values(), ids=SHA_SHAPES.keys())
def test_single_head_attention_matches_reference(shape, dtype):
    args = va.example_inputs("sha", shape, 2 if shape["size"] < 9 else 1)
    check_against_reference(va.single_head_attention, single_head_attention_reference, args, dtype)


# ---- cascaded group attention (EfficientViT) -------------------------------------------------

CGA_SHAPES = {
    "2heads_5x5_k53": dict(channels=16, heads=2, key_dim=4, window=5, kernels=[5, 3]),
    "3heads_7x7_k753": dict(channels=24, heads=3, key_dim=16, window=7, kernels=[7, 5, 3]),
    "4heads_6x4_k3513": dict(channels=16, heads=4, key_dim=4, window=(6, 4), kernels=[3, 5, 1, 3]),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CGA_SHAPES.values(), ids=CGA_SHAPES.keys())
def test_cascaded_group_attention_matches_reference(shape, dtype):
    args = va.example_inputs("cga", shape, 2 if shape["heads"] < 3 else 1)
    check_against_reference(va.cascaded_group_attention, cascaded_group_attention_reference, args, dtype)


def test_kernels_take_the_buffers_of_the_export_modules():
    # The op modules of models/vision_op_swap.py hold what the TensorRT plugins will get: the
    # kernels on their buffers reproduce the BN-folded torch modules.
    from edgert.models.batchnorm_folding import fold_batchnorms
    from edgert.models.efficientvit import CascadedGroupAttention
    from edgert.models.shvit import SingleHeadAttention
    from edgert.models.vision import randomize_statistics
    from edgert.models.vision_op_swap import CascadedGroupAttentionOp, SingleHeadAttentionOp

    torch.manual_seed(0)
    cga = CascadedGroupAttention(16, 4, 2, 2.0, 5, (5, 3))
    sha = SingleHeadAttention(12, 4, 8)
    for module in (cga, sha):
        randomize_statistics(module)
        fold_batchnorms(module)
        module.eval()
    x = torch.randn(2, 16, 5, 5)
    op = CascadedGroupAttentionOp(cga)
    got = va.cascaded_group_attention(x.to(DEVICE), op.qkv_weight.to(DEVICE), op.qkv_bias.to(DEVICE),
                                      op.dw_weight.to(DEVICE), op.dw_bias.to(DEVICE), op.bias.to(DEVICE),
                                      op.num_heads, op.key_dim, op.kernels, op.scale)
    with torch.no_grad():
        torch.testing.assert_close(got.cpu(), cga.heads(x), **ATTENTION_TOLERANCES[torch.float32])
    x = torch.randn(2, 12, 4, 4)
    op = SingleHeadAttentionOp(sha)
    got = va.single_head_attention(x.to(DEVICE), *(t.detach().to(DEVICE) for t in (
        op.pre_norm.weight, op.pre_norm.bias, op.qkv.weight, op.qkv.bias)), op.pdim, op.qk_dim, op.scale, op.eps)
    with torch.no_grad():
        torch.testing.assert_close(got.cpu(), sha.mix(x), **ATTENTION_TOLERANCES[torch.float32])


def test_model_shapes_are_the_models_attention_inputs():
    from edgert.models.efficientvit import CascadedGroupAttention
    from edgert.models.shvit import SingleHeadAttention
    from edgert.models.vision import create_model
    from edgert.models.vision_configs import VARIANTS

    for name in ("efficientvit-m1", "shvit-s1"):
        model, seen = create_model(VARIANTS[name]).eval(), []

        def record(module, inputs, output, seen=seen):
            if tuple(inputs[0].shape) not in seen:
                seen.append(tuple(inputs[0].shape))

        for module in model.modules():
            if isinstance(module, (CascadedGroupAttention, SingleHeadAttention)):
                module.register_forward_hook(record)
        with torch.no_grad():
            model(torch.randn(1, 3, 224, 224))
        expected = [tuple(va.example_inputs(kind, shape, 1, device="meta")[0].shape)
                    for kind, shape in va.model_shapes(name)]
        assert seen == expected, name


# ---- errors ----------------------------------------------------------------------------------

def test_kernels_refuse_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(va, "_INTERPRETED", False)
    monkeypatch.setattr(cs, "_INTERPRETED", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        va.cascaded_group_attention(*va.example_inputs("cga", CGA_SHAPES["2heads_5x5_k53"], 1))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        va.single_head_attention(*va.example_inputs("sha", SHA_SHAPES["all_channels"], 1))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        cs.clipped_softmax(torch.randn(2, 3), 0.0, 1.0)


def test_kernels_refuse_mismatched_arguments():
    args = list(_to(va.example_inputs("cga", CGA_SHAPES["2heads_5x5_k53"], 1), device=DEVICE))
    with pytest.raises(ValueError, match="odd size"):
        va.cascaded_group_attention(*args[:8], [5, 4], args[9])
    with pytest.raises(ValueError, match="bias has shape"):
        va.cascaded_group_attention(*args[:5], args[5][:, :-1], *args[6:])
    with pytest.raises(ValueError, match="qkv_bias is torch.float16"):
        va.cascaded_group_attention(*args[:2], args[2].half(), *args[3:])
    args = list(_to(va.example_inputs("sha", SHA_SHAPES["passthrough_qk4"], 1), device=DEVICE))
    with pytest.raises(ValueError, match="norm_weight has shape"):
        va.single_head_attention(*args[:5], 9, *args[6:])


# ---- ahead-of-time compilation ---------------------------------------------------------------

def test_aot_builds_compile_without_global_scratch(aot_compile_report):
    names = {b.name for b in va.aot_builds() + cs.aot_builds()}
    assert len(names) == 14  # (3 CGA + 2 SHA layers of efficientvit-m1 / shvit-s1 + 2 softmax) x fp16, bf16
    ours = [r for r in aot_compile_report["results"] if r["name"] in names]
    assert {r["name"] for r in ours} == names, aot_compile_report["stderr"]
    assert {r["arch"] for r in ours} == {90, 89}
    assert all(r["ptx_bytes"] > 0 and r["global_scratch_size"] == 0 for r in ours), ours
    assert not [f for f in aot_compile_report["failures"] if f.split()[0] in names]


# ---- real shapes on a GPU --------------------------------------------------------------------

GPU_TOLERANCES = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=1e-2, rtol=1e-2),
                  torch.bfloat16: dict(atol=6e-2, rtol=6e-2)}


def _model_cases():
    return [pytest.param(kind, shape, id=f"{name}-{kind}-c{shape['channels']}")
            for name in ("efficientvit-m1", "shvit-s1") for kind, shape in va.model_shapes(name)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or interpreting(), reason="needs a CUDA GPU (not the interpreter)")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("kind, shape", _model_cases())
def test_attention_matches_reference_on_gpu_at_model_shapes(kind, shape, batch, dtype):
    # Reference in float64 on the GPU: its float32 convolutions would use TF32 (cudnn's default).
    args = _to(va.example_inputs(kind, shape, batch), device="cuda", dtype=dtype)
    kernel, reference = ((va.cascaded_group_attention, cascaded_group_attention_reference) if kind == "cga"
                         else (va.single_head_attention, single_head_attention_reference))
    got = kernel(*args)
    expected = reference(*_to(args, dtype=torch.float64))
    torch.testing.assert_close(got.double(), expected, **GPU_TOLERANCES[dtype])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or interpreting(), reason="needs a CUDA GPU (not the interpreter)")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(16, 8, 128, 257), (4, 12000)])
def test_clipped_softmax_matches_reference_on_gpu(shape, dtype):
    scores = (torch.randn(shape, device="cuda") * 4).to(dtype)
    got = cs.clipped_softmax(scores, -0.03, 1.03)
    torch.testing.assert_close(got.float(), clipped_softmax(scores.float(), -0.03, 1.03), **SOFTMAX_TOLERANCES[dtype])
