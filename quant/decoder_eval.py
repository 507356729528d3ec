"""Decoders (text-generation graphs) under `edgert quantize`: held-out prompts, next-token
agreement and KL divergence against FP32, calibration feeds recorded from FP32 generation,
and per-token decode latency.

Accuracy: FP32 greedily continues each held-out prompt by CONTINUATION tokens; both models
are then teacher-forced along that same continuation (`Generator.next_token_logits`), so
they predict at the same positions from the same tokens. Top-1 agreement is the fraction of
positions whose argmaxes agree; KL is KL(p_fp32 || p_int8) of the softmaxed logits, in nats,
averaged over positions (and its maximum).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgert.errors import CalibrationError, EdgertError, OptionError
from edgert.generator import TASK, Generator
from edgert.kv_cache import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, CacheLayout, KVCache
from edgert.plan import TOKENIZER_KEY
from edgert.latency import LatencyStats
from edgert.quant.calib import load_prompts
from edgert.session import Session, session_options

METRICS = ("top1", "kl")
HELDOUT_PROMPTS = 8
CONTINUATION = 16  # FP32 greedy tokens per held-out prompt; positions compared = CONTINUATION + 1
RANDOM_PROMPT_TOKENS = 32
# Llama-style vocabularies keep ids 0-2 for unknown / begin / end of sequence: random prompts
# stay clear of them, as real text does.
FIRST_ORDINARY_ID = 3
HELDOUT_SEED, CALIB_SEED, SPEED_SEED = 0, 1, 2
CALIB_DECODE_STEPS = 7  # one prefill feed + this many one-token feeds per calibration prompt
# Bundled text is used only when the model's tokenizer knows most of its words (a word-level
# test tokenizer maps English to its unknown token).
MAX_UNKNOWN_FRACTION = 0.5
# Without a guard, candidates whose mean KL is within this factor of the best count as equally
# accurate. KL grows with the power of the logit error, so 10^0.1 matches encoders' 1 dB of SQNR.
KL_TOLERANCE = 10 ** 0.1
SPEED_CONTEXT, SPEED_NEW_TOKENS, SPEED_ROUNDS = 128, 16, 3


def is_decoder(session: Session) -> bool:
    """Whether `session` holds a text-generation graph edgert.Generator runs."""
    manifest = session.manifest
    return manifest is not None and manifest.task == TASK and bool(manifest.decoder)


@dataclass
class DecoderAccuracy:
    """Next-token agreement of a decoder with FP32 along FP32's greedy continuations.

    top1: fraction of positions where both argmaxes agree; kl_mean / kl_max: KL(p_fp32 ||
    p_int8) in nats over positions; positions: how many were compared (prompts x
    (CONTINUATION + 1)).
    """

    top1: float
    kl_mean: float
    kl_max: float
    positions: int

    tolerance = f"{KL_TOLERANCE:.2f}x KL"

    def value(self, metric: str) -> float:
        """The guard's number: `top1` → agreement, `kl` → mean KL."""
        return self.top1 if metric == "top1" else self.kl_mean

    @property
    def score(self) -> float:
        """Higher is more accurate: minus the mean KL."""
        return -self.kl_mean

    def close_to(self, best: DecoderAccuracy) -> bool:
        """As accurate as `best` for choosing a kernel: mean KL within KL_TOLERANCE of it."""
        return self.kl_mean <= best.kl_mean * KL_TOLERANCE + 1e-12

    def columns(self) -> dict[str, str]:
        """Table columns for the CLI: header → formatted value."""
        return {"top-1 agreement": f"{self.top1:.4f}", "KL mean": f"{self.kl_mean:.4f}",
                "KL max": f"{self.kl_max:.4f}"}

    def summary(self, metric: str | None = None) -> str:
        """Agreement and KL in words (whatever the guard's metric)."""
        return (f"top-1 agreement {self.top1:.4f}, KL mean {self.kl_mean:.4f} (max {self.kl_max:.4f}) "
                f"over {self.positions} positions")


@dataclass
class DecodeSpeed:
    """Per-token decode latency of FP32 and INT8 after a prompt of `context` tokens."""

    fp32_ms: LatencyStats
    int8_ms: LatencyStats
    context: int
    new_tokens: int

    @property
    def speedup(self) -> float:
        return self.fp32_ms.p50 / self.int8_ms.p50

    @property
    def timed_at(self) -> dict[str, object]:
        return {"context": self.context, "new_tokens": self.new_tokens, "per": "token"}

    @property
    def what(self) -> str:
        """What was timed, for the CLI."""
        return f"decode latency p50 per token at context {self.context} ({self.new_tokens} new tokens)"


