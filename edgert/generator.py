"""Generator: text generation with an edgert decoder graph and its per-head KV cache,
on numpy + ONNX Runtime only.

The prompt is prefilled in chunks (each chunk attends to the cache and to itself, so memory
for attention scores stays bounded at long contexts), then tokens are decoded one at a time.
Caches are allocated once per call, sized for prompt + max_new_tokens (edgert/kv_cache.py
has the layout and how RoPE positions of kept keys are handled), once the cache and the
prefill's working set are known to fit in the memory available (edgert/decode_memory.py).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from edgert.checks import finite_number, shown_value, whole_number
from edgert.decode_memory import DecoderShape, GenerationMemory, check_fits, generation_memory
from edgert.errors import EdgertError, InputError, ModelLoadError, OptionError, first_line, shown_path
from edgert.kv_cache import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, CacheLayout, KVCache
from edgert.plan import TOKENIZER_KEY
from edgert.session import Session, busy_cores, check_threads, session_options, usable_cores
from edgert.text import generation_tokenizer

TASK = "text-generation"
# Prefill chunk of a graph that writes attention scores [heads, chunk, context]: long enough to
# keep matrix multiplies efficient, short enough that the scores stay small at 32k contexts.
PREFILL_CHUNK = 512
# A graph whose prefill attention is fused (GroupQueryAttention, never writing the scores)
# takes chunks of an eighth of the prompt within these bounds. Measured on the decode
# benchmark's 55M Llama (2-core Xeon, 2 threads): 512 was best at 1k, 512-1024 alike at 4k,
# 2048 best at 16k (17.3 s against 19.4 s with 512); 4096 was slower at 4k (the graph's
# [chunk, chunk] masks).
FUSED_CHUNK_RANGE = (512, 2048)


class Generator:
    """Generate tokens with a decoder exported by `edgert export`.

    device, threads: as for edgert.load. max_length: the longest prompt + generation this
    generator allows (default and upper bound: the model's own limit). prefill_chunk: prompt
    tokens per graph run (default: PREFILL_CHUNK, or for a graph with fused prefill attention
    an eighth of the prompt within FUSED_CHUNK_RANGE). spin: whether ONNX Runtime's idle
    threads busy-wait; None decides when the generator is made (_spin_policy: not when other
    processes keep a core busy). options: an onnxruntime.SessionOptions instead of threads and
    spin (build it with edgert.session.session_options to keep edgert's settings).
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                 max_length: int | None = None, *, prefill_chunk: int | None = None,
                 spin: bool | None = None, options=None):
        if options is None:
            threads = check_threads(threads)
            if spin is None:
                spin = _spin_policy(threads)
            options = session_options(threads, spin=spin)
        elif threads is not None or spin is not None:
            raise OptionError("give threads and spin, or options, not both")
        self.spin = spin
        self.session = Session(path, device=device, options=options)
        manifest = self.session.manifest
        if manifest is None or manifest.task != TASK or not manifest.decoder:
            task = manifest.task if manifest else "no edgert manifest"
            raise ModelLoadError(f"{shown_path(self.session.path)} is not a decoder exported by edgert "
                                 f"({task}); Generator needs `edgert export` of a Llama, Qwen2 or "
                                 "Mistral model")
        decoder = manifest.decoder
        self.layout = CacheLayout.from_dict(decoder.get("cache"))
        if self.session.input_names != self.layout.input_names():
            raise ModelLoadError(f"{shown_path(self.session.path)}: graph inputs do not match its cache layout")
        self.vocab_size = _positive(decoder.get("vocab_size"), "manifest decoder.vocab_size", ModelLoadError)
        self.model_max_length = _positive(decoder.get("max_length"), "manifest decoder.max_length", ModelLoadError)
        self.max_length = self.model_max_length if max_length is None else _positive(max_length, "max_length")
        if self.max_length > self.model_max_length:
            raise OptionError(f"max_length {self.max_length} exceeds the model's limit {self.model_max_length}")
        self.prefill_chunk = None if prefill_chunk is None else _positive(prefill_chunk, "prefill_chunk")
        self.fused_prefill = bool((manifest.extra.get("fusions") or {}).get("GroupQueryAttention"))
        if self.layout.window > self.model_max_length:
            raise ModelLoadError(f"{shown_path(self.session.path)}: its streaming window ({self.layout.window} "
                                 f"tokens) is longer than its max_length ({self.model_max_length})")
        self.eos_token_ids = list(decoder.get("eos_token_ids") or [])  # integers: Manifest checked them
        self._output_names = self.session.output_names
        self._cache: KVCache | None = None
        self._shape = DecoderShape.from_plan(self.layout, manifest.plan, self.vocab_size, fused=self.fused_prefill)
        # the largest prefill working set this session has run: ONNX Runtime's arena keeps it
        self._arena_bytes = 0
        self._tokenizer = None

    @property
    def has_tokenizer(self) -> bool:
        return TOKENIZER_KEY in self.session.metadata

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text` by the model's own tokenizer (never truncated); with
        add_special_tokens, the ids the tokenizer adds around a whole text (e.g. BOS) too."""
        if not isinstance(text, str):
            raise InputError(f"text must be a string, got {type(text).__name__}")
        try:
            return self._codec().encode(text, add_special_tokens=add_special_tokens).ids
        except EdgertError:
            raise
        except Exception as exc:  # e.g. lone surrogates the Rust side cannot encode
            raise InputError(f"cannot tokenize the text: {first_line(exc)}") from None

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Text of `token_ids` by the model's own tokenizer."""
        tokens = self._known_ids(token_ids, "token_ids")
        if not isinstance(skip_special_tokens, bool):
            raise OptionError(f"skip_special_tokens must be True or False, got {shown_value(skip_special_tokens)}")
        return self._codec().decode(tokens, skip_special_tokens=skip_special_tokens)

    def _codec(self):
        if self._tokenizer is None:
            if not self.has_tokenizer:
                raise InputError(f"{shown_path(self.session.path.name)} carries no tokenizer; "
                                 "give token ids instead")
            self._tokenizer = generation_tokenizer(self.session.metadata[TOKENIZER_KEY])
        return self._tokenizer

    def chunk_for(self, prompt_tokens: int) -> int:
        """Prompt tokens per graph run when prefilling `prompt_tokens` tokens."""
        if self.prefill_chunk is not None:
            return self.prefill_chunk
        if not self.fused_prefill:
            return PREFILL_CHUNK
        low, high = FUSED_CHUNK_RANGE
        return min(max(prompt_tokens // 8, low), high)

    def cache_bytes(self) -> int:
        """Exact bytes of KV cache (keys and values) this generator holds now."""
        return self._cache.nbytes() if self._cache else 0

    def reset(self) -> None:
        """Drop the KV cache of the last generation (its memory is freed)."""
        self._cache = None

    def memory_needed(self, batch: int, prompt_tokens: int, max_new_tokens: int, *,
                      prompt_lists: bool = False) -> GenerationMemory:
        """Estimated peak memory of one generation for `batch` prompts of up to `prompt_tokens`
        tokens and `max_new_tokens` new ones (edgert/decode_memory.py says what it counts);
        prompt_lists: the prompts are still to be made as Python lists."""
        for what, value, low in (("batch", batch, 1), ("prompt_tokens", prompt_tokens, 1),
                                 ("max_new_tokens", max_new_tokens, 0)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise InputError(f"{what} must be a whole number >= {low}, got {value!r}"[:120])
        return generation_memory(self._shape, batch=batch, prompt_tokens=prompt_tokens,
                                 capacity=prompt_tokens + max_new_tokens, chunk=self.chunk_for(prompt_tokens),
                                 prompt_lists=prompt_lists)

    def check_memory(self, batch: int, prompt_tokens: int, max_new_tokens: int, *,
                     prompt_lists: bool = False) -> None:
        """InputError, naming what the generation needs, unless memory_needed(...) fits in the
        memory available now plus what this generator holds and will reuse: its current KV
        cache (freed before the next is allocated) and the activations of a prefill it ran
        before (ONNX Runtime's arena keeps them)."""
        memory = self.memory_needed(batch, prompt_tokens, max_new_tokens, prompt_lists=prompt_lists)
        check_fits(memory, f"batch {batch} x {_tokens(prompt_tokens)} of prompt + {max_new_tokens} new",
                   reusable=self.cache_bytes() + min(memory.activations, self._arena_bytes))

    def generate(self, prompt_ids: Sequence[int] | Sequence[Sequence[int]], max_new_tokens: int, *,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, stop: Iterable[int] | None = None) -> list:
        """New token ids after `prompt_ids` (the prompt is not repeated): a list of ints for
        one prompt, a list of such lists for a batch of prompts (left-padded internally).

        temperature 0 is greedy; otherwise logits are divided by it, cut to the top_k
        tokens and to the smallest set whose probability reaches top_p, and sampled with a
        generator seeded by `seed`. stop: token ids that end a sequence (included in its
        output); None means the model's end-of-sequence ids, () means none.
        """
        single = _is_single(prompt_ids)
        outputs: list[list[int]] = []
        for step in self.stream(prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                top_p=top_p, seed=seed, stop=stop):
            row_tokens = [step] if single else step
            if not outputs:
                outputs = [[] for _ in row_tokens]
            for out, token in zip(outputs, row_tokens):
                if token is not None:
                    out.append(token)
        return outputs[0] if single else outputs

    def stream(self, prompt_ids: Sequence[int] | Sequence[Sequence[int]], max_new_tokens: int, *,
               temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
               seed: int | None = None, stop: Iterable[int] | None = None) -> Iterator:
        """Like generate, yielding each new token as soon as it exists: an int for one prompt;
        for a batch, a list with one id per prompt (None for prompts that already stopped)."""
        single = _is_single(prompt_ids)
        prompts = self._check_prompts([prompt_ids] if single else prompt_ids)
        max_new_tokens = _positive(max_new_tokens, "max_new_tokens")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.max_length:
            raise InputError(f"prompt ({_tokens(longest)}) + max_new_tokens ({max_new_tokens}) exceeds "
                             f"the limit of {self.max_length} tokens")
        pick = _sampler(temperature, top_k, top_p, seed)
        stop_ids = set(self.eos_token_ids if stop is None else self._known_ids(stop, "stop"))
        cache = self._new_cache(len(prompts), longest, max_new_tokens)
        return self._decode(cache, prompts, max_new_tokens, pick, stop_ids, single)

    def next_token_logits(self, prompt_ids: Sequence[int], continuation: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits [len(continuation) + 1, vocab]: row i is what the model
        predicts after the prompt and the first i continuation tokens (for comparing two
        graphs of one model token by token, e.g. FP32 against INT8)."""
        prompt = self._check_prompts([prompt_ids])[0]
        continuation = self._known_ids(continuation, "continuation")
        if len(prompt) + len(continuation) > self.max_length:
            raise InputError(f"prompt + continuation ({len(prompt) + len(continuation)} tokens) exceeds "
                             f"the limit of {self.max_length} tokens")
        cache = self._new_cache(1, len(prompt), len(continuation))
        ids = np.asarray([prompt], np.int64)
        positions = np.arange(len(prompt), dtype=np.int64)[None]
        rows = [self._prefill(cache, ids, positions, np.ones_like(ids))[0]]
        for i, token in enumerate(continuation):
            logits = self._step(cache, np.asarray([[token]], np.int64),
                                np.asarray([[len(prompt) + i]], np.int64), np.ones((1, 1), np.int64),
                                compact=False)
            rows.append(logits[0])
        return np.stack(rows)

    def _decode(self, cache: KVCache, prompts: list[list[int]], max_new_tokens: int, pick,
                stop_ids: set[int], single: bool) -> Iterator:
        batch, longest = len(prompts), max(len(p) for p in prompts)
        ids = np.zeros((batch, longest), np.int64)
        mask = np.zeros((batch, longest), np.int64)
        for b, prompt in enumerate(prompts):
            ids[b, longest - len(prompt):] = prompt
            mask[b, longest - len(prompt):] = 1
        positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
        logits = self._prefill(cache, ids, positions, mask)
        next_position = positions[:, -1] + 1
        done = np.zeros(batch, bool)
        ones = np.ones((batch, 1), np.int64)
        for produced in range(1, max_new_tokens + 1):
            tokens = pick(logits)
            shown = [None if d else int(t) for t, d in zip(tokens, done)]
            yield shown[0] if single else shown
            done |= np.isin(tokens, list(stop_ids)) if stop_ids else False
            if produced == max_new_tokens or done.all():
                return
            logits = self._step(cache, tokens.reshape(batch, 1).astype(np.int64),
                                next_position.reshape(batch, 1), ones, compact=False)
            next_position = next_position + 1

    def _prefill(self, cache: KVCache, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Run the prompt through the graph in chunks; the logits after its last token."""
        batch, tokens = ids.shape
        self._arena_bytes = max(self._arena_bytes, self.memory_needed(batch, tokens, 0).activations)
        chunk = self.chunk_for(tokens)
        for start in range(0, tokens, chunk):
            end = min(start + chunk, tokens)
            logits = self._step(cache, ids[:, start:end], positions[:, start:end], mask[:, start:end],
                                compact=True)
        return logits

    def _step(self, cache: KVCache, ids: np.ndarray, positions: np.ndarray, mask: np.ndarray, *,
              compact: bool) -> np.ndarray:
        feeds = {INPUT_IDS: np.ascontiguousarray(ids), POSITION_IDS: np.ascontiguousarray(positions),
                 ATTENTION_MASK: np.ascontiguousarray(mask), **cache.feeds(compact=compact)}
        outputs = dict(zip(self._output_names, self.session.run_unchecked(feeds)))
        cache.append(outputs, positions, mask)
        return outputs[LOGITS]

    def _new_cache(self, batch: int, prompt_tokens: int, max_new_tokens: int) -> KVCache:
        """Free the last call's cache, then allocate one for `batch` x (`prompt_tokens` +
        `max_new_tokens`) tokens, or InputError when the generation (cache, prefill
        activations, prompt and cache copies) cannot fit in the memory available now."""
        self.check_memory(batch, prompt_tokens, max_new_tokens)
        self._cache = None
        self._cache = KVCache(self.layout, batch, prompt_tokens + max_new_tokens)
        return self._cache

    def _check_prompts(self, prompts: object) -> list[list[int]]:
        if not isinstance(prompts, Sequence) or isinstance(prompts, (str, bytes)) or not prompts:
            raise InputError("prompt_ids must be a non-empty list of token ids (or of such lists)")
        checked = []
        for prompt in prompts:
            tokens = self._known_ids(prompt, "prompt_ids", "prompt")
            if not tokens:
                raise InputError("a prompt must hold at least one token id")
            if len(tokens) > self.max_length:
                raise InputError(f"prompt has {len(tokens)} tokens; the limit is {self.max_length}")
            checked.append(tokens)
        return checked

    def _known_ids(self, value: object, what: str, label: str | None = None) -> list[int]:
        """`value` as a list of token ids inside the vocabulary; InputError naming `what` otherwise."""
        tokens = _token_list(value, what)
        bad = next((t for t in tokens if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise InputError(f"{label or what + ':'} token id {shown_value(bad)} is outside the vocabulary "
                             f"[0, {self.vocab_size})")
        return tokens

    def __repr__(self) -> str:
        return f"Generator({str(self.session.path)!r}, device={self.session.device!r})"


def _spin_policy(threads: int | None) -> bool:
    """Let ONNX Runtime's idle threads spin unless other processes keep more of the machine busy
    than our threads leave free (measured over 50 ms now). Spinning wins on a quiet machine and
    loses where another process holds a core (bench/spin_check.py: per-token decode of the
    reference Llama at 4k tokens, both ways, quiet and busy). Decided once, when the generator
    is made."""
    busy = busy_cores()
    if busy is None:
        return True
    free = usable_cores() - (threads or usable_cores())
    return busy <= free + 0.5


def _tokens(count: int) -> str:
    return f"{count} token" + ("" if count == 1 else "s")


def _is_single(prompt_ids: object) -> bool:
    """One prompt (a flat list of ids) rather than a batch (a list of lists)."""
    if isinstance(prompt_ids, np.ndarray):
        return prompt_ids.ndim == 1
    return isinstance(prompt_ids, Sequence) and not any(
        isinstance(p, (Sequence, np.ndarray)) and not isinstance(p, (str, bytes)) for p in prompt_ids)


def _token_list(value: object, what: str) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Iterable, np.ndarray)):
        raise InputError(f"{what} must be a list of token ids, got {type(value).__name__}")
    tokens = list(value)
    if not all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in tokens):
        raise InputError(f"{what} must hold whole numbers only")
    return [int(t) for t in tokens]


def _positive(value: object, what: str, error: type[EdgertError] = OptionError) -> int:
    return whole_number(value, what, low=1, error=error)


def _sampler(temperature: object, top_k: object, top_p: object, seed: object):
    """A function logits [B, vocab] -> token ids [B], after checking the sampling options."""
    temperature = finite_number(temperature, "temperature", low=0)
    if top_k is not None:
        top_k = _positive(top_k, "top_k")
    if top_p is not None:
        top_p = finite_number(top_p, "top_p", low=0, high=1, low_open=True)
    if seed is not None:
        seed = whole_number(seed, "seed", low=0)
    if temperature == 0:
        return lambda logits: logits.argmax(axis=-1)
    rng = np.random.default_rng(seed)

    def sample(logits: np.ndarray) -> np.ndarray:
        scores = logits.astype(np.float64)
        # Shift before dividing: the largest score becomes 0 and the others at most 0, so a tiny
        # temperature sends them to -inf (probability 0), the greedy limit, instead of
        # overflowing to inf - inf = nan.
        with np.errstate(over="ignore"):
            scores = (scores - scores.max(axis=-1, keepdims=True)) / temperature
        if top_k is not None and top_k < scores.shape[-1]:
            kth = np.partition(scores, -top_k, axis=-1)[:, -top_k:].min(axis=-1, keepdims=True)
            scores = np.where(scores < kth, -np.inf, scores)
        probs = np.exp(scores)
        probs /= probs.sum(axis=-1, keepdims=True)
        if top_p is not None and top_p < 1:
            order = np.argsort(-probs, axis=-1)
            sorted_probs = np.take_along_axis(probs, order, axis=-1)
            drop = np.cumsum(sorted_probs, axis=-1) - sorted_probs >= top_p  # keep the smallest set reaching top_p
            np.put_along_axis(probs, order, np.where(drop, 0.0, sorted_probs), axis=-1)
            probs /= probs.sum(axis=-1, keepdims=True)
        cumulative = np.cumsum(probs, axis=-1)
        draws = rng.random((probs.shape[0], 1)) * cumulative[:, -1:]
        return (cumulative < draws).sum(axis=-1).clip(max=probs.shape[-1] - 1)

    return sample
