"""Decoder export and edgert.Generator: exactness against transformers, the per-head cache,
and its memory."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import edgert  # noqa: E402
from edgert.errors import EdgertError, PlanError  # noqa: E402
from edgert.exporters import export  # noqa: E402
from edgert.exporters.heads import Transform  # noqa: E402
from edgert.kv_cache import CacheLayout  # noqa: E402
from edgert.plan import CachePolicy, HeadPlan  # noqa: E402

from conftest import save_tiny_decoder  # noqa: E402

NEW_TOKENS = 64


def tiny_decoder(directory, family: str, **overrides):
    """The conftest tiny decoder without special tokens, so transformers' generate never stops early."""
    return save_tiny_decoder(directory, family, eos_token_id=None, bos_token_id=None, pad_token_id=None,
                             **overrides)


def prompts(batch: int, vocab: int = 128) -> list[list[int]]:
    rng = np.random.default_rng(batch)
    return [rng.integers(0, vocab, size=n).tolist() for n in (21, 13, 30)[:batch]]


def transformers_greedy(model, batch_prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """transformers' own greedy generate with its KV cache, left padding like edgert."""
    longest = max(len(p) for p in batch_prompts)
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in batch_prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in batch_prompts])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return out[:, longest:].tolist()


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral"])
def family_export(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    model = tiny_decoder(directory / "hf", request.param)
    result = export(str(directory / "hf"), directory / "full.onnx")
    return request.param, model, directory, result


@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_tokens_equal_transformers(family_export, batch):
    _, model, directory, _ = family_export
    generator = edgert.Generator(directory / "full.onnx", threads=2)
    batch_prompts = prompts(batch)
    expected = transformers_greedy(model, batch_prompts, NEW_TOKENS)
    got = generator.generate(batch_prompts if batch > 1 else batch_prompts[0], NEW_TOKENS, stop=())
    assert (got if batch > 1 else [got]) == expected


def test_export_manifest_sizes_the_cache(family_export):
    _, model, directory, result = family_export
    decoder = result.manifest.decoder
    layout = CacheLayout.from_dict(decoder["cache"])
    assert layout.retrieval == (2, 2) and layout.streaming == (0, 0) and layout.head_dim == 16
    assert decoder["vocab_size"] == 128 and decoder["max_length"] == 512
    assert result.manifest.task == "text-generation"
    assert max(result.diffs.values()) < 1e-4
    generator = edgert.Generator(directory / "full.onnx")
    generator.generate(prompts(1)[0], 5, stop=())
    # 2 layers x 2 kv heads x (21 + 5 slots) x 16 dims x (key, value) x 4 bytes
    assert generator.cache_bytes() == 2 * 2 * 26 * 16 * 2 * 4
    generator.reset()
    assert generator.cache_bytes() == 0


def test_chunked_prefill_equals_one_chunk(family_export):
    _, _, directory, _ = family_export
    whole = edgert.Generator(directory / "full.onnx", prefill_chunk=512)
    chunked = edgert.Generator(directory / "full.onnx", prefill_chunk=4)
    prompt = prompts(3)[2]
    assert np.allclose(whole.next_token_logits(prompt, [1, 2, 3]), chunked.next_token_logits(prompt, [1, 2, 3]),
                       atol=1e-4)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    directory = tmp_path_factory.mktemp("llama-headwise")
    model = tiny_decoder(directory / "hf", "llama")
    export(str(directory / "hf"), directory / "full.onnx")
    return model, directory


@pytest.mark.slow
def test_window_covering_the_context_is_full_attention(llama):
    model, directory = llama
    export(str(directory / "hf"), directory / "covering.onnx",
           transform=Transform(retrieval=1, sink=4, recent=120))
    full = edgert.Generator(directory / "full.onnx")
    covering = edgert.Generator(directory / "covering.onnx")
    for batch in (1, 2):
        batch_prompts = prompts(batch)
        assert covering.generate(batch_prompts, NEW_TOKENS, stop=()) == full.generate(batch_prompts, NEW_TOKENS, stop=())
    # ... and it holds less: one kv head of four keeps 21 + 64 tokens, three keep 124 slots
    assert covering.cache_bytes() < full.cache_bytes() * 2


def window_mask(positions: torch.Tensor, valid: torch.Tensor, sink: int, recent: int) -> torch.Tensor:
    """What a streaming head may see, as a 4-D additive mask over a whole sequence."""
    index = torch.arange(positions.shape[1])
    query, key = positions[:, :, None], positions[:, None, :]
    allowed = ((index[:, None] >= index[None, :]) & valid.bool()[:, None, :]
               & ((key < sink) | (query - key <= recent)))
    return torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]


