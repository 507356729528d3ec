"""`edgert quantize --int8`: ONNX Runtime's QDQ / dynamic quantization, calibrated, with an
accuracy guard that keeps the most sensitive nodes in float until the guard holds."""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path


from edgert._io import atomic_output, check_output_path
from edgert.errors import EdgertError
from edgert.model_info import load_onnx_proto
from edgert.plan import MANIFEST_KEY
from edgert.quant.calib import BUNDLED, load_calibration
from edgert.quant.evaluate import METRICS, Accuracy, SpeedCheck, accuracy, speed_check
from edgert.quant.outliers import TensorStats, activation_stats
from edgert.session import Session, session_options

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                 "QLinearMatMul", "QLinearConv", "ConvInteger", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat", "QAttention", "QGemm"}
OP_TYPES = ("MatMul", "Gemm", "Conv")
MODES, METHODS, TARGETS = ("static", "dynamic"), ("minmax", "entropy", "percentile"), ("cpu", "tensorrt")
MAX_ATTEMPTS = 16
OUTLIER_SAMPLES = 32  # enough for stable max/kurtosis ranks; the full set costs minutes


class QuantizeError(EdgertError):
    """Quantization cannot be done as asked."""


@dataclass(frozen=True)
class Guard:
    """`metric >= threshold`, checked on held-out data after quantizing."""

    metric: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Guard:
        match = re.fullmatch(r"\s*(\w+)\s*>=\s*([-+0-9.eE]+)\s*", text)
        if not match or match.group(1) not in METRICS:
            raise QuantizeError(f"bad guard {text!r}; expected METRIC>=VALUE with METRIC one of "
                                f"{', '.join(METRICS)}, e.g. cosine>=0.99")
        try:
            return cls(match.group(1), float(match.group(2)))
        except ValueError:
            raise QuantizeError(f"bad guard value in {text!r}") from None


@dataclass
class QuantConfig:
    """How to quantize. exclude: node names or op types kept in float."""

    mode: str = "static"
    method: str = "minmax"
    per_channel: bool = True
    exclude: tuple[str, ...] = ()
    target: str = "cpu"
    calib_size: int = 128
    guard: Guard | None = None
    fuse: bool = True  # attention/LayerNorm/GELU fusions for ONNX Runtime CPU (target cpu only)

    def check(self) -> None:
        for name, value, allowed in (("mode", self.mode, MODES), ("method", self.method, METHODS),
                                     ("target", self.target, TARGETS)):
            if value not in allowed:
                raise QuantizeError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.target == "tensorrt" and self.mode == "dynamic":
            raise QuantizeError("TensorRT takes static (QDQ) INT8 only; use --mode static")
        if self.calib_size < 1:
            raise QuantizeError(f"calib size must be >= 1, got {self.calib_size}")


@dataclass
class Attempt:
    """One quantization try: how many nodes stayed in float, and the accuracy it reached."""

    float_nodes: int
    accuracy: Accuracy


@dataclass
class QuantResult:
    path: Path
    config: QuantConfig
    float_nodes: list[str]
    accuracy: Accuracy
    speed: SpeedCheck
    attempts: list[Attempt] = field(default_factory=list)
    heldout: str = ""
    fused: dict[str, int] = field(default_factory=dict)
    outliers: list[TensorStats] = field(default_factory=list)  # worst fake-INT8 SQNR first


Step = Callable[[str], None]


def quantize_model(model: str | os.PathLike, output: str | os.PathLike, config: QuantConfig, *,
                   calib: str | os.PathLike | None = None, heldout: str | os.PathLike | None = None,
                   threads: int | None = None, on_step: Step | None = None) -> QuantResult:
    """Quantize `model` to INT8 at `output`, enforcing `config.guard` on held-out data."""
    step = on_step or (lambda _: None)
    config.check()
    output = check_output_path(output)
    reference = Session(model, options=session_options(threads, spin=False))
    proto = load_onnx_proto(model)
    already = sorted({n.op_type for n in proto.graph.node} & QUANTIZED_OPS)
    if already:
        raise QuantizeError(f"{model} is already quantized (it has {', '.join(already)})")
    calib, heldout = _data_paths(reference, calib, heldout)
    step("calibration data")
    samples = load_calibration(calib, reference, size=config.calib_size,
                               same_length=config.method != "minmax")
    checks = load_calibration(heldout, reference) if heldout else samples

    with tempfile.TemporaryDirectory(prefix="edgert-quant-") as work:
        pre = Path(work) / "pre.onnx"
        step("pre-processing")
        _preprocess(model, pre)
        step("activation outliers")
        outliers = activation_stats(pre, samples[:OUTLIER_SAMPLES], threads=threads)
        fused: dict[str, int] = {}
        if config.fuse and config.target == "cpu":
            step("fusing attention for ONNX Runtime CPU")
            fused = _fuse(pre, Path(work) / "fused.onnx")
            if any(fused.values()):
                pre = Path(work) / "fused.onnx"
        nodes = load_onnx_proto(pre).graph.node
        float_nodes = _resolve_excludes(config.exclude, nodes)
        ranking = _sensitivity_ranking(nodes, outliers)
        attempts = []
        candidate = Path(work) / "int8.onnx"
        while True:
            step(f"quantizing ({len(float_nodes)} nodes in float)")
            _quantize(pre, candidate, config, samples, float_nodes)
            quantized = Session(candidate, options=session_options(threads, spin=False))
            measured = accuracy(reference, quantized, checks)
            attempts.append(Attempt(len(float_nodes), measured))
            if config.guard is None or measured.value(config.guard.metric) >= config.guard.threshold:
                break
            float_nodes = _next_float_nodes(ranking, float_nodes)
            if float_nodes is None or len(attempts) >= MAX_ATTEMPTS:
                tried = ", ".join(f"{a.float_nodes} float nodes → {config.guard.metric} "
                                  f"{a.accuracy.value(config.guard.metric):.4f}" for a in attempts)
                raise QuantizeError(f"guard {config.guard.metric}>={config.guard.threshold:g} cannot be "
                                    f"met; tried {tried}; nothing written")
        step("timing FP32 vs INT8")
        speed = speed_check(reference, quantized)
        del quantized
        result = QuantResult(output, config, float_nodes, measured, speed, attempts,
                             heldout=str(heldout) if heldout else f"{calib} (calibration data)",
                             fused=fused, outliers=outliers)
        _write(candidate, output, proto, result)
    return result


