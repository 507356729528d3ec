"""`edgert quantize --int8`: ONNX Runtime's QDQ / dynamic quantization, calibrated, with the
INT8 kernel configuration chosen for this CPU by measurement and an accuracy guard that keeps
the most sensitive nodes in float until the guard holds.

This module is the orchestration. What depends on the kind of model (its data, metrics and
default guard, op types, float-node ranking and record) is its ModelKind (quant/kinds.py);
what depends on where it runs, its Int8Target (quant/targets.py); the kernels and how one is
chosen are quant/kernels.py, the guard quant/guard.py, custom-op inlining quant/inline.py.
The fusions (quant/fuse.py, onnxscript) are imported where they run: onnxscript is optional,
and without it quantize runs unfused.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import onnx
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quantize_dynamic, quantize_static)
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgert import cpu
from edgert._io import atomic_output, check_output_path, path_argument, temporary_directory, tempfiles_in
from edgert.errors import OptionError, QuantizeError
from edgert.model_info import load_onnx_proto
from edgert.plan import MANIFEST_KEY, Manifest
from edgert.quant.guard import Guard
from edgert.quant.inline import functions_to_inline, inline_functions, model_nodes
from edgert.quant.kernels import U8S8, Candidate, Int8Kernel, choose_kernel
from edgert.quant.kinds import kind_for
from edgert.quant.model_kind import (DataRequest, Evaluation, Feeds, FloatRanking, MeasuredAccuracy, ModelKind,
                                     QuantizableGraph, Speed, Step, guard_of)
from edgert.quant.outliers import OUTLIER_SAMPLES, TensorStats, activation_stats, producer_scope
from edgert.quant.targets import TARGETS, Int8Target
from edgert.session import Session, session_options

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                 "QLinearMatMul", "QLinearConv", "ConvInteger", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat", "QAttention", "QGemm"}
MODES, METHODS = ("static", "dynamic"), ("minmax", "entropy", "percentile")
CALIBRATION_METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                       "percentile": CalibrationMethod.Percentile}
QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
MAX_ATTEMPTS = 16


@dataclass
class QuantConfig:
    """How to quantize. exclude: node names, op types or torch module paths kept in float.
    target: a TARGETS name. isa: the instruction sets to choose INT8 kernels for (e.g. "avx2";
    None or "auto": $EDGERT_CPU_ISA, else detect). guard: None gives the kind's default."""

    mode: str = "static"
    method: str = "minmax"
    per_channel: bool = True
    exclude: tuple[str, ...] = ()
    target: str = "cpu"
    calib_size: int = 128
    guard: Guard | None = None
    fuse: bool = True  # attention/LayerNorm/GELU fusions for ONNX Runtime CPU (where the target and kind allow)
    isa: str | None = None

    def check(self) -> None:
        for name, value, allowed in (("mode", self.mode, MODES), ("method", self.method, METHODS),
                                     ("target", self.target, tuple(TARGETS))):
            if value not in allowed:
                raise QuantizeError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        TARGETS[self.target].check_mode(self.mode)
        if self.calib_size < 1:
            raise QuantizeError(f"calib size must be >= 1, got {self.calib_size}")
        blank = [item for item in self.exclude if not item.strip()]
        if blank:
            raise OptionError(f"--exclude {blank[0]!r} is blank; give a node name, an op type or a torch "
                              "module path (such as lm_head or layers.0)")
        if self.guard is not None:
            self.guard.check()
        if self.isa is not None:
            cpu.parse_isa(self.isa)


@dataclass
class Attempt:
    """One quantization try: how many nodes stayed in float, and the accuracy it reached."""

    float_nodes: int
    accuracy: MeasuredAccuracy


