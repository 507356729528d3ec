"""The statistics core of every edgert benchmark: latency percentiles, and the interleaved
loop that runs several measured things in alternating blocks.

Interleaving runs the things compared in one process, alternating, so a noisy machine slows
them alike and their ratios stay honest; the starting one is rotated every round so none
always runs right after the same other one. Forward benches interleave single runs, decode
benches whole generations, quant's speed checks FP32 against INT8 sessions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from edgert.errors import OptionError

Progress = Callable[[int], None]  # called with the number of runs just finished
T = TypeVar("T")


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
        """The summary of per-run durations given in seconds; OptionError when there are none."""
        ms = np.asarray(samples, dtype=np.float64) * 1e3
        if ms.size == 0:
            raise OptionError("no latency samples")
        p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
        return cls(float(ms.min()), float(ms.mean()), float(p50), float(p90), float(p95),
                   float(p99), float(ms.max()), float(ms.std()))


def interleaved_runs(runners: Sequence[Callable[[], T]], *, iters: int, warmup: int,
                     block: int | None = None, progress: Progress | None = None) -> list[list[T]]:
    """Call each runner `warmup` times (results dropped), then `iters` times more, alternating
    in blocks of `block` calls (None: iters // 10) with the starting runner rotated every
    round. Returns each runner's `iters` results in order; `progress` gets 1 per call."""
    def call(run: Callable[[], T]) -> T:
        result = run()
        if progress:
            progress(1)
        return result

    for run in runners:
        for _ in range(warmup):
            call(run)
    block = block or max(1, iters // 10)
    results: list[list[T]] = [[] for _ in runners]
    round_index = 0
    while any(len(r) < iters for r in results):
        for k in range(len(runners)):
            i = (round_index + k) % len(runners)
            results[i] += [call(runners[i]) for _ in range(min(block, iters - len(results[i])))]
        round_index += 1
    return results


def time_interleaved(runners: Sequence[Callable[[], object]], *, iters: int, warmup: int,
                     block: int | None = None, progress: Progress | None = None
                     ) -> list[list[float]]:
    """interleaved_runs timing each call: the per-call seconds of each runner."""
    def timed(run: Callable[[], object]) -> Callable[[], float]:
        def seconds() -> float:
            start = time.perf_counter()
            run()
            return time.perf_counter() - start
        return seconds

    return interleaved_runs([timed(run) for run in runners], iters=iters, warmup=warmup, block=block,
                            progress=progress)
