"""Latency profiling: percentiles, throughput, memory, and side-by-side runs.

Several models are timed interleaved in blocks in one process, so a noisy machine
slows them alike and the ratios stay honest. Each model is also timed alone first;
the report flags models whose alone and interleaved medians disagree (ONNX Runtime's
spinning intra-op threads can slow sessions that alternate) and says what to try.
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
from edgert.errors import EdgertError
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
            raise EdgertError("no latency samples")
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
                raise EdgertError(f"{name} must be a whole number, got {type(value).__name__}")
            if value < low or (high is not None and value > high):
                bounds = f"lie in {low}..{high}" if high is not None else f"be >= {low}"
                raise EdgertError(f"{name} must {bounds}, got {value}")
        check_threads(self.threads)
        if not isinstance(self.device, str) or self.device not in DEVICES:
            raise EdgertError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if not isinstance(self.spin, bool):
            raise EdgertError(f"spin must be True or False, got {type(self.spin).__name__}")
        if not isinstance(self.shapes, dict) or not all(
                isinstance(k, str) and isinstance(v, tuple) and v
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in v)
                for k, v in self.shapes.items()):
            raise EdgertError("shapes must map input names to tuples of sizes >= 1, "
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


def rss_mb() -> float:
    """Current resident set size of this process in MiB (0 where unknown)."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Peak resident set size since the last reset_peak_rss(), in MiB."""
    peak = _proc_status_mb("VmHWM")
    if peak:
        return peak
    import resource  # not Linux: whole-process peak, cannot be reset

    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if os.uname().sysname == "Darwin" else maxrss / 1024


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux; no-op elsewhere)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _proc_status_mb(key: str) -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


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
    feeds = session.check_inputs(synthesize_inputs(session, batch=config.batch, seq=config.seq,
                                                   overrides=config.shapes))
    return session, feeds, session_s


def bench_models(paths: Sequence[str], config: BenchConfig, *,
                 progress: Progress | None = None) -> BenchReport:
    """Time each model alone, then (with several models) all of them interleaved in blocks.

    `progress` is called with the number of iterations just finished; the total is
    total_iterations(len(paths), config).
    """
    paths = _model_paths(paths)
    if not isinstance(config, BenchConfig):
        raise EdgertError(f"config must be a BenchConfig, got {type(config).__name__}")
    if progress is not None and not callable(progress):
        raise EdgertError(f"progress must be callable, got {type(progress).__name__}")
    config.check()
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
        raise EdgertError("paths must be a list of model paths, not one path; e.g. [path]")
    if not isinstance(paths, Sequence) or not paths:
        raise EdgertError("paths must be a non-empty list of model paths")
    return [str(path_argument(p, "a model path", EdgertError)) for p in paths]


def disagreement_warning(index: int, result: ModelResult, config: BenchConfig) -> str:
    """What it means that model `index` ran at another speed interleaved than alone, and what to try."""
    alone, mixed = result.alone_latency_ms.p50, result.latency_ms.p50
    drift = mixed / alone - 1
    model = f"model {index} ({Path(result.path).name})"
    figures = f"median {alone:.3f} ms alone, {mixed:.3f} ms interleaved"
    if drift > 0:
        why = ("ONNX Runtime's idle threads spin between runs" if config.spin
               else "they compete for the same cores and caches")
        tries = (["--no-spin"] if config.spin else []) + (
            ["fewer --threads"] if config.threads is None or config.threads > 1 else []) + ["more --iters"]
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
