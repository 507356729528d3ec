"""Decode bench: time to first token (prefill) and the gap between consecutive tokens of
edgert.Generator runs on random prompts (profile_decode for one run, bench_decode for
models alone and then interleaved in rounds of one generation each).

Every size is checked against the model (its max_length) and the machine (the memory the
generation and its prompt need) before a prompt or a cache exists.
"""

from __future__ import annotations

import gc
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgert.bench_config import MAX_BATCH, DecodeConfig, check_whole, checked_run, total_runs
from edgert.bench_report import BenchReport
from edgert.errors import InputError, OptionError
from edgert.generator import Generator
from edgert.latency import LatencyStats, Progress, interleaved_runs
from edgert.memory import peak_rss_mb, reset_peak_rss, rss_mb


@dataclass
class DecodeStats:
    """One generation run: prompt of `context` random token ids per batch row, then exactly
    `new_tokens` new tokens."""

    model: str
    context: int
    new_tokens: int
    batch: int
    prefill_s: float  # time to first token: prefill + choosing the first token
    decode_ms: list[float]  # one entry per token after the first (time between consecutive tokens)
    kv_bytes: int  # Generator.cache_bytes() at the end of the run

    def p(self, q: float) -> float:
        """Percentile q (0..100) of decode_ms, in milliseconds."""
        if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0 <= q <= 100:
            raise OptionError(f"percentile must be a number in 0..100, got {q!r}"[:120])
        return float(np.percentile(self.decode_ms, q))

    @property
    def tokens_per_s(self) -> float:
        """Tokens generated per second while decoding (after the first token), all batch rows
        together: batch x 1000 / mean(decode_ms)."""
        return self.batch * 1e3 / float(np.mean(self.decode_ms))


def profile_decode(generator: Generator, *, context: int, new_tokens: int, batch: int = 1, seed: int = 0,
                   label: str | None = None) -> DecodeStats:
    """Time one generation of `generator` (an edgert.Generator): `context` random prompt ids
    in [3, vocab) per batch row (rows differ; np.random.default_rng(seed)), then exactly
    `new_tokens` tokens (greedy, no stop ids). prefill_s runs from the `stream` call to the
    first token; decode_ms holds the gaps between consecutive tokens. Sizes beyond the
    generator's max_length or the memory available raise InputError before any work."""
    check_decode(generator, context=context, new_tokens=new_tokens, batch=batch, seed=seed)
    if label is not None and not isinstance(label, str):
        raise OptionError(f"label must be a str or None, got {type(label).__name__}")
    vocab = generator.vocab_size
    low = 3 if vocab > 3 else 0  # ids 0..2 are special tokens (pad, bos, eos) in most vocabularies
    rows = np.random.default_rng(seed).integers(low, vocab, (batch, context)).tolist()
    prompt = rows[0] if batch == 1 else rows
    start = time.perf_counter()
    arrivals = [time.perf_counter() for _ in generator.stream(prompt, new_tokens, stop=())]
    return DecodeStats(model=label if label is not None else str(generator.session.path),
                       context=int(context), new_tokens=int(new_tokens), batch=int(batch),
                       prefill_s=arrivals[0] - start, decode_ms=(np.diff(arrivals) * 1e3).tolist(),
                       kv_bytes=generator.cache_bytes())


def check_decode(generator: object, *, context: object, new_tokens: object, batch: object,
                 seed: object) -> None:
    """OptionError for an argument of profile_decode out of its bounds, InputError when the
    generation exceeds the generator's max_length or (prompt lists, KV cache, prefill
    activations) the memory available; nothing is allocated."""
    if not isinstance(generator, Generator):
        raise OptionError(f"generator must be an edgert.Generator, got {type(generator).__name__}")
    for name, value, low, high in (("context", context, 1, None), ("new_tokens", new_tokens, 2, None),
                                   ("batch", batch, 1, MAX_BATCH), ("seed", seed, 0, None)):
        check_whole(name, value, low, high)
    if context + new_tokens > generator.max_length:
        raise InputError(f"context ({context} tokens) + new_tokens ({new_tokens}) exceeds the limit of "
                         f"{generator.max_length} tokens")
    generator.check_memory(batch, context, new_tokens, prompt_lists=True)


