"""What one generation with an edgert decoder holds in memory at its peak, estimated from
the manifest before anything is allocated, and the check against the memory available.

The peak is the last prefill chunk: `chunk` new tokens attend to the whole prompt. Per layer
(ONNX Runtime runs them one after the other) the graph's chunk branch (models/attention.py)
holds the scores [batch, query heads, chunk, keys] float32 three times (the product of
queries and keys, its masked copy and the softmax probabilities; a tensor is freed only after
its last reader) and the keys and values concatenated with the new ones; a graph whose
prefill attention is fused (GroupQueryAttention, the ONNX Runtime CPU export) holds no scores,
only the keys and values it copies into its present outputs. Across the step it
holds the additive masks [batch, 1, chunk, keys] (the expanded past mask and its
concatenation with the new tokens' one), the hidden states and MLP activations, every
layer's new keys and values and the logits. ONNX Runtime's CPU arena keeps what a run took
and grows by doubling, so after a few prefills of varying length a process holds up to
about twice one run's working set (measured with tiny-lm, 1 to 32 sequences of 512 to
4000 tokens: 1.3 to 2x the first run); ARENA_GROWTH counts it. Around each step numpy holds
the prompt arrays and a contiguous copy of the retrieval cache's written slots.

Measured after three prefills (tiny-lm and the tests' tiny decoder, 1 to 200 sequences of 200
to 4000 tokens, chunks of 64 to 512), the estimate is 1.1 to 1.8 times the growth of the
process's resident set: an upper estimate, so a generation that passes the check runs within
memory, also in a loop such as `edgert eval passkey`.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgert.errors import InputError
from edgert.kv_cache import CacheLayout
from edgert.memory import available_memory_bytes, format_bytes
from edgert.plan import HeadPlan

FLOAT = 4  # bytes of a float32: scores, activations and caches are float32
INDEX = 8  # bytes of an int64: token ids, positions, masks
SCORE_COPIES = 3  # scores, masked scores, softmax probabilities: live together in one layer
MASK_COPIES = 2  # the expanded past mask and its concatenation with the new tokens' mask
# Hidden-sized tensors [batch, chunk, hidden] live at the MLP's peak: the residual stream and
# its normalized copy, then gate, up, act(gate) and their product at MLP_WIDTH x hidden each.
MLP_WIDTH = 4  # Llama-family intermediate sizes are 2.7-5.4x hidden; the manifest has no figure
HIDDEN_COPIES = 2 + 4 * MLP_WIDTH
ARENA_GROWTH = 2  # ONNX Runtime's CPU arena: held memory after repeated runs / one run's working set
# A prompt row kept as a Python list (the Generator takes lists): the int64 array it is drawn
# into, a list slot and an int object per id, and the Generator's checked copy of the list.
PROMPT_LIST_BYTES_PER_TOKEN = 8 + (8 + 32) + 8
PROMPT_ARRAYS = 4  # ids, mask, positions and the cumulative sum positions come from [batch, longest]


@dataclass(frozen=True)
class DecoderShape:
    """The sizes of an exported decoder that its memory depends on: the cache layout, per
    layer the query heads that read retrieval (full) and streaming kv heads, the hidden size
    and the vocabulary."""

    layout: CacheLayout
    retrieval_queries: tuple[int, ...]
    streaming_queries: tuple[int, ...]
    hidden: int
    vocab: int
    fused: bool = False  # prefill attention fused (GroupQueryAttention): no score matrices

    @classmethod
    def from_plan(cls, layout: CacheLayout, plan: HeadPlan | None, vocab: int, *, fused: bool = False) -> DecoderShape:
        """The shape of a decoder whose manifest holds `plan` (kv heads ordered retrieval
        first, as export writes it). Without a usable plan every kv head is taken to serve one
        query head and the hidden size to be the largest layer's heads x head_dim (floors)."""
        layers = plan.layers if plan is not None else []
        if plan is None or plan.head_dim is None or len(layers) != layout.num_layers or any(
                layer.num_kv_heads != r + s for layer, r, s in zip(layers, layout.retrieval, layout.streaming)):
            heads = [r + s for r, s in zip(layout.retrieval, layout.streaming)]
            return cls(layout, layout.retrieval, layout.streaming, max(heads) * layout.head_dim, vocab, fused)
        retrieval = tuple(sum(1 for kv in layer.kv_heads if kv < r) for layer, r in zip(layers, layout.retrieval))
        streaming = tuple(len(layer.kv_heads) - q for layer, q in zip(layers, retrieval))
        hidden = max(layer.num_heads for layer in layers) * plan.head_dim
        return cls(layout, retrieval, streaming, hidden, vocab, fused)


