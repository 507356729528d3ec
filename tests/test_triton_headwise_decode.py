"""Headwise decode attention of one new token: the torch reference pinned to the exported
decoder's arithmetic (HeadAttention._attend_cached), the Triton kernels against the reference
(under Triton's interpreter on CPU here, compiled on a GPU), and their AOT compile check."""

from __future__ import annotations

import pytest  # conftest sets TRITON_INTERPRET=1 on a machine without an NVIDIA GPU

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from edgert.models.headwise_decode import headwise_decode_reference  # noqa: E402
from edgert.trt_plugins import headwise_decode as hd  # noqa: E402
from edgert.trt_plugins.triton_support import interpreting  # noqa: E402

# Where the small-shape kernel tests run: CPU tensors under the interpreter, else the GPU.
DEVICE = "cpu" if interpreting() else "cuda"
needs_backend = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(),
                                   reason="Triton kernels need TRITON_INTERPRET=1 or a CUDA GPU")
# reference in float32 vs kernel: fp32 exact up to summation order; fp16/bf16 round the softmax
# weights to the input dtype before P @ V, and the output to the input dtype
TOLERANCES = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=3e-3, rtol=3e-3),
              torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def window_slots(position: int, sink: int, recent: int, window: int, gap: int = 0) -> list[int]:
    """Positions a streaming buffer holds after tokens 0 .. position - gap - 1 were written the
    way KVCache.append writes them (sinks, then a ring of `recent` slots); -1 for empty slots."""
    slots = [-1] * window
    for p in range(position - gap):
        slots[p if p < sink else sink + (p - sink) % recent] = p
    return slots


def make_case(*, batch=2, retrieval=1, streaming=2, group=2, d=16, capacity=200, lengths=(200, 150),
              pads=(0, 7), positions=(40, 5), gaps=(0, 0), sink=2, recent=9, dtype=torch.float32,
              device="cpu", beyond=0.0, seed=0) -> dict:
    """Inputs of one headwise decode call. Row b has lengths[b] written retrieval slots, the
    first pads[b] of them left padding (past_mask 0); its new token sits at positions[b] and its
    window holds the tokens before positions[b] - gaps[b] (a gap leaves stale ring slots that the
    window mask must hide). Retrieval slots >= lengths[b] hold `beyond` with past_mask 1: only
    `lengths` keeps them out."""
    gen = torch.Generator().manual_seed(seed)
    kv = retrieval + streaming
    heads, window = kv * group, sink + recent

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(device)

    case = dict(q=randn(batch, heads, d, scale=2.0), k_new=randn(batch, kv, d), v_new=randn(batch, kv, d),
                sink=sink, recent=recent)
    if retrieval:
        past_mask = torch.ones(batch, capacity, dtype=torch.int64)
        key, value = randn(batch, retrieval, capacity, d), randn(batch, retrieval, capacity, d)
        for b in range(batch):
            past_mask[b, :pads[b]] = 0
            key[b, :, lengths[b]:] = beyond
            value[b, :, lengths[b]:] = beyond
        case.update(retrieval_key=key, retrieval_value=value, past_mask=past_mask.to(device),
                    lengths=torch.tensor(lengths[:batch], dtype=torch.int32, device=device))
    if streaming:
        case.update(streaming_key=randn(batch, streaming, window, d),
                    streaming_value=randn(batch, streaming, window, d),
                    window_positions=torch.tensor([window_slots(positions[b], sink, recent, window, gaps[b])
                                                   for b in range(batch)], device=device),
                    position=torch.tensor(positions[:batch], device=device))
    return case


# ---- the reference is today's graph ----------------------------------------------------------

def graph_attention(case: dict) -> torch.Tensor:
    """The exported decoder's arithmetic for one new token: HeadAttention._attend_cached over a
    LayerCache whose biases are built as DecoderStep.forward builds them for S == 1."""
    from edgert.models.attention import HeadAttention, LayerCache
    from edgert.models.decoder import _bias
    from edgert.plan import LayerPlan

    q, k_new = case["q"], case["k_new"]
    batch, heads, d = q.shape
    kv = k_new.shape[1]
    r = case["retrieval_key"].shape[1] if "retrieval_key" in case else 0
    attention = HeadAttention(heads * d, d, LayerPlan.full(heads, kv), qkv_bias=False, o_bias=False)
    real = torch.ones(batch, 1, 1, dtype=torch.bool)  # the new token is real
    cache = LayerCache(r, _bias(real).unsqueeze(1), _bias(real).unsqueeze(1))
    if r:
        cache.retrieval_key, cache.retrieval_value = case["retrieval_key"], case["retrieval_value"]
        cache.retrieval_bias = _bias(case["past_mask"].bool()).view(batch, 1, 1, -1)
    if kv - r:
        cache.streaming_key, cache.streaming_value = case["streaming_key"], case["streaming_value"]
        slot_pos = case["window_positions"].unsqueeze(1)  # [B, 1, W]
        query_pos = case["position"].view(batch, 1, 1)
        sink, recent = case["sink"], case["recent"]
        seen = (slot_pos >= 0) & ((slot_pos < sink) | (query_pos - slot_pos <= recent))
        cache.streaming_bias = _bias(seen).unsqueeze(1)
    with torch.no_grad():
        context = attention._attend_cached(q.unsqueeze(2), k_new.unsqueeze(2), case["v_new"].unsqueeze(2), cache)
    return context[:, :, 0]