@dataclass
class DecodeResult:
    """One decoder's figures. prefill_ms is over the timed runs, decode_ms over every token
    gap of them; both are the interleaved measurement when several models were compared."""

    path: str
    context: int
    new_tokens: int
    batch: int
    prefill_ms: LatencyStats
    decode_ms: LatencyStats
    alone_decode_ms: LatencyStats
    tokens_per_s: float  # batch x 1000 / mean decode_ms
    kv_bytes: int
    peak_rss_mb: float
    rss_increase_mb: float
    session_s: float
    speedup_vs_first: float = 1.0  # decode p50 of the first model / decode p50
    alone_agrees: bool = True

    def set_runs(self, runs: Sequence[DecodeStats]) -> None:
        """Make these runs the reported measurement."""
        self.prefill_ms = LatencyStats.from_seconds([r.prefill_s for r in runs])
        self.decode_ms = _token_latency(runs)
        self.tokens_per_s = self.batch * 1e3 / self.decode_ms.mean
        self.kv_bytes = runs[-1].kv_bytes

    def medians(self) -> tuple[float, float]:
        """(alone, reported) p50 of the time between tokens, in ms."""
        return self.alone_decode_ms.p50, self.decode_ms.p50


def _token_latency(runs: Sequence[DecodeStats]) -> LatencyStats:
    """The latency of every token gap of these runs."""
    return LatencyStats.from_seconds([ms / 1e3 for r in runs for ms in r.decode_ms])


def bench_decode(paths: Sequence[str], config: DecodeConfig, *,
                 progress: Progress | None = None) -> BenchReport:
    """Time generation with each decoder alone, then (with several) all of them interleaved:
    rounds of one generation per model, the starting model rotated each round, after a
    warm-up. Every model is opened and its limits (max_length, memory) checked before
    anything is timed.

    `progress` is called with 1 after each generation run; the total is
    total_decode_runs(len(paths), config).
    """
    paths = checked_run(paths, config, DecodeConfig, progress)
    devices = set()
    for path in paths:  # a model that is no decoder, too short or too big for the config fails now
        generator, _ = _open_generator(path, config)
        check_decode(generator, context=config.context, new_tokens=config.new_tokens, batch=config.batch,
                     seed=config.seed)
        devices.add(generator.session.device)
        del generator
    results = []
    for path in paths:
        gc.collect()
        reset_peak_rss()
        before = rss_mb()
        generator, session_s = _open_generator(path, config)
        (runs,) = _decode_rounds([generator], config, progress)
        peak = peak_rss_mb()
        alone = _token_latency(runs)
        result = DecodeResult(path=str(path), context=config.context, new_tokens=config.new_tokens,
                              batch=config.batch, prefill_ms=alone, decode_ms=alone, alone_decode_ms=alone,
                              tokens_per_s=0.0, kv_bytes=0, peak_rss_mb=peak,
                              rss_increase_mb=max(0.0, peak - before), session_s=session_s)
        result.set_runs(runs)
        results.append(result)
        del generator, runs
    report = BenchReport(device=",".join(sorted(devices)), config=config, models=results,
                         interleaved=len(paths) > 1)
    if len(paths) > 1:
        generators = [_open_generator(p, config)[0] for p in paths]
        for result, runs in zip(results, _decode_rounds(generators, config, progress)):
            result.set_runs(runs)
        # edgert.Generator decides spinning itself (on, unless another process holds a core)
        report.compare(spin=all(g.spin for g in generators), spin_option=False)
    return report


def _open_generator(path: str, config: DecodeConfig) -> tuple[Generator, float]:
    """The decoder's Generator and the seconds loading it took."""
    start = time.perf_counter()
    generator = Generator(path, device=config.device, threads=config.threads)
    return generator, time.perf_counter() - start


def _decode_rounds(generators: Sequence[Generator], config: DecodeConfig,
                   progress: Progress | None) -> list[list[DecodeStats]]:
    """`warmup` untimed runs of each generator, then `iters` rounds of one timed run of each,
    the starting generator rotated every round. Returns each generator's timed runs."""
    runners = [lambda g=generator: profile_decode(g, context=config.context, new_tokens=config.new_tokens,
                                                  batch=config.batch, seed=config.seed)
               for generator in generators]
    return interleaved_runs(runners, iters=config.iters, warmup=config.warmup, block=1, progress=progress)


def total_decode_runs(num_models: int, config: DecodeConfig) -> int:
    """How many generation runs bench_decode will report through `progress`."""
    return total_runs(num_models, config.warmup, config.iters)