@dataclass(frozen=True)
class GenerationMemory:
    """Bytes one generation holds at its peak, by part: the KV cache buffers, ONNX Runtime's
    working set during the last prefill chunk (arena growth included), and the numpy arrays
    around each step (prompt arrays, the cache's compact copy, prompt lists not yet made)."""

    cache: int
    activations: int
    host: int

    @property
    def total(self) -> int:
        return self.cache + self.activations + self.host

    def describe(self) -> str:
        """`KV cache 1.0 GiB, prefill activations about 2.0 GiB, prompt and cache copies 1.0 MiB`."""
        return (f"KV cache {format_bytes(self.cache)}, prefill activations about "
                f"{format_bytes(self.activations)}, prompt and cache copies {format_bytes(self.host)}")


def generation_memory(shape: DecoderShape, *, batch: int, prompt_tokens: int, capacity: int,
                      chunk: int, prompt_lists: bool = False) -> GenerationMemory:
    """The peak memory of one generation: `batch` prompts of up to `prompt_tokens` tokens
    prefilled `chunk` tokens per run, into a cache of `capacity` tokens per row (prompt +
    new tokens). prompt_lists: the prompts are still to be made as Python lists."""
    layout, d = shape.layout, shape.layout.head_dim
    chunk = min(chunk, prompt_tokens)
    window = layout.window + chunk  # keys a streaming head reads: its window and the new tokens
    scored = 0 if shape.fused else 1  # a fused graph never writes the scores (a layer left unfused is rare)
    per_layer = max(
        scored * SCORE_COPIES * FLOAT * batch * chunk * (q_r * prompt_tokens + q_s * window)
        + 2 * FLOAT * batch * d * (r * prompt_tokens + s * window)  # keys and values concatenated
        for q_r, q_s, r, s in zip(shape.retrieval_queries, shape.streaming_queries,
                                  layout.retrieval, layout.streaming))
    mask_keys = (prompt_tokens if any(layout.retrieval) else 0) + (window if any(layout.streaming) else chunk)
    masks = MASK_COPIES * FLOAT * batch * chunk * mask_keys
    hidden = HIDDEN_COPIES * FLOAT * batch * chunk * shape.hidden
    kv_heads = sum(layout.retrieval) + sum(layout.streaming)
    outputs = 2 * FLOAT * batch * (chunk * kv_heads * d + shape.vocab)  # new keys and values, logits
    activations = ARENA_GROWTH * (per_layer + masks + hidden + outputs)
    compact = 2 * FLOAT * batch * sum(layout.retrieval) * prompt_tokens * d
    host = PROMPT_ARRAYS * INDEX * batch * prompt_tokens + compact
    if prompt_lists:
        host += PROMPT_LIST_BYTES_PER_TOKEN * batch * prompt_tokens
    return GenerationMemory(layout.cache_bytes(batch, capacity), activations, host)


def check_fits(memory: GenerationMemory, what: str, *, reusable: int = 0) -> None:
    """InputError when `memory` exceeds the memory available now plus `reusable` (what the
    process holds already and will reuse, e.g. the previous cache, which is freed first).
    `what` names the generation, e.g. `batch 8 x 4000 + 16 tokens`."""
    available = available_memory_bytes()
    if available is None or memory.total <= available + reusable:
        return
    shown = available + reusable
    raise InputError(f"{what} needs about {format_bytes(memory.total)} ({memory.describe()}), more than "
                     f"the {format_bytes(shown)} of memory available; use a smaller batch or a shorter "
                     "prompt")
