"""Latency profiling: percentiles, throughput, memory, and side-by-side runs.

Several models are timed interleaved in blocks in one process, so a noisy machine
slows them alike and the ratios stay honest. Each model is also timed alone first;
the report flags models whose alone and interleaved medians disagree (ONNX Runtime's
spinning intra-op threads can slow sessions that alternate) and says what to try.

Decoders (edgert.Generator) are timed per generation run instead: time to first token
(prefill) and the gap between consecutive tokens (profile_decode, bench_decode).
"""

from __future__ import annotations

import gc
import numbers
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgert._io import path_argument
from edgert.devices import DEVICES
from edgert.errors import EdgertError, OptionError, shown_path
from edgert.memory import peak_rss_mb, reset_peak_rss, rss_mb
from edgert.session import Session, check_threads, session_options
from edgert.synth import synthesize_inputs

AGREEMENT_TOLERANCE = 0.15  # alone vs interleaved p50 may differ this much before we warn
MAX_ITERS = 100_000  # per model, for --iters and --warmup: past this a run is a typo, not a benchmark
MAX_BATCH = 65_536  # far past any edge workload; memory is checked per model as well


@dataclass
class LatencyStats:
    """Latency summary in milliseconds."""

    min: float
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float

    @classmethod
    def from_seconds(cls, samples: Sequence[float]) -> LatencyStats:
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        if ms.size == 0:
            raise OptionError("no latency samples")
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
        return cls(float(ms.min()), float(ms.mean()), float(p50), float(p90), float(p95),
                   float(p99), float(ms.max()), float(ms.std()))


@dataclass
class BenchConfig:
    """What to run: batch, sequence length, warmup and timed iterations per model."""

    batch: int = 1
    seq: int = 128
    warmup: int = 10
    iters: int = 100
    threads: int | None = None
    device: str = "cpu"
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    block: int | None = None  # iterations per interleaved block; None: iters // 10
    spin: bool = True  # ONNX Runtime's default; False disables intra-op thread spinning

    def check(self) -> BenchConfig:
        """Raise EdgertError naming the first field out of its bounds; return self.

        The model-dependent limits (sequence length, memory) are checked per model when
        its inputs are made (Session.check_shapes)."""
        for name, low, high in (("batch", 1, MAX_BATCH), ("seq", 1, None), ("iters", 1, MAX_ITERS),
                                ("warmup", 0, MAX_ITERS), ("block", 1, None)):
            value = getattr(self, name)
            if name == "block" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise OptionError(f"{name} must be a whole number, got {type(value).__name__}")
            if value < low or (high is not None and value > high):
                bounds = f"lie in {low}..{high}" if high is not None else f"be >= {low}"
                raise OptionError(f"{name} must {bounds}, got {value}")
        check_threads(self.threads)
        if not isinstance(self.device, str) or self.device not in DEVICES:
            raise OptionError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not isinstance(self.spin, bool):
            raise OptionError(f"spin must be True or False, got {type(self.spin).__name__}")
        if not isinstance(self.shapes, dict) or not all(
                isinstance(k, str) and isinstance(v, tuple) and v
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in v)
                for k, v in self.shapes.items()):
            raise OptionError("shapes must map input names to tuples of sizes >= 1, "
                              "e.g. {'pixel_values': (1, 3, 224, 224)}")
        return self


@dataclass
class ModelResult:
    """One model's figures. `latency_ms` is the interleaved measurement when several
    models were compared, otherwise the alone one."""

    path: str
    latency_ms: LatencyStats
    alone_latency_ms: LatencyStats
    throughput_per_s: float
    items_per_s: float
    peak_rss_mb: float
    rss_increase_mb: float
    session_s: float
    first_ms: float
    speedup_vs_first: float = 1.0
    alone_agrees: bool = True

    def set_latency(self, stats: LatencyStats, batch: int) -> None:
        """Make `stats` the reported latency and derive throughput from it."""
        self.latency_ms = stats
        self.throughput_per_s = 1e3 / stats.mean
        self.items_per_s = batch * self.throughput_per_s


@dataclass
class BenchReport:
    device: str
    config: BenchConfig
    models: list[ModelResult]
    interleaved: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["config"]["shapes"] = {k: list(v) for k, v in self.config.shapes.items()}
        return data


Progress = Callable[[int], None]


def _time_calls(run: Callable[[], object], count: int, progress: Progress | None) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
        if progress:
            progress(1)
    return samples


