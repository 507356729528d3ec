"""Forward bench: latency percentiles, throughput and memory of models run on synthesized
inputs, each alone and then (with several models) all interleaved in blocks in one process.

Each model is timed alone first; the report flags models whose alone and interleaved
medians disagree (edgert/bench_report.py says why and what to try).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgert.bench_config import BenchConfig, checked_run, total_runs
from edgert.bench_report import BenchReport, drift_warning
from edgert.errors import OptionError, shown_path
from edgert.latency import LatencyStats, Progress, time_interleaved
from edgert.memory import peak_rss_mb, reset_peak_rss, rss_mb
from edgert.session import Session, session_options
from edgert.synth import synthesize_inputs


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

    def medians(self) -> tuple[float, float]:
        """(alone, reported) p50 latency in ms."""
        return self.alone_latency_ms.p50, self.latency_ms.p50


def bench_models(paths: Sequence[str], config: BenchConfig, *,
                 progress: Progress | None = None) -> BenchReport:
    """Time each model alone, then (with several models) all of them interleaved in blocks.

    `progress` is called with the number of iterations just finished; the total is
    total_iterations(len(paths), config).
    """
    paths = checked_run(paths, config, BenchConfig, progress)
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
        opened = [_open(p, config)[:2] for p in paths]
        runners = [lambda s=session, f=feeds: s.run_unchecked(f) for session, feeds in opened]
        samples = time_interleaved(runners, iters=config.iters, warmup=config.warmup,
                                   block=config.block, progress=progress)
        for result, s in zip(results, samples):
            result.set_latency(LatencyStats.from_seconds(s), config.batch)
        report.compare(spin=config.spin, spin_option=True)
    return report


def _open(path: str, config: BenchConfig) -> tuple[Session, dict, float]:
    """The model's session, its checked synthesized inputs, and the seconds loading took."""
    start = time.perf_counter()
    session = Session(path, device=config.device, options=session_options(config.threads, spin=config.spin))
    session_s = time.perf_counter() - start
    if session.manifest is not None and session.manifest.decoder:
        raise OptionError(f"{shown_path(Path(path).name)} is a decoder (text-generation graph): time its "
                          "generation with `edgert bench --decode` (edgert.profiler.bench_decode)")
    feeds = session.check_inputs(synthesize_inputs(session, batch=config.batch, seq=config.seq,
                                                   overrides=config.shapes))
    return session, feeds, session_s


def disagreement_warning(index: int, result: ModelResult, config: BenchConfig) -> str:
    """What it means that model `index` ran at another speed interleaved than alone, and what to try."""
    return drift_warning(index, result.path, result.alone_latency_ms.p50, result.latency_ms.p50,
                         spin=config.spin, threads=config.threads)


def total_iterations(num_models: int, config: BenchConfig) -> int:
    """How many runs bench_models will report through `progress`."""
    return total_runs(num_models, config.warmup, config.iters)
