"""The report of a bench, forward or decode: the device line, the config, one result per
model, and what comparing the models interleaved found (speedups, and warnings where a
model's alone and interleaved medians disagree).

ONNX Runtime's spinning intra-op threads can slow sessions that alternate, and a machine's
speed can change between the alone and the interleaved measurement; either makes the
speedup column unreliable, so the report says so and what to try.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from edgert.bench_config import BenchConfig, DecodeConfig

AGREEMENT_TOLERANCE = 0.15  # alone vs interleaved p50 may differ this much before we warn


class ComparedResult(Protocol):
    """What the report needs of a model's result (ModelResult, DecodeResult)."""

    path: str
    speedup_vs_first: float
    alone_agrees: bool

    def medians(self) -> tuple[float, float]:
        """(alone, reported) p50 in ms of the latency models are compared by."""


@dataclass
class BenchReport:
    """A bench's figures: `models` holds one ModelResult per model (bench_models) or one
    DecodeResult (bench_decode), in the order given; `interleaved` says whether their
    reported latencies were measured interleaved."""

    device: str
    config: BenchConfig | DecodeConfig
    models: list[ComparedResult]
    interleaved: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The report as JSON-ready dicts, lists and numbers (what `--json` writes)."""
        return _json_ready(asdict(self))

    def compare(self, *, spin: bool, spin_option: bool) -> None:
        """After an interleaved measurement: mark each model whose alone and interleaved
        medians differ by more than AGREEMENT_TOLERANCE and warn about it, and set every
        model's speedup against the first. spin: whether ONNX Runtime's threads spun;
        spin_option: whether the command offers --no-spin."""
        for index, result in enumerate(self.models, 1):
            alone, mixed = result.medians()
            result.alone_agrees = abs(mixed / alone - 1) <= AGREEMENT_TOLERANCE
            if not result.alone_agrees:
                self.warnings.append(drift_warning(index, result.path, alone, mixed, spin=spin,
                                                   threads=self.config.threads, spin_option=spin_option))
        first = self.models[0].medians()[1]
        for result in self.models:
            result.speedup_vs_first = first / result.medians()[1]


def drift_warning(index: int, path: str, alone: float, mixed: float, *, spin: bool,
                  threads: int | None, spin_option: bool = True) -> str:
    """What it means that model `index` ran at `mixed` ms interleaved but `alone` ms alone
    (medians), and what to try; spin_option: whether the command offers --no-spin."""
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


def _json_ready(value: object) -> object:
    """`value` with every tuple turned into a list (shapes in the config), recursively."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value