@dataclass
class QuantResult:
    """What quantize_model did: the kernel chosen among the measured candidates and why, the
    nodes kept in float (float_modules: the torch modules wholly in float → their nodes,
    decoders), each attempt's accuracy, the final accuracy and speed against FP32, and what
    was done to the graph before (inlined edgert ops, fusions)."""

    path: Path
    config: QuantConfig
    float_nodes: list[str]
    accuracy: MeasuredAccuracy
    speed: Speed
    kind: ModelKind
    attempts: list[Attempt] = field(default_factory=list)
    heldout: str = ""
    fused: dict[str, int] = field(default_factory=dict)
    outliers: list[TensorStats] = field(default_factory=list)  # worst fake-INT8 SQNR first
    isa: cpu.CpuIsa | None = None
    kernel: Int8Kernel = U8S8
    candidates: list[Candidate] = field(default_factory=list)
    choice: str = ""
    float_modules: dict[str, list[str]] = field(default_factory=dict)
    default_guard: bool = False  # config.guard is the kind's default, not asked for
    inlined: list[str] = field(default_factory=list)  # edgert ops whose function bodies were inlined

    @property
    def decoder(self) -> bool:
        """A text-generation graph, judged by next-token agreement."""
        return self.kind.name == "decoder"

    @property
    def image(self) -> bool:
        """An image classifier, judged by its logits on held-out images."""
        return self.kind.name == "image"


def quantize_model(model: str | os.PathLike, output: str | os.PathLike, config: QuantConfig, *,
                   calib: str | os.PathLike | None = None, heldout: str | os.PathLike | None = None,
                   threads: int | None = None, on_step: Step | None = None) -> QuantResult:
    """Quantize `model` to INT8 at `output` with the kernel configuration that is accurate and
    fastest on this CPU (see choose_kernel), enforcing `config.guard` on held-out data.

    The model's kind (quant/kinds.py) says how: a decoder (text-generation graph) is judged by
    next-token agreement with FP32 on held-out prompts, held to top1>=0.9 unless
    `config.guard` says otherwise, and timed per decoded token; its projections are
    quantized, its attention and KV cache stay in float. An image classifier needs `calib`
    (a folder of images or an .npz of pixel_values) and is judged on `heldout` images (else
    the calibration images) by top-1 agreement and logits SQNR, and by top-1 accuracy where
    they are labelled. Other models are judged by their first output on `heldout` feeds.
    edgert custom ops whose function bodies hold MatMul/Gemm/Conv are inlined first, so
    those get quantized."""
    step = on_step or (lambda _: None)
    config.check()
    calib = None if calib is None else path_argument(calib, "calibration data path", OptionError)
    heldout = None if heldout is None else path_argument(heldout, "held-out data path", OptionError)
    output = check_output_path(output, inputs=(model, calib, heldout))
    options = session_options(threads, spin=False)
    reference = Session(model, options=options)
    model = reference.path
    proto = load_onnx_proto(model)
    target = TARGETS[config.target]
    _check_quantizable(proto, model, target)
    kind = kind_for(reference)
    default_guard = config.guard is None and kind.default_guard is not None
    config = replace(config, guard=guard_of(kind, config.guard))
    isa = cpu.cpu_isa(config.isa)
    kernels = target.kernels(config.mode, isa)
    data = kind.load(DataRequest(reference, model, calib, heldout, config, threads, options, step))

    with temporary_directory(prefix="edgert-quant-") as work, tempfiles_in(work):
        pre, inlined = _prepare(proto, model, work, step)
        step("activation outliers")
        outliers = activation_stats(pre, data.samples[:OUTLIER_SAMPLES], threads=threads)
        fused: dict[str, int] = {}
        if config.fuse and target.fuses and kind.fuses:
            step("fusing attention for ONNX Runtime CPU")
            fused = _fuse(pre, work / "fused.onnx")
            if any(fused.values()):
                pre = work / "fused.onnx"
        graph = QuantizableGraph.load(pre, const_weight_only=kind.const_weight_only or config.mode == "dynamic")
        float_nodes = _resolve_excludes(config.exclude, graph)
        trial = _Trial(pre, work, config, kind, data.samples, data.evaluation, graph, step)
        ranking = kind.ranking(graph, outliers, trial.probe, step)

        candidates, paths, speeds = trial.measure_candidates(kernels, float_nodes)
        chosen, choice = choose_kernel(candidates, config.guard)
        candidates[chosen].chosen = True
        kernel = kernels[chosen]
        path, final_nodes, attempts = trial.meet_guard(kernel, paths[chosen], candidates[chosen].accuracy,
                                                       float_nodes, ranking)
        speed = trial.speed(path, candidates, speeds, chosen, unchanged=final_nodes == float_nodes)
        result = QuantResult(output, config, final_nodes, attempts[-1].accuracy, speed, kind, attempts,
                             heldout=data.heldout, fused=fused, outliers=outliers, isa=isa, kernel=kernel,
                             candidates=candidates, choice=target.choice(choice), default_guard=default_guard,
                             inlined=inlined,
                             float_modules={name: nodes for name, nodes in ranking.modules
                                            if set(nodes) <= set(final_nodes)})
        _write(path, output, proto, result)
    return result