def _data_paths(session: Session, calib, heldout) -> tuple[Path, Path | None]:
    """Calibration and held-out data: given, or bundled with a built-in model."""
    source = session.manifest.source if session.manifest else None
    bundled = BUNDLED.get(source)
    if calib is None:
        if bundled is None:
            raise QuantizeError("this model has no built-in calibration set; give --calib PATH")
        calib = bundled[0]
    if heldout is None and bundled is not None:
        heldout = bundled[1]
    return Path(calib), Path(heldout) if heldout else None


def _preprocess(model, out: Path) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # Symbolic shape inference fails on some torch.export graphs; ONNX shape inference suffices.
    # Optimization is skipped so node names stay those `edgert inspect` shows for --exclude
    # (ONNX Runtime still fuses at session creation).
    quant_pre_process(str(model), str(out), skip_symbolic_shape=True, skip_optimization=True)


def _resolve_excludes(items: Sequence[str], nodes) -> list[str]:
    """Node names for --exclude items, each a node name or an op type."""
    names = []
    for item in items:
        matched = [n.name for n in nodes if n.name == item or n.op_type == item]
        if not matched:
            raise QuantizeError(f"--exclude {item!r} matches no node name or op type in the model")
        names += [m for m in matched if m not in names]
    return names


def _quantize(pre: Path, out: Path, config: QuantConfig, samples, float_nodes: list[str]) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_dynamic, quantize_static)

    if config.mode == "dynamic":
        quantize_dynamic(str(pre), str(out), op_types_to_quantize=list(OP_TYPES),
                         per_channel=config.per_channel, weight_type=QuantType.QInt8,
                         nodes_to_exclude=float_nodes)
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._items = iter(samples)

        def get_next(self):
            return next(self._items, None)

    tensorrt = config.target == "tensorrt"
    # U8S8 on CPU: S8S8 QDQ ran 2x slower than FP32 on this machine's ONNX Runtime (DESIGN.md).
    # TensorRT's explicit quantization wants symmetric int8 on both sides.
    quantize_static(
        str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(OP_TYPES), per_channel=config.per_channel,
        activation_type=QuantType.QInt8 if tensorrt else QuantType.QUInt8,
        weight_type=QuantType.QInt8, nodes_to_exclude=float_nodes,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[config.method],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                       "DedicatedQDQPair": True} if tensorrt else {})


def _fuse(pre: Path, out: Path) -> dict[str, int]:
    """Fuse for ONNX Runtime CPU when onnxscript is installed (it comes with edgert[export])."""
    try:
        from edgert.quant.fuse import fuse_for_ort_cpu
    except ImportError:
        warnings.warn("onnxscript is not installed (pip install 'edgert[export]'), so attention "
                      "is not fused; the INT8 model will be slower", stacklevel=2)
        return {}
    return fuse_for_ort_cpu(pre, out)


def _sensitivity_ranking(nodes, stats: list[TensorStats]) -> list[tuple[str, list[str]]]:
    """Activation inputs of quantizable nodes, worst fake-INT8 SQNR first, each with the
    nodes that consume it. Fusion keeps the names of the tensors that feed MatMuls, so
    statistics taken on the unfused graph rank the fused graph's nodes."""
    consumers: dict[str, list[str]] = {}
    for node in nodes:
        if node.op_type in OP_TYPES:
            for tensor in node.input[:2]:
                consumers.setdefault(tensor, []).append(node.name)
    return [(s.name, consumers[s.name]) for s in stats if s.name in consumers]


def _next_float_nodes(ranking, float_nodes: list[str]) -> list[str] | None:
    """float_nodes plus the consumers of the worst tensor not yet fully in float."""
    for _, names in ranking:
        new = [n for n in names if n not in float_nodes]
        if new:
            return float_nodes + new
    return None


def _write(candidate: Path, output: Path, original, result: QuantResult) -> None:
    """Copy metadata (manifest with the quantization record, tokenizer) and save atomically."""
    import json

    import onnx

    from edgert.plan import Manifest

    model = onnx.load(str(candidate))
    props = {p.key: p.value for p in original.metadata_props}
    record = {
        "config": {**asdict(result.config), "guard": asdict(result.config.guard) if result.config.guard else None},
        "float_nodes": result.float_nodes, "accuracy": asdict(result.accuracy),
        "heldout": result.heldout, "speedup": result.speed.speedup,
        "fp32_p50_ms": result.speed.fp32_ms.p50, "int8_p50_ms": result.speed.int8_ms.p50,
        "timed_at": {"batch": result.speed.batch, "seq": result.speed.seq},
        "fused": result.fused,
    }
    if MANIFEST_KEY in props:
        manifest = Manifest.from_json(props[MANIFEST_KEY])
        manifest.extra = {**manifest.extra, "quantization": record}
        props[MANIFEST_KEY] = manifest.to_json()
    else:
        props["edgert.quantization"] = json.dumps(record)
    onnx.helper.set_model_props(model, props)
    with atomic_output(output) as tmp:
        onnx.save(model, str(tmp))