def _open(path: str, config: BenchConfig) -> tuple[Session, dict, float]:
    start = time.perf_counter()
    session = Session(path, device=config.device, options=session_options(config.threads, spin=config.spin))
    session_s = time.perf_counter() - start
    if session.manifest is not None and session.manifest.decoder:
        raise OptionError(f"{shown_path(Path(path).name)} is a decoder (text-generation graph): time its "
                          "generation with `edgert bench --decode` (edgert.profiler.bench_decode)")
    feeds = session.check_inputs(synthesize_inputs(session, batch=config.batch, seq=config.seq,
                                                   overrides=config.shapes))
    return session, feeds, session_s


def _checked_run(paths: Sequence[str], config, config_type: type, progress) -> list[str]:
    """The model paths of a bench run, after checking its config and progress callback."""
    paths = _model_paths(paths)
    if not isinstance(config, config_type):
        raise OptionError(f"config must be a {config_type.__name__}, got {type(config).__name__}")
    if progress is not None and not callable(progress):
        raise OptionError(f"progress must be callable, got {type(progress).__name__}")
    config.check()
    return paths


def bench_models(paths: Sequence[str], config: BenchConfig, *,
                 progress: Progress | None = None) -> BenchReport:
    """Time each model alone, then (with several models) all of them interleaved in blocks.

    `progress` is called with the number of iterations just finished; the total is
    total_iterations(len(paths), config).
    """
    paths = _checked_run(paths, config, BenchConfig, progress)
    results, devices = [], set()
    for path in paths:
        gc.collect()
        reset_peak_rss()
        before = rss_mb()
        session, feeds, session_s = _open(path, config)
        devices.add(session.device)
        start = time.perf_counter()
        session.run_unchecked(feeds)
        first_ms = (time.perf_counter() - start) * 1e3
        (samples,) = time_interleaved([lambda s=session, f=feeds: s.run_unchecked(f)], iters=config.iters,
                                      warmup=config.warmup, progress=progress)
        alone = LatencyStats.from_seconds(samples)
        peak = peak_rss_mb()
        result = ModelResult(
            path=str(path), latency_ms=alone, alone_latency_ms=alone, throughput_per_s=0.0,
            items_per_s=0.0, peak_rss_mb=peak, rss_increase_mb=max(0.0, peak - before),
            session_s=session_s, first_ms=first_ms)
        result.set_latency(alone, config.batch)
        results.append(result)
        del session, feeds

    report = BenchReport(device=",".join(sorted(devices)), config=config, models=results,
                         interleaved=len(paths) > 1)
    if len(paths) > 1:
        _interleave(paths, config, results, progress)
        for index, r in enumerate(results, 1):
            drift = r.latency_ms.p50 / r.alone_latency_ms.p50 - 1
            r.alone_agrees = abs(drift) <= AGREEMENT_TOLERANCE
            if not r.alone_agrees:
                report.warnings.append(disagreement_warning(index, r, config))
        first = results[0].latency_ms.p50
        for r in results:
            r.speedup_vs_first = first / r.latency_ms.p50
    return report


def _model_paths(paths: object) -> list[str]:
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise OptionError("paths must be a list of model paths, not one path; e.g. [path]")
    if not isinstance(paths, Sequence) or not paths:
        raise OptionError("paths must be a non-empty list of model paths")
    return [str(path_argument(p, "a model path", EdgertError)) for p in paths]


def disagreement_warning(index: int, result: ModelResult, config: BenchConfig) -> str:
    """What it means that model `index` ran at another speed interleaved than alone, and what to try."""
    return _drift_warning(index, result.path, result.alone_latency_ms.p50, result.latency_ms.p50,
                          spin=config.spin, threads=config.threads)


def _drift_warning(index: int, path: str, alone: float, mixed: float, *, spin: bool,
                   threads: int | None, spin_option: bool = True) -> str:
    """disagreement_warning's text; spin_option: whether the command offers --no-spin."""
    drift = mixed / alone - 1
    model = f"model {index} ({Path(path).name})"
    figures = f"median {alone:.3f} ms alone, {mixed:.3f} ms interleaved"
    if drift > 0:
        why = ("ONNX Runtime's idle threads spin between runs" if spin
               else "they compete for the same cores and caches")
        tries = (["--no-spin"] if spin and spin_option else []) + (
            ["fewer --threads"] if threads is None or threads > 1 else []) + ["more --iters"]
        tries_words = ", ".join(tries[:-1]) + (" or " if len(tries) > 1 else "") + tries[-1]
        return (f"{model} ran {drift:.0%} slower interleaved with the others than alone ({figures}): "
                f"the sessions disturb each other ({why}), so the speedup column is unreliable; "
                f"rerun with {tries_words}")
    return (f"{model} ran {-drift:.0%} faster interleaved with the others than alone ({figures}): "
            "the machine's speed changed between the two measurements (other load, CPU clock), "
            "so the speedup column is unreliable; rerun with more --warmup and --iters on a "
            "quieter machine")