GRAPH_CASES = {
    "wrapped window and left padding": dict(positions=(40, 5), gaps=(2, 0), pads=(0, 7)),
    "no retrieval heads": dict(retrieval=0, streaming=2, positions=(33, 12)),
    "no streaming heads": dict(retrieval=2, streaming=0, group=3, pads=(5, 0)),
}


@pytest.mark.parametrize("name", GRAPH_CASES)
def test_reference_is_the_exported_graph_arithmetic(name):
    # the graph has no `lengths`: every slot it masks has past_mask 0 (capacity == lengths)
    case = make_case(capacity=120, lengths=(120, 120), **GRAPH_CASES[name])
    expected = graph_attention(case)
    case.pop("lengths", None)
    torch.testing.assert_close(headwise_decode_reference(**case), expected, atol=1e-5, rtol=1e-5)


def test_reference_hides_stale_window_slots_and_padding():
    # changing what the masks hide (stale ring slots, left padding, slots past lengths) changes nothing
    from edgert.models.headwise_decode import retrieval_visible, window_visible

    case = make_case(positions=(40, 30), gaps=(3, 2), pads=(4, 9))
    base = headwise_decode_reference(**case)
    hidden_window = ~window_visible(case["window_positions"], case["position"], case["sink"], case["recent"])
    hidden_past = ~retrieval_visible(case["past_mask"], case["lengths"])
    assert hidden_window.any() and hidden_past[0, :4].all() and hidden_past[1, 150:].all()
    for key in ("streaming_key", "streaming_value"):
        case[key] = case[key].masked_fill(hidden_window[:, None, :, None], 50.0)
    for key in ("retrieval_key", "retrieval_value"):
        case[key] = case[key].masked_fill(hidden_past[:, None, :, None], 50.0)
    torch.testing.assert_close(headwise_decode_reference(**case), base, atol=1e-6, rtol=1e-6)


def test_reference_rejects_inconsistent_inputs():
    case = make_case()
    with pytest.raises(ValueError, match="past_mask must be"):
        headwise_decode_reference(**{**case, "past_mask": case["past_mask"][:, :10]})
    with pytest.raises(ValueError, match="streaming heads need"):
        headwise_decode_reference(**{**case, "window_positions": None})
    with pytest.raises(ValueError, match="divide"):
        headwise_decode_reference(**{**case, "q": case["q"][:, :5]})


# ---- the kernels against the reference -------------------------------------------------------

KERNEL_CASES = {
    # ragged lengths, left padding, a wrapped window with stale slots, g = 2, d = 16, C = 200
    "ragged": dict(batch=3, retrieval=1, streaming=2, group=2, d=16, lengths=(200, 150, 61), pads=(0, 7, 40),
                   positions=(40, 5, 27), gaps=(0, 0, 3)),
    # g = 4, d = 32, every row full length, two retrieval heads
    "group 4": dict(batch=2, retrieval=2, streaming=1, group=4, d=32, capacity=130, lengths=(130, 130),
                    pads=(3, 0), positions=(130, 12)),
    # r == 0: streaming heads only, an uneven group of 3 (padded to 16 rows)
    "no retrieval": dict(batch=2, retrieval=0, streaming=2, group=3, positions=(50, 9), gaps=(1, 0)),
    # s == 0: retrieval heads only, batch 1
    "no streaming": dict(batch=1, retrieval=2, streaming=0, group=2, d=32, lengths=(177,), pads=(5,)),
}


def run_both(case: dict, **options) -> tuple[torch.Tensor, torch.Tensor]:
    return hd.headwise_decode_attention(**case, **options), headwise_decode_reference(**case)


@needs_backend
@pytest.mark.parametrize("name", KERNEL_CASES)
def test_kernel_matches_reference_fp32(name):
    got, expected = run_both(make_case(device=DEVICE, **KERNEL_CASES[name]))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, **TOLERANCES[torch.float32])