def decoder_prompts(session: Session, path: str | os.PathLike | None, *, count: int, seed: int,
                    bundled: Path, role: str) -> tuple[list[list[int]], str]:
    """Up to `count` prompts (token-id lists) and where they came from: `path` (.txt tokenized
    with the model's tokenizer, or .npz with input_ids), else the `bundled` text when the
    model's tokenizer knows its words, else random ids in [FIRST_ORDINARY_ID, vocab) drawn with
    `seed`. Prompts are cut to leave room for CONTINUATION generated tokens."""
    decoder = session.manifest.decoder
    vocab, max_length = int(decoder["vocab_size"]), int(decoder["max_length"])
    room = max_length - CONTINUATION
    if room < 1:
        raise CalibrationError(f"the model's max_length {max_length} leaves no room for a prompt "
                               f"and {CONTINUATION} generated tokens")
    if path is not None:
        prompts, source = load_prompts(path, session, size=count, role=role), str(path)
    else:
        prompts = _bundled_prompts(session, bundled, count)
        source = f"{bundled} (tokenized)"
        if prompts is None:
            length = min(RANDOM_PROMPT_TOKENS, room)
            rng = np.random.default_rng(seed)
            low = FIRST_ORDINARY_ID if vocab > FIRST_ORDINARY_ID else 0
            prompts = rng.integers(low, vocab, (count, length)).tolist()
            source = f"{count} prompts of {length} random token ids in [{low}, {vocab}) (seed {seed})"
    outside = [t for p in prompts for t in p if not 0 <= t < vocab]
    if outside:
        raise CalibrationError(f"{role} {path}: token id {outside[0]} is outside the vocabulary [0, {vocab})")
    return [p[:room] for p in prompts], source


def _bundled_prompts(session: Session, bundled: Path, count: int) -> list[list[int]] | None:
    """The bundled text as prompts when the model carries a tokenizer that knows its words."""
    if TOKENIZER_KEY not in session.metadata:
        return None
    try:
        prompts = load_prompts(bundled, session, size=count, role="bundled text")
    except EdgertError:  # e.g. `tokenizers` is not installed
        return None
    unknown = _unknown_id(session.metadata[TOKENIZER_KEY])
    tokens = [t for p in prompts for t in p]
    if unknown is not None and tokens and tokens.count(unknown) > MAX_UNKNOWN_FRACTION * len(tokens):
        return None
    return prompts


def _unknown_id(tokenizer_json: str) -> int | None:
    """The id of the tokenizer's unknown token, None if it has none (byte-level BPE)."""
    try:
        model = json.loads(tokenizer_json).get("model") or {}
    except (ValueError, AttributeError):
        return None
    if isinstance(model.get("unk_id"), int):  # Unigram
        return model["unk_id"]
    vocab, token = model.get("vocab"), model.get("unk_token")
    return vocab.get(token) if isinstance(vocab, dict) and token is not None else None


def calibration_feeds(session: Session, prompts: Sequence[Sequence[int]], *, limit: int,
                      steps: int = CALIB_DECODE_STEPS) -> list[dict[str, np.ndarray]]:
    """Graph feeds recorded while FP32 (`session`) greedily generates after each prompt: one
    prefill feed, then `steps` one-token feeds over the growing KV cache, until `limit`
    feeds. These are what the graph sees at run time, so activation statistics and static
    calibration ranges cover both prefill and decode."""
    layout = CacheLayout.from_dict(session.manifest.decoder["cache"])
    feeds_out: list[dict[str, np.ndarray]] = []
    for prompt in prompts:
        cache = KVCache(layout, 1, len(prompt) + steps)
        ids = np.asarray([prompt], np.int64)
        positions = np.arange(len(prompt), dtype=np.int64)[None]
        for _ in range(steps + 1):
            if len(feeds_out) >= limit:
                return feeds_out
            mask = np.ones_like(ids)
            feeds = {INPUT_IDS: ids, POSITION_IDS: positions, ATTENTION_MASK: mask, **cache.feeds(compact=True)}
            # copies: the cache buffers are written in place by the next append
            feeds_out.append({name: np.array(value, copy=True) for name, value in feeds.items()})
            outputs = dict(zip(session.output_names, session.run_unchecked(feeds)))
            cache.append(outputs, positions, mask)
            ids = outputs[LOGITS].argmax(axis=-1).reshape(1, 1).astype(np.int64)
            positions = positions[:, -1:] + 1
    return feeds_out


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


