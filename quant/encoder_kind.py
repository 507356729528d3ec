"""Encoders (and any model that is neither a decoder nor an image classifier) under
`edgert quantize`: judged by their first output on held-out feeds against FP32 (cosine,
SQNR; quant/evaluate.py), calibrated on text or .npz feeds (a built-in model's bundled set by
default), float nodes chosen by their inputs' activation outliers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from edgert.errors import QuantizeError
from edgert.quant import evaluate
from edgert.quant.calib import BUNDLED, load_calibration
from edgert.quant.kernels import OP_TYPES
from edgert.quant.model_kind import (DataRequest, FloatRanking, KindData, Probe, QuantizableGraph, Step,
                                     outlier_ranking)
from edgert.quant.outliers import TensorStats
from edgert.session import Session

if TYPE_CHECKING:  # annotations only: quantize imports the kinds
    from edgert.quant.quantize import QuantResult


class EncoderKind:
    """The kind every model falls back to (see quant/kinds.py)."""

    name = "encoder"
    noun = "this model"
    plural = "encoders"
    metrics = evaluate.METRICS
    metric_words = "its first output against FP32; top1 is for decoders and image classifiers, kl for decoders"
    default_guard = None
    fuses = True
    const_weight_only = False
    qdq_options: dict[str, object] = {}

    def matches(self, session: Session) -> bool:
        return True

    def op_types(self, mode: str) -> tuple[str, ...]:
        return OP_TYPES

    def load(self, request: DataRequest) -> KindData:
        """Calibration feeds (padded to one length for histogram calibrators), and the held-out
        feeds (else the calibration feeds) with FP32's first output on them."""
        reference, config = request.reference, request.config
        calib, heldout = _data_paths(reference, request.calib, request.heldout)
        request.step("calibration data")
        samples = load_calibration(calib, reference, size=config.calib_size, same_length=config.method != "minmax")
        checks = load_calibration(heldout, reference, role="held-out data") if heldout else samples
        evaluation = evaluate.EncoderEvaluation(reference, checks, request.options)
        return KindData(evaluation, samples, str(heldout) if heldout else f"{calib} (calibration data)")

    def ranking(self, graph: QuantizableGraph, outliers: list[TensorStats], probe: Probe,
                step: Step) -> FloatRanking:
        return outlier_ranking(graph, outliers)

    def record(self, result: QuantResult) -> dict:
        return {}


def _data_paths(session: Session, calib: Path | None, heldout: Path | None) -> tuple[Path, Path | None]:
    """Calibration and held-out data: given, or bundled with a built-in model."""
    source = session.manifest.source if session.manifest else None
    bundled = BUNDLED.get(source)
    if calib is None:
        if bundled is None:
            raise QuantizeError("this model has no built-in calibration set; give --calib PATH")
        calib = bundled[0]
    if heldout is None and bundled is not None:
        heldout = bundled[1]
    return Path(calib), heldout
