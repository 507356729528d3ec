"""How good and how fast a quantized encoder is, measured against its FP32 original
(decoders: quant/decoder_eval.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from edgert.profiler import LatencyStats, time_interleaved
from edgert.session import Session
from edgert.synth import synthesize_inputs

METRICS = ("cosine", "sqnr")
# Without a guard, candidates whose SQNR is within this of the best count as equally accurate.
SQNR_TOLERANCE_DB = 1.0


@dataclass
class Accuracy:
    """Agreement of a model's first output with FP32 over held-out examples.

    cosine: per example, the cosine of the flattened output to FP32's (encoders);
    sqnr_db: 10 log10(|fp32|^2 / |fp32 - int8|^2) over everything.
    """

    cosine_mean: float
    cosine_min: float
    sqnr_db: float

    tolerance = f"{SQNR_TOLERANCE_DB:g} dB SQNR"

    def value(self, metric: str) -> float:
        """The guard's number: `cosine` → mean cosine, `sqnr` → SQNR in dB."""
        return self.cosine_mean if metric == "cosine" else self.sqnr_db

    @property
    def score(self) -> float:
        """Higher is more accurate: the SQNR."""
        return self.sqnr_db

    def close_to(self, best: Accuracy) -> bool:
        """As accurate as `best` for choosing a kernel: SQNR within SQNR_TOLERANCE_DB."""
        return self.sqnr_db >= best.sqnr_db - SQNR_TOLERANCE_DB

    def columns(self) -> dict[str, str]:
        """Table columns for the CLI: header → formatted value."""
        return {"cosine mean": f"{self.cosine_mean:.4f}", "cosine min": f"{self.cosine_min:.4f}",
                "SQNR dB": f"{self.sqnr_db:.1f}"}


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

    @property
    def timed_at(self) -> dict[str, int]:
        return {"batch": self.batch, "seq": self.seq}

    @property
    def what(self) -> str:
        """What was timed, for the CLI."""
        return f"latency p50 at batch {self.batch}, seq {self.seq}"


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


class EncoderEvaluation:
    """Accuracy and speed of INT8 candidates of an encoder: its first output on held-out
    feeds against FP32 (cosine, SQNR), and one interleaved batch/sequence timing."""

    def __init__(self, reference: Session, checks: Sequence[dict[str, np.ndarray]], options) -> None:
        self.reference, self.checks, self.options = reference, checks, options

    def open(self, path: Path) -> Session:
        """A session of a candidate, kept for accuracy() and speeds()."""
        return Session(path, options=self.options)

    def accuracy(self, candidate: Session) -> Accuracy:
        return accuracy(self.reference, candidate, self.checks)

    def speeds(self, candidates: Sequence[Session]) -> list[SpeedCheck]:
        return speed_checks(self.reference, candidates)
