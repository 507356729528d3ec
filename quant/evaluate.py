"""How good and how fast a quantized model is, measured against its FP32 original."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from edgert.profiler import LatencyStats, time_interleaved
from edgert.session import Session
from edgert.synth import synthesize_inputs

METRICS = ("cosine", "sqnr")


@dataclass
class Accuracy:
    """Agreement of a model's first output with FP32 over held-out examples.

    cosine: per example, the cosine of the flattened output to FP32's (encoders);
    sqnr_db: 10 log10(|fp32|^2 / |fp32 - int8|^2) over everything.
    """

    cosine_mean: float
    cosine_min: float
    sqnr_db: float

    def value(self, metric: str) -> float:
        """The guard's number: `cosine` → mean cosine, `sqnr` → SQNR in dB."""
        return self.cosine_mean if metric == "cosine" else self.sqnr_db


def accuracy(reference: Session, candidate: Session, samples: Sequence[dict[str, np.ndarray]]) -> Accuracy:
    """Compare `candidate`'s first output with `reference`'s on every sample."""
    name = reference.output_names[0]
    cosines, signal, noise = [], 0.0, 0.0
    for feeds in samples:
        want = reference.run_unchecked(feeds, [name])[0].astype(np.float64)
        got = candidate.run_unchecked(feeds, [name])[0].astype(np.float64)
        for w, g in zip(want.reshape(len(want), -1), got.reshape(len(got), -1)):
            denom = np.linalg.norm(w) * np.linalg.norm(g)
            cosines.append(float(w @ g / denom) if denom else 0.0)
        signal += float((want ** 2).sum())
        noise += float(((want - got) ** 2).sum())
    sqnr = 10 * np.log10(signal / noise) if noise else float("inf")
    return Accuracy(float(np.mean(cosines)), float(np.min(cosines)), float(sqnr))


@dataclass
class SpeedCheck:
    fp32_ms: LatencyStats
    int8_ms: LatencyStats
    batch: int
    seq: int

    @property
    def speedup(self) -> float:
        return self.fp32_ms.p50 / self.int8_ms.p50


def speed_check(reference: Session, candidate: Session, *, batch: int = 1, seq: int = 128,
                iters: int = 50, warmup: int = 5) -> SpeedCheck:
    """Time FP32 and INT8 interleaved in blocks in this process (same synthetic inputs).

    Give sessions made with spin=False: two spinning thread pools taking turns on the same
    cores slow each other down.
    """
    return speed_checks(reference, [candidate], batch=batch, seq=seq, iters=iters, warmup=warmup)[0]


def speed_checks(reference: Session, candidates: Sequence[Session], *, batch: int = 1, seq: int = 128,
                 iters: int = 50, warmup: int = 5) -> list[SpeedCheck]:
    """speed_check for several INT8 candidates at once: FP32 and every candidate timed
    interleaved in one run, so their speedups share one FP32 timing and compare fairly.
    `seq` is capped at the model's max_length, the longest sequence it takes."""
    seq = min(seq, reference.max_length or seq)
    feeds = reference.check_inputs(synthesize_inputs(reference, batch=batch, seq=seq))
    runners = [partial(reference.run_unchecked, feeds)]
    runners += [partial(c.run_unchecked, c.check_inputs(feeds)) for c in candidates]
    fp32, *int8 = time_interleaved(runners, iters=iters, warmup=warmup)
    fp32_ms = LatencyStats.from_seconds(fp32)
    return [SpeedCheck(fp32_ms, LatencyStats.from_seconds(times), batch, seq) for times in int8]