def _interleave(paths: Sequence[str], config: BenchConfig, results: list[ModelResult],
                progress: Progress | None) -> None:
    opened = [_open(p, config)[:2] for p in paths]
    runners = [lambda s=session, f=feeds: s.run_unchecked(f) for session, feeds in opened]
    samples = time_interleaved(runners, iters=config.iters, warmup=config.warmup,
                               block=config.block, progress=progress)
    for result, s in zip(results, samples):
        result.set_latency(LatencyStats.from_seconds(s), config.batch)


def time_interleaved(runners: Sequence[Callable[[], object]], *, iters: int, warmup: int,
                     block: int | None = None, progress: Progress | None = None
                     ) -> list[list[float]]:
    """Warm up each runner, then time `iters` calls of each, alternating in blocks of
    `block` calls (None: iters // 10) with the starting runner rotated every round.
    Returns the per-call seconds of each runner."""
    for run in runners:
        _time_calls(run, warmup, progress)
    block = block or max(1, iters // 10)
    samples: list[list[float]] = [[] for _ in runners]
    round_index = 0
    while any(len(s) < iters for s in samples):
        # rotate the starting runner so none always runs right after the same other one
        for k in range(len(runners)):
            i = (round_index + k) % len(runners)
            samples[i] += _time_calls(runners[i], min(block, iters - len(samples[i])), progress)
        round_index += 1
    return samples


def total_iterations(num_models: int, config: BenchConfig) -> int:
    """How many runs bench_models will report through `progress`."""
    per_model = config.warmup + config.iters
    return num_models * per_model * (2 if num_models > 1 else 1)


# --- decoders: time to first token and per-token latency of edgert.Generator ---

DEFAULT_DECODE_WARMUP = 1  # generation runs per model before timing (ONNX Runtime's first runs are slow)
DEFAULT_DECODE_ITERS = 5  # timed generation runs per model; each gives new_tokens - 1 token latencies


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


def profile_decode(generator, *, context: int, new_tokens: int, batch: int = 1, seed: int = 0,
                   label: str | None = None) -> DecodeStats:
    """Time one generation of `generator` (an edgert.Generator): `context` random prompt ids
    in [3, vocab) per batch row (rows differ; np.random.default_rng(seed)), then exactly
    `new_tokens` tokens (greedy, no stop ids). prefill_s runs from the `stream` call to the
    first token; decode_ms holds the gaps between consecutive tokens. A prompt + new tokens
    beyond the generator's max_length raises the Generator's own InputError before any work."""
    prompt = _decode_prompt(generator, context=context, new_tokens=new_tokens, batch=batch, seed=seed)
    if label is not None and not isinstance(label, str):
        raise OptionError(f"label must be a str or None, got {type(label).__name__}")
    start = time.perf_counter()
    arrivals = [time.perf_counter() for _ in generator.stream(prompt, new_tokens, stop=())]
    return DecodeStats(model=label if label is not None else str(generator.session.path),
                       context=int(context), new_tokens=int(new_tokens), batch=int(batch),
                       prefill_s=arrivals[0] - start, decode_ms=(np.diff(arrivals) * 1e3).tolist(),
                       kv_bytes=generator.cache_bytes())


def _decode_prompt(generator, *, context: object, new_tokens: object, batch: object, seed: object) -> list:
    """The prompt of a profile_decode run (one list of ids, or one per batch row), after
    checking every argument except the generator's own limits (its stream call does those)."""
    from edgert.generator import Generator

    if not isinstance(generator, Generator):
        raise OptionError(f"generator must be an edgert.Generator, got {type(generator).__name__}")
    for name, value, low, high in (("context", context, 1, None), ("new_tokens", new_tokens, 2, None),
                                   ("batch", batch, 1, MAX_BATCH), ("seed", seed, 0, None)):
        _check_whole(name, value, low, high)
    vocab = generator.vocab_size
    low = 3 if vocab > 3 else 0  # ids 0..2 are special tokens (pad, bos, eos) in most vocabularies
    rows = np.random.default_rng(seed).integers(low, vocab, (batch, context)).tolist()
    return rows[0] if batch == 1 else rows


def _check_whole(name: str, value: object, low: int, high: int | None) -> None:
    """EdgertError unless `value` is a whole number in low..high (high None: no upper bound)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionError(f"{name} must be a whole number, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        bounds = f"lie in {low}..{high}" if high is not None else f"be >= {low}"
        why = " (decode latency is the time between consecutive tokens)" if name == "new_tokens" else ""
        raise OptionError(f"{name} must {bounds}{why}, got {value}")


@dataclass
class DecodeConfig:
    """What bench_decode runs: `iters` timed generations of `new_tokens` tokens after a
    prompt of `context` tokens per batch row, after `warmup` untimed ones."""

    context: int = 256
    new_tokens: int = 64
    batch: int = 1
    warmup: int = DEFAULT_DECODE_WARMUP
    iters: int = DEFAULT_DECODE_ITERS
    threads: int | None = None
    device: str = "cpu"
    seed: int = 0

    def check(self) -> DecodeConfig:
        """Raise EdgertError naming the first field out of its bounds; return self. The
        model's limit (context + new_tokens) is checked per model."""
        for name, low, high in (("context", 1, None), ("new_tokens", 2, None), ("batch", 1, MAX_BATCH),
                                ("warmup", 0, MAX_ITERS), ("iters", 1, MAX_ITERS), ("seed", 0, None)):
            _check_whole(name, getattr(self, name), low, high)
        check_threads(self.threads)
        if not isinstance(self.device, str) or self.device not in DEVICES:
            raise OptionError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        return self


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
        self.decode_ms = LatencyStats.from_seconds([ms / 1e3 for r in runs for ms in r.decode_ms])
        self.tokens_per_s = self.batch * 1e3 / self.decode_ms.mean
        self.kv_bytes = runs[-1].kv_bytes


@dataclass
class DecodeReport:
    device: str
    config: DecodeConfig
    models: list[DecodeResult]
    interleaved: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def bench_decode(paths: Sequence[str], config: DecodeConfig, *,
                 progress: Progress | None = None) -> DecodeReport:
    """Time generation with each decoder alone, then (with several) all of them interleaved:
    rounds of one generation per model, the starting model rotated each round, after a
    warm-up. Every model is opened and its limits checked before anything is timed.

    `progress` is called with 1 after each generation run; the total is
    total_decode_runs(len(paths), config).
    """
    paths = _checked_run(paths, config, DecodeConfig, progress)
    devices = set()
    for path in paths:  # a model that is no decoder, or too short for context + new_tokens, fails now
        generator, _ = _open_generator(path, config)
        prompt = _decode_prompt(generator, context=config.context, new_tokens=config.new_tokens,
                                batch=config.batch, seed=config.seed)
        generator.stream(prompt, config.new_tokens, stop=())  # checks its limits; runs nothing until iterated
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
        alone = LatencyStats.from_seconds([ms / 1e3 for r in runs for ms in r.decode_ms])
        result = DecodeResult(path=str(path), context=config.context, new_tokens=config.new_tokens,
                              batch=config.batch, prefill_ms=alone, decode_ms=alone, alone_decode_ms=alone,
                              tokens_per_s=0.0, kv_bytes=0, peak_rss_mb=peak,
                              rss_increase_mb=max(0.0, peak - before), session_s=session_s)
        result.set_runs(runs)
        results.append(result)
        del generator, runs
    report = DecodeReport(device=",".join(sorted(devices)), config=config, models=results,
                          interleaved=len(paths) > 1)
    if len(paths) > 1:
        generators = [_open_generator(p, config)[0] for p in paths]
        for index, (result, runs) in enumerate(zip(results, _decode_rounds(generators, config, progress)), 1):
            result.set_runs(runs)
            alone, mixed = result.alone_decode_ms.p50, result.decode_ms.p50
            result.alone_agrees = abs(mixed / alone - 1) <= AGREEMENT_TOLERANCE
            if not result.alone_agrees:
                report.warnings.append(_drift_warning(index, result.path, alone, mixed, spin=True,
                                                      threads=config.threads, spin_option=False))
        for result in results:
            result.speedup_vs_first = results[0].decode_ms.p50 / result.decode_ms.p50
    return report


def _open_generator(path: str, config: DecodeConfig):
    from edgert.generator import Generator

    start = time.perf_counter()
    generator = Generator(path, device=config.device, threads=config.threads)
    return generator, time.perf_counter() - start


def _decode_rounds(generators: Sequence, config: DecodeConfig,
                   progress: Progress | None) -> list[list[DecodeStats]]:
    """`warmup` untimed runs of each generator, then `iters` rounds of one timed run of each,
    the starting generator rotated every round. Returns each generator's timed runs."""
    def run(generator) -> DecodeStats:
        stats = profile_decode(generator, context=config.context, new_tokens=config.new_tokens,
                               batch=config.batch, seed=config.seed)
        if progress:
            progress(1)
        return stats

    for generator in generators:
        for _ in range(config.warmup):
            run(generator)
    runs: list[list[DecodeStats]] = [[] for _ in generators]
    for round_index in range(config.iters):
        for k in range(len(generators)):
            i = (round_index + k) % len(generators)
            runs[i].append(run(generators[i]))
    return runs


def total_decode_runs(num_models: int, config: DecodeConfig) -> int:
    """How many generation runs bench_decode will report through `progress`."""
    return num_models * (config.warmup + config.iters) * (2 if num_models > 1 else 1)