@dataclass
class _Trial:
    """Quantizes the pre-processed graph one way and measures it against FP32."""

    pre: Path
    work: Path
    config: QuantConfig
    kind: ModelKind
    samples: list[Feeds]
    evaluation: Evaluation
    graph: QuantizableGraph
    step: Step

    def quantize(self, kernel: Int8Kernel, float_nodes: list[str], path: Path) -> tuple[object, MeasuredAccuracy]:
        """Quantize to `path`; the candidate as the evaluation opens it, and its accuracy."""
        _quantize(self.pre, path, self.config, kernel, self.samples, float_nodes,
                  op_types=self.kind.op_types(self.config.mode),
                  qdq_options={**kernel.qdq_options, **self.kind.qdq_options})
        candidate = self.evaluation.open(path)
        return candidate, self.evaluation.accuracy(candidate)

    def probe(self, kernel: Int8Kernel, float_nodes: list[str]) -> MeasuredAccuracy:
        """The accuracy with `float_nodes` in float (a throwaway model, for rankings)."""
        return self.quantize(kernel, float_nodes, self.work / "probe.onnx")[1]

    def measure_candidates(self, kernels: Sequence[Int8Kernel], float_nodes: list[str]
                           ) -> tuple[list[Candidate], list[Path], list[Speed]]:
        """Each kernel's accuracy; with more than one, their speed too, timed together."""
        candidates, paths, opened = [], [], []
        for i, kernel in enumerate(kernels):
            self.step(f"quantizing with {kernel.label} ({i + 1} of {len(kernels)} kernel candidates)")
            paths.append(self.work / f"candidate{i}.onnx")
            candidate, measured = self.quantize(kernel, float_nodes, paths[-1])
            opened.append(candidate)
            candidates.append(Candidate(kernel, measured))
        if len(candidates) == 1:
            return candidates, paths, []
        self.step(f"timing FP32 vs {len(candidates)} INT8 kernel candidates")
        speeds = self.evaluation.speeds(opened)
        for candidate, speed in zip(candidates, speeds):
            candidate.speedup = speed.speedup
        return candidates, paths, speeds

    def meet_guard(self, kernel: Int8Kernel, path: Path, measured: MeasuredAccuracy, float_nodes: list[str],
                   ranking: FloatRanking) -> tuple[Path, list[str], list[Attempt]]:
        """Keep the most sensitive nodes in float, in the order `ranking` gives (asked once,
        when the guard first fails), until the guard holds (`path` is already quantized with
        `float_nodes` and measured)."""
        guard = self.config.guard
        attempts = [Attempt(len(float_nodes), measured)]
        order = None
        while guard is not None and not guard.holds(measured):
            order = ranking.order(kernel, float_nodes) if order is None else order
            float_nodes = _next_float_nodes(order, float_nodes)
            nothing_left = float_nodes is not None and self.graph.quantizable_names <= set(float_nodes)
            if float_nodes is None or nothing_left or len(attempts) >= MAX_ATTEMPTS:
                tried = ", ".join(f"{a.float_nodes} float nodes → {guard.metric} {guard.shown(a.accuracy)}"
                                  for a in attempts)
                raise QuantizeError(f"guard {guard} cannot be met with INT8 {kernel.label}; "
                                    f"tried {tried}; nothing written")
            self.step(f"quantizing with {kernel.label} ({len(float_nodes)} nodes in float)")
            path = self.work / "int8.onnx"
            _, measured = self.quantize(kernel, float_nodes, path)
            attempts.append(Attempt(len(float_nodes), measured))
        return path, float_nodes, attempts

    def speed(self, path: Path, candidates: list[Candidate], speeds: list[Speed], chosen: int, *,
              unchanged: bool) -> Speed:
        """The kept model's speed: the candidates' interleaved timing where it is the chosen
        candidate `unchanged` by the guard, else timed now (and given to a lone candidate)."""
        if speeds and unchanged:
            return speeds[chosen]
        self.step("timing FP32 vs INT8")
        speed = self.evaluation.speeds([self.evaluation.open(path)])[0]
        if len(candidates) == 1 and unchanged:
            candidates[0].speedup = speed.speedup
        return speed