class DecoderEvaluation:
    """Accuracy and speed of INT8 candidates of a decoder against its FP32 graph. FP32's
    continuations and log-probabilities are computed once, here."""

    def __init__(self, model: Path, prompts: Sequence[Sequence[int]], *, threads: int | None) -> None:
        self.model, self.threads = Path(model), threads
        self.prompts = [list(p) for p in prompts]
        reference = Generator(model, threads=threads)
        self.continuations = [reference.generate(p, CONTINUATION, stop=()) for p in self.prompts]
        # float32 halves what is held for large vocabularies; KL is summed in float64
        self.log_probs = [_log_softmax(reference.next_token_logits(p, c)).astype(np.float32)
                          for p, c in zip(self.prompts, self.continuations)]

    def open(self, path: Path) -> Path:
        """Candidates are opened by accuracy() and speeds() themselves (as Generators)."""
        return path

    def accuracy(self, candidate: Path) -> DecoderAccuracy:
        generator = Generator(candidate, threads=self.threads)
        agree, divergences = [], []
        for prompt, continuation, want in zip(self.prompts, self.continuations, self.log_probs):
            got = _log_softmax(generator.next_token_logits(prompt, continuation))
            want = want.astype(np.float64)
            agree.append(want.argmax(axis=-1) == got.argmax(axis=-1))
            divergences.append((np.exp(want) * (want - got)).sum(axis=-1))
        agree_all, kl = np.concatenate(agree), np.concatenate(divergences)
        return DecoderAccuracy(float(agree_all.mean()), float(kl.mean()), float(kl.max()), int(kl.size))

    def speeds(self, candidates: Sequence[Path]) -> list[DecodeSpeed]:
        return decode_speeds(self.model, candidates, threads=self.threads)


def _timing_generator(path: Path, threads: int | None) -> Generator:
    """A Generator whose idle intra-op threads do not spin: generators that take turns on the
    same cores would otherwise slow each other down."""
    return Generator(path, options=session_options(threads, spin=False))


def decode_speeds(reference: str | os.PathLike, candidates: Sequence[str | os.PathLike], *,
                  threads: int | None = None, context: int = SPEED_CONTEXT,
                  new_tokens: int = SPEED_NEW_TOKENS, rounds: int = SPEED_ROUNDS,
                  warmup: int = 1) -> list[DecodeSpeed]:
    """Per-token decode latency of each candidate against the FP32 `reference`: each
    generates `new_tokens` greedy tokens after the same random prompt of `context` tokens
    (capped to fit the model), `rounds` times, the models taking turns (the first one
    rotating). A token's time is the gap between two tokens of Generator.stream, so the
    prefill is left out."""
    if new_tokens < 2:
        raise OptionError(f"decode timing needs at least 2 new tokens (one gap), got {new_tokens}")
    generators = [_timing_generator(Path(p), threads) for p in (reference, *candidates)]
    first = generators[0]
    context = max(1, min(context, first.max_length - new_tokens))
    low = FIRST_ORDINARY_ID if first.vocab_size > FIRST_ORDINARY_ID else 0
    prompt = np.random.default_rng(SPEED_SEED).integers(low, first.vocab_size, context).tolist()

    def token_seconds(generator: Generator) -> list[float]:
        gaps, last = [], None
        for _ in generator.stream(prompt, new_tokens, stop=()):
            now = time.perf_counter()
            if last is not None:
                gaps.append(now - last)
            last = now
        generator.reset()
        return gaps

    for generator in generators:
        for _ in range(warmup):
            token_seconds(generator)
    samples: list[list[float]] = [[] for _ in generators]
    for round_index in range(rounds):
        for k in range(len(generators)):
            i = (round_index + k) % len(generators)
            samples[i] += token_seconds(generator=generators[i])
    fp32 = LatencyStats.from_seconds(samples[0])
    return [DecodeSpeed(fp32, LatencyStats.from_seconds(s), context, new_tokens) for s in samples[1:]]


def check_static_feeds(method: str) -> None:
    """Histogram calibrators need feeds of one shape; a decoder's feeds grow by a token per step."""
    if method != "minmax":
        raise CalibrationError(f"static INT8 of a decoder calibrates with minmax only (--method minmax): "
                               f"{method} needs calibration feeds of one shape, and a decoder's grow "
                               "with its KV cache")
