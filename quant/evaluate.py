"""How good and how fast a quantized encoder or image classifier is, measured against its
FP32 original (decoders: quant/decoder_eval.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from edgert.latency import LatencyStats, time_interleaved
from edgert.session import Session
from edgert.synth import synthesize_inputs

METRICS = ("cosine", "sqnr")
IMAGE_METRICS = ("top1", "sqnr", "cosine")
IMAGE_BATCH = 32  # held-out images run through both models this many at a time
# Without a guard, candidates whose SQNR is within this of the best count as equally accurate.
SQNR_TOLERANCE_DB = 1.0


class SqnrRanked:
    """Kernel choice for the accuracies judged by an SQNR (`sqnr_db`, in dB): higher is more
    accurate, and within SQNR_TOLERANCE_DB of the best counts as as accurate."""

    sqnr_db: float
    tolerance = f"{SQNR_TOLERANCE_DB:g} dB SQNR"

    @property
    def score(self) -> float:
        """Higher is more accurate: the SQNR."""
        return self.sqnr_db

    def close_to(self, best: SqnrRanked) -> bool:
        """As accurate as `best` for choosing a kernel: SQNR within SQNR_TOLERANCE_DB."""
        return self.sqnr_db >= best.sqnr_db - SQNR_TOLERANCE_DB


@dataclass
class Accuracy(SqnrRanked):
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

    def columns(self) -> dict[str, str]:
        """Table columns for the CLI: header → formatted value."""
        return {"cosine mean": f"{self.cosine_mean:.4f}", "cosine min": f"{self.cosine_min:.4f}",
                "SQNR dB": f"{self.sqnr_db:.1f}"}

    def summary(self, metric: str | None = None) -> str:
        """The cosines and the SQNR in words; a guard's `metric` first (cosine: the cosines alone)."""
        cosine = f"cosine mean {self.cosine_mean:.4f}, min {self.cosine_min:.4f}"
        if metric == "sqnr":
            return f"SQNR {self.sqnr_db:.1f} dB ({cosine})"
        return cosine if metric == "cosine" else f"{cosine}, SQNR {self.sqnr_db:.1f} dB"


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
class ImageAccuracy(SqnrRanked):
    """An image classifier's INT8 logits against FP32's over held-out images.

    top1_agreement: fraction of images whose top class is FP32's; sqnr_db and cosine as in
    Accuracy, over the logits; images: how many were compared. fp32_top1 / int8_top1: top-1
    accuracy of each model on the `labelled` images (None without labels).
    """

    top1_agreement: float
    sqnr_db: float
    cosine_mean: float
    cosine_min: float
    images: int
    fp32_top1: float | None = None
    int8_top1: float | None = None
    labelled: int = 0

    def value(self, metric: str) -> float:
        """The guard's number: `top1` → agreement, `sqnr` → SQNR in dB, `cosine` → mean cosine."""
        return {"top1": self.top1_agreement, "sqnr": self.sqnr_db}.get(metric, self.cosine_mean)

    def columns(self) -> dict[str, str]:
        """Table columns for the CLI: header → formatted value (accuracies when labelled; the
        cosine is in summary(), so the tables fit 80 columns)."""
        columns = {"top1 agree": f"{self.top1_agreement:.4f}", "SQNR dB": f"{self.sqnr_db:.1f}"}
        if self.labelled:
            columns |= {"FP32 acc": f"{self.fp32_top1:.4f}", "INT8 acc": f"{self.int8_top1:.4f}"}
        return columns

    def summary(self, metric: str | None = None) -> str:
        """Agreement, SQNR and cosine in words (whatever the guard's metric), with the
        accuracies where the images are labelled."""
        text = (f"top-1 agreement {self.top1_agreement:.4f} over {self.images} images, "
                f"logits SQNR {self.sqnr_db:.1f} dB, cosine mean {self.cosine_mean:.4f}")
        if self.labelled:
            text += (f"; top-1 accuracy FP32 {self.fp32_top1:.4f}, INT8 {self.int8_top1:.4f} "
                     f"on {self.labelled} labelled images")
        return text


