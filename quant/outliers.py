"""Activation outlier report: for every float activation, max |x|, kurtosis and the SQNR
after fake INT8 quantization, so a user sees which tensors break INT8.

ONNX Runtime's calibrators collect only ranges; kurtosis and the quantization error
need the tensors themselves, so this runs an augmented copy of the graph that outputs
every activation.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from edgert._io import temporary_directory
from edgert.model_info import load_onnx_proto
from edgert.session import Session, session_options

# Ops whose outputs are shapes, indices or constants, not activations worth quantizing.
NON_ACTIVATION_OPS = {"Constant", "ConstantOfShape", "Shape", "Size", "Range", "NonZero",
                      "Equal", "Less", "Greater", "Not", "And", "Or", "Where", "Cast", "Expand"}
# Examples `edgert quantize` takes statistics over: enough for stable max/kurtosis ranks; the
# full calibration set would cost minutes.
OUTLIER_SAMPLES = 32


@dataclass
class TensorStats:
    """Statistics of one activation tensor over the calibration data."""

    name: str
    op_type: str
    where: str  # the torch module that produced it (from torch.onnx metadata), else the node name
    max_abs: float
    kurtosis: float  # E[(x-mu)^4] / sigma^4, not excess (a Gaussian has 3)
    sqnr_db: float  # after per-tensor asymmetric uint8 quantization over the observed range
    numel: int

    def to_dict(self) -> dict:
        return asdict(self)


class _Moments:
    """Running min/max and raw moments of one tensor, in float64."""

    def __init__(self) -> None:
        self.lo, self.hi, self.n = math.inf, -math.inf, 0
        self.sums = np.zeros(4)
        self.signal = self.noise = 0.0

    def add(self, x: np.ndarray) -> None:
        x = x.astype(np.float64, copy=False).ravel()
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        self.n += x.size
        x2 = x * x
        self.sums += (x.sum(), x2.sum(), (x2 * x).sum(), (x2 * x2).sum())

    def add_error(self, x: np.ndarray) -> None:
        x = x.astype(np.float64, copy=False)
        self.signal += float((x * x).sum())
        self.noise += float(((x - fake_quantize_uint8(x, self.lo, self.hi)) ** 2).sum())

    def kurtosis(self) -> float:
        m1, m2, m3, m4 = self.sums / self.n
        var = m2 - m1 * m1
        if var <= 1e-30:
            return float("nan")
        central4 = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1 ** 4
        return float(central4 / (var * var))

    def sqnr_db(self) -> float:
        if self.noise == 0:
            return float("inf")
        return 10 * math.log10(self.signal / self.noise) if self.signal > 0 else float("-inf")


def fake_quantize_uint8(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Quantize to uint8 over [lo, hi] (range widened to include 0, as ONNX Runtime does)
    and dequantize."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255 or 1.0
    zero_point = round(-lo / scale)
    q = np.clip(np.round(x / scale) + zero_point, 0, 255)
    return (q - zero_point) * scale


def producer_scope(node) -> str:
    """The innermost torch module torch.onnx recorded for `node` (its name_scopes end with
    the module path, then the fx node name), else the node's own name."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                break
            if len(scopes) >= 2 and scopes[-2]:
                return str(scopes[-2])
    return node.name


def activation_names(model) -> dict[str, tuple[str, str]]:
    """Float activation tensors of `model` (a ModelProto) → (op type, producer scope)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    float_values = {v.name for v in [*inferred.graph.value_info, *inferred.graph.output]
                    if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    constant = {t.name for t in model.graph.initializer}
    names = {}
    for node in model.graph.node:
        if all(i in constant or not i for i in node.input):
            constant.update(node.output)  # computed from weights alone: not an activation
            continue
        if node.op_type in NON_ACTIVATION_OPS:
            continue
        for out in node.output:
            if out in float_values:
                names[out] = (node.op_type, producer_scope(node))
    return names


def activation_stats(model_path: str | Path, samples: Sequence[dict[str, np.ndarray]], *,
                     threads: int | None = None,
                     progress: Callable[[int], None] | None = None) -> list[TensorStats]:
    """Statistics of every float activation over `samples`, worst SQNR first.

    Makes two passes (ranges first, then the error at those ranges); `progress` is
    called once per sample per pass.
    """
    model = load_onnx_proto(model_path)
    names = activation_names(model)
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names if n not in existing)
    with temporary_directory("edgert-outliers-") as work:
        tmp = work / "with_activations.onnx"
        onnx.save(model, str(tmp))
        session = Session(tmp, options=session_options(threads))
        moments = {n: _Moments() for n in names}
        wanted = list(names)
        for update in (_Moments.add, _Moments.add_error):
            for feeds in samples:
                for name, value in zip(wanted, session.run_unchecked(feeds, wanted)):
                    if value.size:
                        update(moments[name], value)
                if progress:
                    progress(1)
        del session
    stats = [TensorStats(n, *names[n], max(abs(m.lo), abs(m.hi)), m.kurtosis(), m.sqnr_db(), m.n)
             for n, m in moments.items() if m.n]
    return sorted(stats, key=lambda s: s.sqnr_db)
