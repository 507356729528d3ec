"""The decoder recipe: a Llama-family causal LM (llama, qwen2, mistral; GQA from config.json)
→ one text-generation graph that runs S new tokens over a per-head KV cache.

Prefill and decode are the same graph with dynamic lengths: the runtime prefills in chunks
(each chunk attends to the cache and to itself) and decodes one token at a time. The heads
are transformed as for encoders (plan, pruning, GQA, softmax, gates), then each layer's kv
heads are reordered retrieval first (models/decoder.py) and the cache layout goes into the
manifest for edgert.Generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transformers import AutoModelForCausalLM

import edgert
from edgert.errors import OptionError
from edgert.exporters.heads import Transform, apply_transform, read_gates
from edgert.exporters.hf_loading import load_config, load_pretrained, read_tokenizer
from edgert.exporters.importance import next_token_loss
from edgert.exporters.optimize import ORT_CPU, Optimization
from edgert.exporters.recipe import Prepared, Step, TextOptions
from edgert.exporters.text_calibration import TorchInputs, calibration_samples
from edgert.kv_cache import (ATTENTION_MASK, INPUT_IDS, PAST_MASK, POSITION_IDS, WINDOW_POSITIONS,
                             CacheLayout)
from edgert.models.adapters import head_attentions, model_shape
from edgert.models.decoder import DecoderStep, order_for_cache
from edgert.models.sources import ModelSource
from edgert.plan import HeadPlan, Manifest

TASK = "text-generation"


@dataclass
class LoadedDecoder:
    """A causal LM in eval mode plus what the exporter and runtime need to know about it."""

    model: object  # transformers *ForCausalLM
    model_type: str
    num_layers: int
    vocab_size: int
    max_length: int
    tokenizer_json: str | None
    special_tokens: dict[str, object]  # bos_token_id, eos_token_ids, pad_token_id
    notes: list[str]

    def calibration_inputs(self, name: str) -> TorchInputs:
        return TorchInputs([INPUT_IDS, ATTENTION_MASK], name, self.tokenizer_json, self.max_length)


def load(source: ModelSource) -> LoadedDecoder:
    """Load a causal LM from a local Hugging Face directory (offline)."""
    config = load_config(source, "decoder")
    model = load_pretrained(AutoModelForCausalLM, source)
    max_length, notes = config.max_position_embeddings, []
    window = _sliding_window(config)
    if window is not None and window < max_length:
        # Beyond its sliding window the model attends to a window edgert's full heads would
        # not reproduce; capping the length keeps every export exact.
        max_length = window
        notes.append(f"max_length capped at the model's sliding window ({window})")
    tokenizer_json, _ = read_tokenizer(source)
    eos = config.eos_token_id
    special = {"bos_token_id": config.bos_token_id,
               "eos_token_ids": [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos],
               "pad_token_id": config.pad_token_id}
    return LoadedDecoder(model, config.model_type, config.num_hidden_layers, config.vocab_size,
                         max_length, tokenizer_json, special, notes)


def _sliding_window(config) -> int | None:
    window = getattr(config, "sliding_window", None)
    if config.model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        return None
    return window


def prepare(source: ModelSource, task: str | None, options: TextOptions, step: Step) -> Prepared:
    """Load, transform the heads of, reorder the kv heads of, and wrap a decoder for tracing."""
    if task not in (None, TASK):
        raise OptionError(f"a decoder exports as {TASK}, not {task!r}")
    decoder = load(source)
    plan = _transform_heads(decoder, source, options, step).check(max_length=decoder.max_length)
    plan = order_for_cache(decoder.model, plan)
    if note := use_headwise_node(decoder.model):
        decoder.notes.append(note)
    layout = CacheLayout.from_plan(plan, model_shape(decoder.model).head_dim)
    module = DecoderStep(decoder.model, layout).eval()
    input_names, output_names = layout.input_names(), layout.output_names()
    manifest = Manifest(
        edgert_version=edgert.__version__, source=source.name, task=TASK, opset=0,
        inputs={INPUT_IDS: "input_ids", POSITION_IDS: "position_ids", ATTENTION_MASK: "attention_mask"},
        dims={"batch": "batch", "sequence": "sequence", "past": "past_sequence"},
        text={"max_length": decoder.max_length, "vocab_size": decoder.vocab_size}
        if decoder.tokenizer_json else None,
        plan=plan,
        extra={"model_type": decoder.model_type, "notes": decoder.notes},
        decoder={"cache": layout.to_dict(), "max_length": decoder.max_length,
                 "vocab_size": decoder.vocab_size, **decoder.special_tokens},
    )
    dynamic = {name: _dynamic_axes(name) for name in input_names}
    trace = step_inputs(layout, decoder.vocab_size, batch=2, seq=3, past=5, seed=0)
    checks = [step_inputs(layout, decoder.vocab_size, batch=b, seq=s, past=c, seed=b + s)
              for b, s, c in ((1, 1, 7), (3, 4, 2), (2, 6, 9))]
    return Prepared(module, input_names, output_names, dynamic, trace, checks, manifest,
                    decoder.tokenizer_json, fuse_before_trace=lambda: fuse_prefill_attention(decoder.model))


def use_headwise_node(model) -> str | None:
    """Have every layer whose query heads come in even groups attend over its cache through
    edgert::headwise_attention (one edgert::HeadwiseAttention node per layer); return a note
    naming the layers left as plain ONNX ops, if any."""
    attentions = head_attentions(model)
    for attention in attentions:
        attention.headwise_node = attention.even_groups
    left = sum(not a.headwise_node for a in attentions)
    return (f"cache attention of {left} of {len(attentions)} layers left as plain ONNX ops, not "
            "edgert::HeadwiseAttention (query heads in uneven groups)") if left else None


def fuse_prefill_attention(model) -> Optimization:
    """Have every layer that can run its prefill chunks' attention as edgert::prefill_attention
    (exported as com.microsoft.GroupQueryAttention); the one-token decode step keeps its own
    arithmetic. Returns the Optimization for the manifest (fusions are counted in the graph)."""
    attentions = head_attentions(model)
    fused = [a for a in attentions if a.fused_prefill_applies]
    for attention in fused:
        attention.fused_prefill = True
    left = len(attentions) - len(fused)
    note = (f"prefill attention of {left} of {len(attentions)} layers left unfused (clipped softmax or "
            "query heads in uneven groups)") if left else None
    return Optimization(ORT_CPU, {"GroupQueryAttention": 0}, note)


def _transform_heads(decoder: LoadedDecoder, source: ModelSource, options: TextOptions,
                     step: Step) -> HeadPlan:
    """Adapt decoder.model in place to the requested transform (identity when none)."""
    gates = read_gates(source.directory, decoder.num_layers)
    transform = options.transform or Transform()
    samples = []
    if transform.needs_calibration:
        samples = calibration_samples(decoder.calibration_inputs(source.name), source, options.calib,
                                      options.calib_size, step)
    step("heads")
    return apply_transform(decoder.model, transform, samples, loss=next_token_loss, gates=gates)


def _dynamic_axes(name: str) -> dict[int, str]:
    if name in (INPUT_IDS, POSITION_IDS, ATTENTION_MASK):
        return {0: "batch", 1: "sequence"}
    if name == PAST_MASK:
        return {0: "batch", 1: "past"}
    if ".retrieval." in name:
        return {0: "batch", 2: "past"}
    return {0: "batch"}  # window_positions and streaming caches: the window is fixed


def step_inputs(layout: CacheLayout, vocab_size: int, *, batch: int, seq: int, past: int,
                seed: int) -> dict[str, np.ndarray]:
    """Random but well-formed inputs of one step: the last row left-padded, `past` retrieval
    slots (some empty), a partly filled window, random cached keys and values."""
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    if batch > 1 and seq > 1:
        mask[-1, : seq // 2] = 0
    positions = np.where(mask > 0, past + np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)
    feeds = {INPUT_IDS: rng.integers(0, vocab_size, (batch, seq), dtype=np.int64),
             POSITION_IDS: positions, ATTENTION_MASK: mask}
    if any(layout.retrieval):
        past_mask = (rng.random((batch, past)) < 0.8).astype(np.int64)
        past_mask[:, 0] = 1
        feeds[PAST_MASK] = past_mask
    if any(layout.streaming):
        filled = min(past, layout.window)
        slots = np.full((batch, layout.window), -1, np.int64)
        slots[:, :filled] = rng.permutation(past)[:filled]
        feeds[WINDOW_POSITIONS] = slots
    for name in layout.input_names():
        if name.startswith("past."):
            layer, part = int(name.split(".")[1]), name.split(".")[2]
            heads = layout.retrieval[layer] if part == "retrieval" else layout.streaming[layer]
            length = past if part == "retrieval" else layout.window
            feeds[name] = rng.standard_normal((batch, heads, length, layout.head_dim)).astype(np.float32)
    return feeds
