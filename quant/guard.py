"""The accuracy guard of `edgert quantize`: `metric>=threshold` (`kl<=threshold`), checked on
held-out data after quantizing. Which metrics a model takes depends on its kind
(quant/model_kind.py); the ranges here are those of the metrics themselves."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgert.errors import QuantizeError

if TYPE_CHECKING:  # annotations only: model_kind imports this module
    from edgert.quant.model_kind import MeasuredAccuracy

# Guard thresholds a quantized model can meet: cosine 1 means bit-exact; 8-bit rounding noise
# alone caps SQNR near 50 dB (6.02 dB per bit + 1.76), so 100 dB is out of any INT8 model's reach.
# Top-1 agreement can be complete; a KL of 0 would need bit-exact logits.
GUARD_RANGES = {"cosine": (0.0, 1.0, "at least 0 and below 1"),
                "sqnr": (0.0, 100.0, "between 0 and 100 dB"),
                "top1": (0.0, 1.0, "between 0 and 1"),
                "kl": (0.0, math.inf, "above 0 and finite")}
CEILING_METRICS = ("kl",)  # guards that bound a metric from above: kl<=VALUE


def bound(metric: str) -> str:
    """The comparison a guard on `metric` takes: `<=` for a ceiling (kl), else `>=`."""
    return "<=" if metric in CEILING_METRICS else ">="


def guard_forms(metrics) -> str:
    """`cosine>=V or sqnr>=V`: the guards on `metrics`, in words."""
    forms = [f"{metric}{bound(metric)}V" for metric in metrics]
    return forms[0] if len(forms) == 1 else f"{', '.join(forms[:-1])} or {forms[-1]}"


@dataclass(frozen=True)
class Guard:
    """`metric >= threshold` (`kl <= threshold`), checked on held-out data after quantizing."""

    metric: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Guard:
        """`cosine>=0.99`, `sqnr>=30`, `top1>=0.9` or `kl<=0.05`; a malformed or unreachable
        guard (an empty one included) is a QuantizeError."""
        match = re.fullmatch(r"\s*(\w+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*", text)
        if not match or match.group(1) not in GUARD_RANGES:
            raise QuantizeError(f"bad guard {text!r}; expected {guard_forms(GUARD_RANGES)}, e.g. cosine>=0.99")
        metric, operator = match.group(1), match.group(2)
        if operator != bound(metric):
            raise QuantizeError(f"bad guard {text!r}; {metric} is bounded with {bound(metric)}: "
                                f"{metric}{bound(metric)}VALUE")
        try:
            guard = cls(metric, float(match.group(3)))
        except ValueError:
            raise QuantizeError(f"bad guard value in {text!r}") from None
        guard.check()
        return guard

    def check(self) -> None:
        """Refuse a threshold no INT8 model can meet (or that every model meets)."""
        if self.metric not in GUARD_RANGES:
            raise QuantizeError(f"bad guard metric {self.metric!r}; choose one of {', '.join(GUARD_RANGES)}")
        low, high, words = GUARD_RANGES[self.metric]
        ok = math.isfinite(self.threshold) and low <= self.threshold
        ok = ok and (self.threshold < high if self.metric == "cosine" else self.threshold <= high)
        ok = ok and not (self.metric == "kl" and self.threshold == 0)
        if not ok:
            raise QuantizeError(f"guard {self}: a {self.metric} guard must be {words}")

    def holds(self, measured: MeasuredAccuracy) -> bool:
        return self.margin(measured) >= 0

    def margin(self, measured: MeasuredAccuracy) -> float:
        """How far `measured` is on the good side of the threshold (negative: guard fails)."""
        value = measured.value(self.metric)
        return self.threshold - value if self.metric in CEILING_METRICS else value - self.threshold

    def shown(self, measured: MeasuredAccuracy) -> str:
        """`measured`'s value of this guard's metric, as an error message shows it."""
        value = measured.value(self.metric)
        return f"{value:.3g}" if self.metric in CEILING_METRICS else f"{value:.4f}"

    def __str__(self) -> str:
        return f"{self.metric}{bound(self.metric)}{self.threshold:g}"