def _check_quantizable(proto: onnx.ModelProto, model: object, target: Int8Target) -> None:
    """Refuse graphs that are quantized already, and graphs with ops `target` cannot parse (in
    If branches and function bodies too: a decoder's GroupQueryAttention sits in both)."""
    ops = {(n.domain, n.op_type) for n in model_nodes(proto)}
    already = sorted({op for _, op in ops} & QUANTIZED_OPS)
    if already:
        raise QuantizeError(f"{model} is already quantized (it has {', '.join(already)})")
    target.check_ops(model, ops)


def _prepare(proto: onnx.ModelProto, model: Path, work: Path, step: Step) -> tuple[Path, list[str]]:
    """The graph quantization starts from, in `work`: edgert ops whose bodies hold quantizable
    ops inlined (their names returned), then ONNX Runtime's pre-processing."""
    functions = functions_to_inline(proto)
    inlined = [name for _, name in functions]
    if functions:
        step(f"inlining the function bodies of {', '.join(inlined)}")
        inline_functions(proto, functions, work / "inlined.onnx")
        model = work / "inlined.onnx"
    step("pre-processing")
    pre = work / "pre.onnx"
    # Symbolic shape inference fails on some torch.export graphs; ONNX shape inference suffices.
    # Optimization is skipped so node names stay those `edgert inspect` shows for --exclude
    # (ONNX Runtime still fuses at session creation).
    quant_pre_process(str(model), str(pre), skip_symbolic_shape=True, skip_optimization=True)
    return pre, inlined


def _resolve_excludes(items: Sequence[str], graph: QuantizableGraph) -> list[str]:
    """Node names for --exclude items, each a node name, an op type, or a torch module path
    (whole dotted parts of where torch.onnx says a node came from, e.g. `lm_head` or
    `layers.0`: the quantizable nodes inside that module)."""
    names = []
    for item in items:
        matched = [n.name for n in graph.nodes if n.name == item or n.op_type == item]
        if not matched:
            part = f".{item.strip('.')}."
            matched = [n.name for n in graph.nodes
                       if graph.quantizable(n) and part in f".{producer_scope(n)}."]
        if not matched:
            raise QuantizeError(f"--exclude {item!r} matches no node name or op type in the model, "
                                "nor a torch module path (such as lm_head or layers.0) of a quantizable node")
        names += [m for m in matched if m not in names]
    return names