def image_accuracy(want: np.ndarray, got: np.ndarray, labels: np.ndarray | None) -> ImageAccuracy:
    """Compare INT8 logits `got` with FP32's `want` (both [images, classes])."""
    want, got = want.astype(np.float64), got.astype(np.float64)
    norms = np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1)
    cosines = np.where(norms > 0, (want * got).sum(axis=1) / np.where(norms > 0, norms, 1), 0.0)
    noise = float(((want - got) ** 2).sum())
    sqnr = 10 * np.log10(float((want ** 2).sum()) / noise) if noise else float("inf")
    fp32_top, int8_top = want.argmax(axis=1), got.argmax(axis=1)
    measured = ImageAccuracy(float((fp32_top == int8_top).mean()), float(sqnr), float(cosines.mean()),
                             float(cosines.min()), len(want))
    if labels is not None:
        measured.fp32_top1 = float((fp32_top == labels).mean())
        measured.int8_top1 = float((int8_top == labels).mean())
        measured.labelled = len(labels)
    return measured


@dataclass
class SpeedCheck:
    """FP32 and INT8 latency at `batch` (and `seq` tokens; None for models without a
    sequence axis, such as image classifiers)."""

    fp32_ms: LatencyStats
    int8_ms: LatencyStats
    batch: int
    seq: int | None

    @property
    def speedup(self) -> float:
        return self.fp32_ms.p50 / self.int8_ms.p50

    @property
    def timed_at(self) -> dict[str, int | None]:
        return {"batch": self.batch, "seq": self.seq}

    @property
    def what(self) -> str:
        """What was timed, for the CLI."""
        return f"latency p50 at batch {self.batch}" + (f", seq {self.seq}" if self.seq is not None else "")


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
    `seq` is capped at the model's max_length, the longest sequence it takes, and ignored
    (SpeedCheck.seq None) for a model without a sequence axis: an image model's pixel_values
    are synthesized at `batch` and its static channels and resolution."""
    seq = min(seq, reference.max_length or seq) if _has_sequence(reference) else None
    feeds = reference.check_inputs(synthesize_inputs(reference, batch=batch, seq=seq or 1))
    runners = [partial(reference.run_unchecked, feeds)]
    runners += [partial(c.run_unchecked, c.check_inputs(feeds)) for c in candidates]
    fp32, *int8 = time_interleaved(runners, iters=iters, warmup=warmup)
    fp32_ms = LatencyStats.from_seconds(fp32)
    return [SpeedCheck(fp32_ms, LatencyStats.from_seconds(times), batch, seq) for times in int8]


def _has_sequence(session: Session) -> bool:
    """Whether any input has a dimension whose role is `sequence`."""
    return any(session.dim_role(dim) == "sequence" for spec in session.inputs for dim in spec.shape)


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


class ImageEvaluation:
    """Accuracy and speed of INT8 candidates of an image classifier: their logits on
    held-out images against FP32's (computed once), and one interleaved batch-1 timing."""

    def __init__(self, reference: Session, pixel_values: np.ndarray, labels: np.ndarray | None, options, *,
                 input_name: str, output_name: str) -> None:
        self.reference, self.options = reference, options
        self.pixel_values, self.labels = pixel_values, labels
        self.input_name, self.output_name = input_name, output_name
        self.fp32_logits = self.logits(reference)

    def logits(self, session: Session) -> np.ndarray:
        """`session`'s logits on every held-out image, IMAGE_BATCH at a time."""
        parts = [session.run_unchecked({self.input_name: self.pixel_values[i:i + IMAGE_BATCH]},
                                       [self.output_name])[0]
                 for i in range(0, len(self.pixel_values), IMAGE_BATCH)]
        return np.concatenate(parts).reshape(len(self.pixel_values), -1)

    def open(self, path: Path) -> Session:
        """A session of a candidate, kept for accuracy() and speeds()."""
        return Session(path, options=self.options)

    def accuracy(self, candidate: Session) -> ImageAccuracy:
        return image_accuracy(self.fp32_logits, self.logits(candidate), self.labels)

    def speeds(self, candidates: Sequence[Session]) -> list[SpeedCheck]:
        return speed_checks(self.reference, candidates)
