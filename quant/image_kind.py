"""Image classifiers (task image-classification) under `edgert quantize`: calibrated on a folder
of images or an .npz of pixel_values (no built-in set), judged by top-1 agreement, SQNR and
cosine of their logits against FP32's on held-out images (and top-1 accuracy where the images
are labelled), static INT8 carried through the ops between the convolutions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgert.errors import QuantizeError
from edgert.images import image_spec, is_image_model
from edgert.quant import evaluate
from edgert.quant.calib import load_images
from edgert.quant.kernels import OP_TYPES
from edgert.quant.model_kind import (DataRequest, FloatRanking, KindData, Probe, QuantizableGraph, Step,
                                     outlier_ranking)
from edgert.quant.outliers import TensorStats
from edgert.session import Session

if TYPE_CHECKING:  # annotations only: quantize imports the kinds
    from edgert.quant.quantize import QuantResult

# Static INT8 of image classifiers also quantizes what lies between the convolutions (residual
# adds, squeeze-excite, concatenations, reshapes), so activations stay INT8 from one QLinearConv
# to the next: with only Conv/MatMul/Gemm, every residual Add costs a Dequantize/Quantize pair
# and efficientvit-m0 ran 1.3x *slower* than FP32 at batch 16 (AVX512-VNNI, 2 threads);
# with these, 1.0-1.07x (bench/vision_check.py).
IMAGE_OP_TYPES = (*OP_TYPES, "Add", "Mul", "Relu", "Sigmoid", "GlobalAveragePool", "ReduceMean", "Concat",
                  "Split", "Reshape", "Transpose", "Pad", "Slice")
ACCURACY_METHOD = ("logits on held-out images against FP32: top-1 agreement, SQNR, cosine; "
                   "top-1 accuracy of both models where the images are labelled")


class ImageKind:
    """An image classifier: its manifest's task is image-classification."""

    name = "image"
    noun = "an image classifier"
    plural = "image classifiers"
    metrics = evaluate.IMAGE_METRICS
    metric_words = "top-1 agreement, SQNR or cosine of its logits against FP32's on held-out images"
    default_guard = None
    fuses = True
    const_weight_only = False
    qdq_options: dict[str, object] = {}

    def matches(self, session: Session) -> bool:
        return is_image_model(session.manifest)

    def op_types(self, mode: str) -> tuple[str, ...]:
        return IMAGE_OP_TYPES if mode == "static" else OP_TYPES

    def load(self, request: DataRequest) -> KindData:
        """Calibration feeds (one image each), and the evaluation on the held-out images (else
        the calibration images) with FP32's logits on them."""
        reference, step = request.reference, request.step
        spec, input_name = image_spec(reference)
        output = next((s for s in reference.outputs if s.name == "logits"), reference.outputs[0])
        if len(output.shape) != 2:
            raise QuantizeError(f"{reference.path.name}: an image classifier's output is logits "
                                f"[batch, classes], not {output.describe()}")
        classes = output.shape[1] if isinstance(output.shape[1], int) else None
        if request.calib is None:
            raise QuantizeError("image models have no built-in calibration set; give --calib FOLDER "
                                "(images, preprocessed as the model's manifest says) or an .npz of pixel_values")
        step("calibration images")
        calib = load_images(request.calib, spec, classes=classes, size=request.config.calib_size)
        held = calib
        if request.heldout is not None:
            step("held-out images")
            held = load_images(request.heldout, spec, classes=classes, role="held-out data")
        step("held-out images: FP32 logits")
        evaluation = evaluate.ImageEvaluation(reference, held.pixel_values, held.labels, request.options,
                                              input_name=input_name, output_name=output.name)
        words = held.source if request.heldout is not None else (
            f"{held.source}: the calibration images, no --heldout given")
        return KindData(evaluation, calib.feeds(input_name), words)

    def ranking(self, graph: QuantizableGraph, outliers: list[TensorStats], probe: Probe,
                step: Step) -> FloatRanking:
        return outlier_ranking(graph, outliers)

    def record(self, result: QuantResult) -> dict:
        return {"accuracy_method": ACCURACY_METHOD}