@pytest.mark.slow
def test_streaming_heads_roll_their_window(llama):
    """Every head streaming, a window much shorter than the generation: edgert's rolling
    cache must give the tokens transformers gives when every step re-runs the whole sequence
    under the equivalent sinks + recent mask."""
    model, directory = llama
    sink, recent = 2, 5
    export(str(directory / "hf"), directory / "stream.onnx", transform=Transform(retrieval=0, sink=sink, recent=recent))
    generator = edgert.Generator(directory / "stream.onnx")
    batch_prompts = prompts(2)
    got = generator.generate(batch_prompts, 24, stop=())
    longest = max(len(p) for p in batch_prompts)
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in batch_prompts])
    valid = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in batch_prompts])
    expected = [[], []]
    with torch.no_grad():
        for _ in range(24):
            positions = (valid.cumsum(1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=window_mask(positions, valid, sink, recent),
                           position_ids=positions).logits[:, -1]
            token = logits.argmax(-1)
            for row, t in zip(expected, token.tolist()):
                row.append(t)
            ids = torch.cat([ids, token[:, None]], 1)
            valid = torch.cat([valid, torch.ones(2, 1, dtype=valid.dtype)], 1)
    assert got == expected
    # Constant memory: the window caches do not grow with the generation.
    assert generator.cache_bytes() == 2 * 2 * 2 * (sink + recent) * 16 * 2 * 4


@pytest.mark.slow
def test_headwise_layers_hold_different_counts(llama):
    model, directory = llama
    result = export(str(directory / "hf"), directory / "one.onnx", transform=Transform(retrieval=1, sink=2, recent=3))
    layout = CacheLayout.from_dict(result.manifest.decoder["cache"])
    assert sorted(layout.retrieval) == [0, 1] and sum(layout.streaming) == 3
    names = edgert.Generator(directory / "one.onnx").session.input_names
    assert sum(".retrieval.key" in n for n in names) == 1 and sum(".streaming.key" in n for n in names) == 2


@pytest.mark.slow
def test_retrieval_heads_are_reordered_first(llama):
    """A plan naming kv head 1 (not 0) as the retrieval head: the exporter permutes the
    projections so the retrieval cache holds kv head 1, and the output is unchanged."""
    model, directory = llama
    plan = HeadPlan.full(2, 4, 2, head_dim=16)
    for layer in plan.layers:
        layer.cache = [CachePolicy("window", 4, 200), CachePolicy()]
    plan_path = directory / "plan.json"
    plan.save(plan_path)
    result = export(str(directory / "hf"), directory / "swapped.onnx", transform=Transform(plan=HeadPlan.load(plan_path)))
    assert [p.kind for p in result.manifest.plan.layers[0].cache] == ["full", "window"]
    assert result.manifest.plan.layers[0].kept_heads == [2, 3, 0, 1]
    full = edgert.Generator(directory / "full.onnx")
    swapped = edgert.Generator(directory / "swapped.onnx")
    prompt = prompts(1)[0]
    assert swapped.generate(prompt, 32, stop=()) == full.generate(prompt, 32, stop=())


@pytest.mark.slow
def test_transformed_decoder_matches_its_torch_model(llama, tmp_path):
    """Pruning and GQA regrouping work for decoders too; export validates them against torch."""
    _, directory = llama
    plan = HeadPlan.full(2, 4, 2, head_dim=16)
    plan.layers[1].kept_heads, plan.layers[1].kv_heads = [0, 1, 3], [0, 0, 1]  # uneven groups
    plan.save(tmp_path / "plan.json")
    result = export(str(directory / "hf"), tmp_path / "pruned.onnx",
                    transform=Transform(plan=HeadPlan.load(tmp_path / "plan.json"), retrieval=2, sink=2, recent=4))
    assert max(result.diffs.values()) < 1e-4
    # uneven query groups cannot run as GroupQueryAttention: that layer keeps the portable arithmetic
    assert "prefill attention of 1 of 2 layers left unfused" in result.manifest.extra["optimization_note"]
    tokens = edgert.Generator(tmp_path / "pruned.onnx").generate(prompts(2), 8, stop=())
    assert len(tokens) == 2 and all(len(row) == 8 for row in tokens)


def _group_query_attention_nodes(path) -> int:
    """GroupQueryAttention nodes in a graph, If branches included."""
    import onnx

    from edgert.exporters.optimize import count_ops

    return count_ops(onnx.load(str(path)), ["GroupQueryAttention"])["GroupQueryAttention"]


def test_prefill_attention_is_fused_for_onnxruntime_cpu_only(llama, tmp_path):
    """The default export runs prefill chunks through com.microsoft.GroupQueryAttention (one per
    layer here); --no-optimize keeps the portable graph; both give the same logits over a long
    prompt in several chunks and the same greedy tokens, batch of two (left padding) included."""
    _, directory = llama
    fused_manifest = edgert.load(directory / "full.onnx").manifest
    assert fused_manifest.extra["optimized_for"] == "onnxruntime-cpu"
    assert fused_manifest.extra["fusions"] == {"GroupQueryAttention": 4}  # per layer: with a bias, and causal
    assert _group_query_attention_nodes(directory / "full.onnx") == 4
    export(str(directory / "hf"), tmp_path / "portable.onnx", optimize=False)
    assert _group_query_attention_nodes(tmp_path / "portable.onnx") == 0
    assert edgert.load(tmp_path / "portable.onnx").manifest.extra["optimized_for"] is None
    # chunks: an eighth of the prompt within 512..2048 for the fused graph, 512 for the portable one
    assert [edgert.Generator(directory / "full.onnx").chunk_for(n) for n in (100, 8192, 50_000)] == [512, 1024, 2048]
    assert edgert.Generator(tmp_path / "portable.onnx").chunk_for(50_000) == 512
    fused = edgert.Generator(directory / "full.onnx", prefill_chunk=16)
    portable = edgert.Generator(tmp_path / "portable.onnx", prefill_chunk=16)
    assert fused.chunk_for(50_000) == 16
    prompt = np.random.default_rng(5).integers(0, 128, size=100).tolist()
    assert np.allclose(fused.next_token_logits(prompt, [1, 2, 3]), portable.next_token_logits(prompt, [1, 2, 3]),
                       atol=1e-4)
    assert fused.generate(prompts(2), 16, stop=()) == portable.generate(prompts(2), 16, stop=())


def test_threads_spin_unless_another_process_holds_a_core(llama, monkeypatch):
    import edgert.generator as generator_module

    _, directory = llama
    path = directory / "full.onnx"
    for busy, spins in ((0.0, True), (0.3, True), (1.0, False), (None, True)):
        monkeypatch.setattr(generator_module, "busy_cores", lambda busy=busy: busy)
        assert edgert.Generator(path, threads=generator_module.usable_cores()).spin is spins, busy
    assert edgert.Generator(path, threads=1, spin=True).spin is True  # asked for: not measured
    with pytest.raises(EdgertError, match="not both"):
        edgert.Generator(path, spin=False, options=edgert.session.session_options(1))


def test_sampling_is_seeded(llama):
    _, directory = llama
    generator = edgert.Generator(directory / "full.onnx")
    prompt = prompts(1)[0]
    first = generator.generate(prompt, 16, temperature=0.9, top_k=20, top_p=0.9, seed=3, stop=())
    assert first == generator.generate(prompt, 16, temperature=0.9, top_k=20, top_p=0.9, seed=3, stop=())
    assert list(generator.stream(prompt, 16, temperature=0.9, top_k=20, top_p=0.9, seed=3, stop=())) == first
    assert generator.generate(prompt, 16, top_k=1, temperature=5.0, seed=1, stop=()) == generator.generate(prompt, 16, stop=())


def test_stop_tokens_end_each_row(llama):
    _, directory = llama
    generator = edgert.Generator(directory / "full.onnx")
    batch_prompts = prompts(2)
    free = generator.generate(batch_prompts, 12, stop=())
    stop = free[0][3]
    stopped = generator.generate(batch_prompts, 12, stop=[stop])
    assert stopped[0] == free[0][:free[0].index(stop) + 1]
    assert stopped[1] == (free[1][:free[1].index(stop) + 1] if stop in free[1] else free[1])


def test_plan_windows_choose_heads_globally():
    plan = HeadPlan.full(4, 8, 2)
    quarter = plan.with_windows(0.25, 64, 256)
    assert quarter.retrieval_heads == 2
    assert [sum(p.kind == "full" for p in layer.cache) for layer in quarter.layers] == [1, 1, 0, 0]
    scored = plan.with_windows(3, 4, 8, scores=[[0, 0], [0, 9], [8, 7], [0, 0]])
    assert [[p.kind == "full" for p in layer.cache] for layer in scored.layers] == \
        [[False, False], [False, True], [True, True], [False, False]]
    with pytest.raises(PlanError, match="asks for 9 retrieval heads; the model has 8"):
        plan.with_windows(9, 64, 256)
    with pytest.raises(PlanError, match="recent >= 1"):
        plan.with_windows(1, 0, 0)


def test_mixed_windows_are_refused():
    plan = HeadPlan.full(1, 4, 2)
    plan.layers[0].cache = [CachePolicy("window", 2, 4), CachePolicy("window", 2, 8)]
    with pytest.raises(PlanError, match="same sink and recent"):
        CacheLayout.from_plan(plan, 16)


def test_generator_refuses_bad_requests(llama, tmp_path):
    _, directory = llama
    generator = edgert.Generator(directory / "full.onnx")
    for call, message in [
        (lambda: generator.generate([1, 2, 128], 4), "outside the vocabulary"),
        (lambda: generator.generate([-1], 4), "outside the vocabulary"),
        (lambda: generator.generate([1] * 600, 4), "prompt has 600 tokens; the limit is 512"),
        (lambda: generator.generate([1] * 500, 20), "exceeds the limit of 512"),
        (lambda: generator.generate([1, 2], 0), "max_new_tokens must be a whole number >= 1"),
        (lambda: generator.generate([], 3), "at least one token"),
        (lambda: generator.generate("hello", 3), "list of token ids"),
        (lambda: generator.generate([1, 2], 3, temperature=-1), "temperature"),
        (lambda: generator.generate([1, 2], 3, temperature=1, top_p=0), "top_p"),
        (lambda: generator.generate([1, 2], 3, temperature=1, top_k=0), "top_k"),
        (lambda: edgert.Generator(directory / "full.onnx", max_length=10_000), "exceeds the model's limit 512"),
    ]:
        with pytest.raises(EdgertError, match=message):
            call()


def test_generator_refuses_an_encoder(tmp_path):
    from conftest import make_embedding_model

    path = make_embedding_model(tmp_path / "encoder.onnx")
    with pytest.raises(EdgertError, match="is not a decoder exported by edgert"):
        edgert.Generator(path)


def test_runtime_imports_no_torch(llama):
    """Generation needs numpy + onnxruntime only."""
    import subprocess
    import sys

    _, directory = llama
    code = ("import sys, edgert; g = edgert.Generator(sys.argv[1]); g.generate([1, 2, 3], 4); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, str(directory / "full.onnx")], check=True)


def test_layer_cache_attention_equals_masked_attention():
    """HeadAttention over a cache object equals plain masked attention over the whole sequence."""
    from edgert.models.adapters import adapt, identity_plan
    from edgert.models.decoder import DecoderStep, order_for_cache

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                      initializer_range=0.3)
    reference = transformers.LlamaForCausalLM(config).eval()
    model = copy.deepcopy(reference)
    adapt(model)
    plan = order_for_cache(model, identity_plan(model))
    layout = CacheLayout.from_plan(plan, 16)
    step = DecoderStep(model, layout)
    ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :4] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    past_mask = torch.zeros(2, 1, dtype=torch.long)
    caches = [torch.zeros(2, 2, 1, 16) for _ in range(4)]
    with torch.no_grad():
        logits = step(ids, positions, mask, past_mask, *caches)[0]
        expected = reference(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1]
    assert torch.allclose(logits, expected, atol=1e-4)


@pytest.mark.slow
def test_sliding_window_caps_the_length(tmp_path):
    """Beyond Mistral's sliding window its full heads would attend further than the model does;
    the export caps max_length there and says so."""
    tiny_decoder(tmp_path / "hf", "mistral", sliding_window=100)
    result = export(str(tmp_path / "hf"), tmp_path / "m.onnx")
    assert result.manifest.decoder["max_length"] == 100
    assert "sliding window (100)" in result.manifest.extra["notes"][0]
    with pytest.raises(EdgertError, match="exceeds the limit of 100"):
        edgert.Generator(tmp_path / "m.onnx").generate(list(range(90)), 20)