@needs_backend
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_kernel_matches_reference_half(dtype):
    got, expected = run_both(make_case(device=DEVICE, dtype=dtype, **KERNEL_CASES["ragged"]))
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected.float(), **TOLERANCES[dtype])


@needs_backend
@pytest.mark.parametrize("splits", [1, 2, 9])  # one split; several; more splits than tiles (empty ones)
def test_kernel_split_count_does_not_change_the_result(splits):
    case = make_case(device=DEVICE, batch=2, retrieval=1, streaming=1, lengths=(200, 90), pads=(0, 11))
    got, expected = run_both(case, num_splits=splits)
    torch.testing.assert_close(got, expected, **TOLERANCES[torch.float32])


@needs_backend
def test_kernel_never_reads_slots_past_lengths():
    # NaN past lengths[b] (with past_mask 1) would poison the output if a tile loaded them;
    # a row of length 0 attends to its new token alone
    case = make_case(device=DEVICE, batch=3, lengths=(70, 33, 0), pads=(0, 2, 0), positions=(40, 5, 3),
                     gaps=(0, 0, 0), beyond=float("nan"))
    got = hd.headwise_decode_attention(**case)
    for key in ("retrieval_key", "retrieval_value"):
        case[key] = torch.nan_to_num(case[key], nan=0.0)
    torch.testing.assert_close(got, headwise_decode_reference(**case), **TOLERANCES[torch.float32])


@needs_backend
def test_kernel_reads_past_mask_alone_and_strided_caches():
    # no lengths (the runtime's inputs), caches that are views into a larger capacity buffer
    case = make_case(device=DEVICE, capacity=96, lengths=(96, 96), pads=(0, 30))
    case.pop("lengths")
    for key in ("retrieval_key", "retrieval_value"):
        big = torch.zeros(2, 1, 160, 16, device=DEVICE)
        big[:, :, :96] = case[key]
        case[key] = big[:, :, :96]
    case["past_mask"][1, 50:60] = 0  # holes, not only left padding
    got, expected = run_both(case)
    torch.testing.assert_close(got, expected, **TOLERANCES[torch.float32])


def test_kernel_refuses_cpu_tensors_without_the_interpreter(monkeypatch):
    monkeypatch.setattr(hd, "_INTERPRETED", False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        hd.headwise_decode_attention(**make_case(device="cpu"))


def test_split_count_heuristic_on_cpu_is_small_and_fixed():
    cpu = torch.device("cpu")
    assert hd.choose_splits(200, 3, cpu, 32) == hd.INTERPRETER_SPLITS
    assert hd.choose_splits(20, 3, cpu, 32) == 1


# ---- ahead-of-time compilation ---------------------------------------------------------------

def test_aot_builds_compile_without_global_scratch(aot_compile_report):
    ours = [r for r in aot_compile_report["results"] if r["name"].startswith("headwise_decode_")]
    names = {b.name for b in hd.aot_builds()}
    assert len(names) == 8 and {r["name"] for r in ours} == names, aot_compile_report["stderr"]
    assert {r["arch"] for r in ours} == {90, 89}
    assert all(r["ptx_bytes"] > 0 and r["global_scratch_size"] == 0 for r in ours), ours
    assert not [f for f in aot_compile_report["failures"] if f.startswith("headwise_decode_")]


# ---- real shapes on a GPU --------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or interpreting(), reason="needs a CUDA GPU (not the interpreter)")
@pytest.mark.parametrize("batch", [1, 8])
def test_kernel_matches_reference_on_gpu_at_llama_shapes(batch):
    # Llama-3-8B-like layer: 8 kv heads (2 retrieval), g = 4, d 128, 32k slots, sink 64 + recent 256
    capacity = 32768
    lengths = tuple(capacity - 1000 * b for b in range(batch))
    case = make_case(batch=batch, retrieval=2, streaming=6, group=4, d=128, capacity=capacity, lengths=lengths,
                     pads=tuple(17 * b for b in range(batch)), positions=lengths, gaps=(0, 5) * 4,
                     sink=64, recent=256, dtype=torch.float16, device="cuda")
    got, expected = run_both(case)
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-3, rtol=1e-2)
    case.pop("lengths")  # past_mask alone: slots past lengths hold zeros with past_mask 1
    for b, n in enumerate(lengths):
        case["past_mask"][b, n:] = 0
    got, expected = run_both(case)
    torch.testing.assert_close(got.float(), expected.float(), atol=2e-3, rtol=1e-2)
