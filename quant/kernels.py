"""The INT8 kernel configurations ONNX Runtime can run, which of them each CPU class is worth
measuring with, and how `edgert quantize` chooses among the measured candidates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgert import cpu

if TYPE_CHECKING:  # annotations only: model_kind imports this module
    from edgert.quant.guard import Guard
    from edgert.quant.model_kind import MeasuredAccuracy

# The ops INT8 quantization turns into integer kernels (MatMulInteger, QLinearConv, ...).
OP_TYPES = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class Int8Kernel:
    """The integer types ONNX Runtime multiplies: activations x weights (uint8 / int8), weights
    in 7 bits when reduce_range, symmetric int8 on both sides for TensorRT."""

    activation: str
    weight: str
    reduce_range: bool = False
    symmetric: bool = False

    @property
    def label(self) -> str:
        short = {"uint8": "U8", "int8": "S8"}
        label = short[self.activation] + short[self.weight]
        if self.reduce_range:
            label += " reduce-range"
        return label + (" symmetric" if self.symmetric else "")

    @property
    def qdq_options(self) -> dict[str, bool]:
        """onnxruntime.quantization extra_options for static QDQ with this kernel: a symmetric
        kernel (TensorRT's explicit quantization) gets zero zero-points on both sides and
        one Q/DQ pair per consumer."""
        if not self.symmetric:
            return {}
        return {"ActivationSymmetric": True, "WeightSymmetric": True, "DedicatedQDQPair": True}


U8S8 = Int8Kernel("uint8", "int8")
U8S8_REDUCED = Int8Kernel("uint8", "int8", reduce_range=True)
U8U8 = Int8Kernel("uint8", "uint8")
S8S8 = Int8Kernel("int8", "int8")
TENSORRT = Int8Kernel("int8", "int8", symmetric=True)
# Per CPU class (edgert.cpu) and mode, the kernels worth measuring, safest first. x86 without
# VNNI runs U8S8 through VPMADDUBSW, whose int16 pair sums saturate: 7-bit weights keep
# 2 x 255 x 63 below 2^15, and U8U8 takes another, unsaturated path (ONNX Runtime's
# quantization docs name both remedies). S8S8 QDQ is turned back into U8S8 on x86. With VNNI
# or AMX, and on Arm, nothing saturates. Dynamic mode always has uint8 activations.
KERNELS = {
    cpu.VNNI: {"static": (U8S8,), "dynamic": (U8S8,)},
    cpu.NO_VNNI: {"static": (U8S8_REDUCED, U8U8), "dynamic": (U8S8_REDUCED, U8U8)},
    cpu.ARM_DOTPROD: {"static": (S8S8, U8S8), "dynamic": (U8S8,)},
    cpu.ARM_NO_DOTPROD: {"static": (S8S8, U8S8), "dynamic": (U8S8,)},
    cpu.UNKNOWN: {"static": (U8S8_REDUCED, U8U8), "dynamic": (U8S8_REDUCED, U8U8)},
}


def cpu_kernels(mode: str, isa: cpu.CpuIsa) -> tuple[Int8Kernel, ...]:
    """The kernels to measure in `mode` on a CPU with `isa` (KERNELS)."""
    return KERNELS[isa.int8_class][mode]


@dataclass
class Candidate:
    """One kernel configuration, quantized with the initial float nodes and measured.
    speedup: FP32 p50 / INT8 p50, all candidates timed interleaved (None: not timed alone)."""

    kernel: Int8Kernel
    accuracy: MeasuredAccuracy
    speedup: float | None = None
    chosen: bool = False


def choose_kernel(candidates: Sequence[Candidate], guard: Guard | None) -> tuple[int, str]:
    """Index of the candidate to keep, and why.

    With a guard: the fastest candidate that meets it; if none does, the one closest to it
    (the greedy float-node search then starts from there, needing the fewest float nodes).
    Without a guard: the fastest of those as accurate as the most accurate one (each
    accuracy's close_to: encoders and image classifiers SQNR within 1 dB, decoders mean KL
    within 10^0.1 of it), so speed never buys more than that much accuracy. One candidate:
    itself. Speeds come from one interleaved run of FP32 and every candidate.
    """
    if len(candidates) == 1:
        return 0, "the only candidate for this CPU"

    def fastest(indices: list[int]) -> int:
        return max(indices, key=lambda i: candidates[i].speedup or 0.0)

    if guard is not None:
        meeting = [i for i, c in enumerate(candidates) if guard.holds(c.accuracy)]
        if meeting:
            return fastest(meeting), f"fastest meeting guard {guard}"
        best = max(range(len(candidates)), key=lambda i: guard.margin(candidates[i].accuracy))
        return best, f"none meets guard {guard}: closest to it"
    best = max((c.accuracy for c in candidates), key=lambda a: a.score)
    close = [i for i, c in enumerate(candidates) if c.accuracy.close_to(best)]
    return fastest(close), f"fastest within {best.tolerance} of the most accurate"
