"""edgert.decode_memory: the peak memory of a generation, from the cache layout and head plan
alone (no model is run here; tests/test_generate_cli.py checks the estimate against a real
process and the refusals end to end)."""

import pytest

from edgert import CacheLayout, HeadPlan, InputError
from edgert.decode_memory import DecoderShape, GenerationMemory, check_fits, generation_memory


def memory(layout: CacheLayout, prompt: int, plan: HeadPlan | None = None, batch: int = 2) -> GenerationMemory:
    shape = DecoderShape.from_plan(layout, plan, vocab=128)
    return generation_memory(shape, batch=batch, prompt_tokens=prompt, capacity=prompt + 16, chunk=512)


def test_streaming_heads_hold_the_same_memory_for_any_prompt_length():
    """Streaming heads read their window and the chunk only: past the window a longer prompt
    adds prompt arrays, not cache or activations."""
    streaming = CacheLayout(head_dim=16, retrieval=(0, 0), streaming=(2, 2), sink=4, recent=60)
    short, long = memory(streaming, 1_000), memory(streaming, 100_000)
    assert (short.cache, short.activations) == (long.cache, long.activations)
    assert long.host > short.host
    full = CacheLayout(head_dim=16, retrieval=(2, 2), streaming=(0, 0))
    short, long = memory(full, 10_000), memory(full, 100_000)  # scores grow with the keys read
    assert long.cache > 9 * short.cache and long.activations > 9 * short.activations


def test_query_heads_come_from_the_plan():
    """4 query heads share each kv head: their scores count 4 times; without a plan only the
    kv heads are known, a floor."""
    layout = CacheLayout(head_dim=16, retrieval=(2, 1), streaming=(0, 1), sink=2, recent=5)
    plan = HeadPlan.full(2, 8, 2, head_dim=16)
    shape = DecoderShape.from_plan(layout, plan, vocab=128)
    assert (shape.retrieval_queries, shape.streaming_queries, shape.hidden) == ((8, 4), (0, 4), 128)
    floor = DecoderShape.from_plan(layout, None, vocab=128)
    assert (floor.retrieval_queries, floor.streaming_queries, floor.hidden) == ((2, 1), (0, 1), 32)
    assert memory(layout, 4000, plan).activations > 3 * memory(layout, 4000).activations


def test_check_fits_counts_what_the_process_will_reuse(monkeypatch):
    needed = GenerationMemory(cache=3 * 2**20, activations=5 * 2**20, host=2**20)
    monkeypatch.setattr("edgert.decode_memory.available_memory_bytes", lambda: 8 * 2**20)
    with pytest.raises(InputError, match=r"^batch 2 needs about 9\.0 MiB \(KV cache 3\.0 MiB, prefill activations "
                                         r"about 5\.0 MiB, prompt and cache copies 1\.0 MiB\), more than the 8\.0 MiB"):
        check_fits(needed, "batch 2")
    check_fits(needed, "batch 2", reusable=2**20)  # e.g. the last generation's cache, freed first
    monkeypatch.setattr("edgert.decode_memory.available_memory_bytes", lambda: None)
    check_fits(needed, "batch 2")  # no /proc/meminfo: nothing to check against


def test_a_fused_graph_holds_no_scores():
    """Prefill attention fused into GroupQueryAttention writes no [heads, chunk, keys] scores: at
    32k tokens its working set is a fraction of the materialising graph's, and chunks of 2048
    fit where the scores of 512-token chunks would not."""
    layout = CacheLayout(head_dim=64, retrieval=(2,) * 8, streaming=(0,) * 8)
    plan = HeadPlan.full(8, 8, 2, head_dim=64)

    def activations(fused: bool, chunk: int) -> int:
        shape = DecoderShape.from_plan(layout, plan, vocab=32000, fused=fused)
        return generation_memory(shape, batch=1, prompt_tokens=32768, capacity=32800, chunk=chunk).activations

    assert activations(True, 512) < activations(False, 512) / 4
    assert activations(True, 2048) < activations(False, 512)