def _quantize(pre: Path, out: Path, config: QuantConfig, kernel: Int8Kernel, samples: list[Feeds],
              float_nodes: list[str], *, op_types: Sequence[str], qdq_options: dict[str, object]) -> None:
    """ONNX Runtime's quantizer on `pre`: dynamic, or static QDQ calibrated on `samples`
    (`qdq_options`: its extra_options)."""
    # The quantizer logs warnings on the root logger (e.g. a Conv bias computed inside an
    # inlined edgert op, not an initializer); they would reach the user as noise.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        if config.mode == "dynamic":  # activations are always uint8 (DynamicQuantizeLinear)
            quantize_dynamic(str(pre), str(out), op_types_to_quantize=list(op_types),
                             per_channel=config.per_channel, reduce_range=kernel.reduce_range,
                             weight_type=QUANT_TYPES[kernel.weight], nodes_to_exclude=float_nodes)
            return
        quantize_static(
            str(pre), str(out), _Feeds(samples), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(op_types), per_channel=config.per_channel,
            reduce_range=kernel.reduce_range, activation_type=QUANT_TYPES[kernel.activation],
            weight_type=QUANT_TYPES[kernel.weight], nodes_to_exclude=float_nodes,
            calibrate_method=CALIBRATION_METHODS[config.method], extra_options=qdq_options)
    finally:
        logging.disable(previous)


class _Feeds(CalibrationDataReader):
    """The calibration feeds, one at a time, as ONNX Runtime's calibrators read them."""

    def __init__(self, samples: list[Feeds]) -> None:
        self._items = iter(samples)

    def get_next(self) -> Feeds | None:
        return next(self._items, None)


def _fuse(pre: Path, out: Path) -> dict[str, int]:
    """Fuse for ONNX Runtime CPU when onnxscript is installed (it comes with edgert[export])."""
    try:  # imported here: onnxscript is optional, and quantizing without it runs unfused
        from edgert.quant.fuse import fuse_for_ort_cpu
    except ImportError:
        warnings.warn("onnxscript is not installed (pip install 'edgert[export]'), so attention "
                      "is not fused; the INT8 model will be slower", stacklevel=2)
        return {}
    # Residual Add+LayerNorm stays unfused, as in `edgert export`: ONNX Runtime's CPU
    # SkipLayerNormalization is slower than the two ops (dynamic INT8 MiniLM 1.29x faster without).
    return fuse_for_ort_cpu(pre, out, skip_layer_norm=False)


def _next_float_nodes(order: list[tuple[str, list[str]]], float_nodes: list[str]) -> list[str] | None:
    """float_nodes plus the nodes of the first group in `order` not yet wholly in float."""
    for _, names in order:
        new = [n for n in names if n not in float_nodes]
        if new:
            return float_nodes + new
    return None


def quant_record(result: QuantResult) -> dict:
    """What the manifest records about a quantization (also `edgert quantize --json`)."""
    config = result.config
    return {
        "config": {**asdict(config), "guard": asdict(config.guard) if config.guard else None},
        "float_nodes": result.float_nodes, "accuracy": asdict(result.accuracy),
        "heldout": result.heldout, "speedup": result.speed.speedup,
        "fp32_p50_ms": result.speed.fp32_ms.p50, "int8_p50_ms": result.speed.int8_ms.p50,
        "timed_at": result.speed.timed_at,
        "fused": result.fused,
        "cpu": result.isa.to_dict() if result.isa else None,
        "kernel": {"label": result.kernel.label, **asdict(result.kernel)},
        "candidates": [{"kernel": c.kernel.label, "config": asdict(c.kernel), **asdict(c.accuracy),
                        "speedup": c.speedup, "chosen": c.chosen} for c in result.candidates],
        "choice": result.choice,
        **result.kind.record(result),
        "inlined_functions": result.inlined,
    }


def _write(candidate: Path, output: Path, original: onnx.ModelProto, result: QuantResult) -> None:
    """Copy metadata (manifest with the quantization record, tokenizer) and save atomically."""
    model = onnx.load(str(candidate))
    props = {p.key: p.value for p in original.metadata_props}
    record = quant_record(result)
    if MANIFEST_KEY in props:
        manifest = Manifest.from_json(props[MANIFEST_KEY])
        manifest.extra = {**manifest.extra, "quantization": record}
        props[MANIFEST_KEY] = manifest.to_json()
    else:
        props["edgert.quantization"] = json.dumps(record)
    onnx.helper.set_model_props(model, props)
    with atomic_output(output) as tmp:
        onnx.save(model, str(tmp))
