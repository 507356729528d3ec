"""`edgert quantize --int8`: ONNX Runtime's QDQ / dynamic quantization, calibrated, with the
INT8 kernel configuration chosen for this CPU by measurement and an accuracy guard that keeps
the most sensitive nodes in float until the guard holds.

Encoders are judged by their first output on held-out feeds (cosine, SQNR; quant/evaluate.py),
image classifiers by top-1 agreement and SQNR of their logits on held-out images (and top-1
accuracy where the images are labelled), decoders (text-generation graphs) by next-token top-1
agreement and KL divergence along FP32's greedy continuations of held-out prompts, and timed
per decoded token (quant/decoder_eval.py).
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

from edgert import cpu
from edgert._io import atomic_output, check_output_path, temporary_directory, tempfiles_in
from edgert.errors import QuantizeError
from edgert.images import image_spec, is_image_model
from edgert.model_info import load_onnx_proto
from edgert.plan import MANIFEST_KEY, channels_last_overload
from edgert.quant import decoder_eval
from edgert.quant.calib import BUNDLED, BUNDLED_TEXT, load_calibration, load_images
from edgert.quant.decoder_eval import DecodeSpeed, DecoderAccuracy, DecoderEvaluation, is_decoder
from edgert.quant.evaluate import (IMAGE_METRICS, Accuracy, EncoderEvaluation, ImageAccuracy,
                                   ImageEvaluation, SpeedCheck)
from edgert.quant.outliers import TensorStats, activation_stats, producer_scope
from edgert.session import Session, session_options

QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger",
                 "QLinearMatMul", "QLinearConv", "ConvInteger", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat", "QAttention", "QGemm"}
ORT_ONLY_DOMAIN = "com.microsoft"
OP_TYPES = ("MatMul", "Gemm", "Conv")
# Static INT8 of image classifiers also quantizes what lies between the convolutions (residual
# adds, squeeze-excite, concatenations, reshapes), so activations stay INT8 from one QLinearConv
# to the next: with only Conv/MatMul/Gemm, every residual Add costs a Dequantize/Quantize pair
# and efficientvit-m0 ran 1.3x *slower* than FP32 at batch 16 (AVX512-VNNI, 2 threads);
# with these, 1.0-1.07x (bench/vision_check.py).
IMAGE_OP_TYPES = (*OP_TYPES, "Add", "Mul", "Relu", "Sigmoid", "GlobalAveragePool", "ReduceMean", "Concat",
                  "Split", "Reshape", "Transpose", "Pad", "Slice")
MODES, METHODS, TARGETS = ("static", "dynamic"), ("minmax", "entropy", "percentile"), ("cpu", "tensorrt")
MAX_ATTEMPTS = 16
OUTLIER_SAMPLES = 32  # enough for stable max/kurtosis ranks; the full set costs minutes
# Guard thresholds a quantized model can meet: cosine 1 means bit-exact; 8-bit rounding noise
# alone caps SQNR near 50 dB (6.02 dB per bit + 1.76), so 100 dB is out of any INT8 model's reach.
# Top-1 agreement can be complete; a KL of 0 would need bit-exact logits.
GUARD_RANGES = {"cosine": (0.0, 1.0, "at least 0 and below 1"),
                "sqnr": (0.0, 100.0, "between 0 and 100 dB"),
                "top1": (0.0, 1.0, "between 0 and 1"),
                "kl": (0.0, math.inf, "above 0 and finite")}
CEILING_METRICS = ("kl",)  # guards that bound a metric from above: kl<=VALUE
DECODER_METRICS = decoder_eval.METRICS
GUARD_WORDS = ("cosine>=V or sqnr>=V for encoders, top1>=V or kl<=V for decoders, "
               "top1>=V, sqnr>=V or cosine>=V for image classifiers")
# The guards each kind of model takes, and what they measure.
KIND_GUARDS = {
    "encoder": (("cosine", "sqnr"), "cosine>=V or sqnr>=V",
                "its first output against FP32; top1 is for decoders and image classifiers, kl for decoders"),
    "decoder": (DECODER_METRICS, "top1>=V or kl<=V", "next-token agreement with FP32"),
    "image": (IMAGE_METRICS, "top1>=V, sqnr>=V or cosine>=V",
              "top-1 agreement, SQNR or cosine of its logits against FP32's on held-out images"),
}
EDGERT_DOMAIN = "edgert"  # custom ops whose bodies travel as model-local ONNX functions



@dataclass(frozen=True)
class Guard:
    """`metric >= threshold` (`kl <= threshold`), checked on held-out data after quantizing."""

    metric: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> Guard:
        """`cosine>=0.99`, `sqnr>=30`, `top1>=0.9` or `kl<=0.05`; a malformed or unreachable
        guard is a QuantizeError."""
        match = re.fullmatch(r"\s*(\w+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*", text)
        if not match or match.group(1) not in GUARD_RANGES:
            raise QuantizeError(f"bad guard {text!r}; expected {GUARD_WORDS}, e.g. cosine>=0.99")
        metric, operator = match.group(1), match.group(2)
        if (operator == "<=") != (metric in CEILING_METRICS):
            right = "<=" if metric in CEILING_METRICS else ">="
            raise QuantizeError(f"bad guard {text!r}; {metric} is bounded with {right}: {metric}{right}VALUE")
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

    def holds(self, measured: Accuracy | DecoderAccuracy | ImageAccuracy) -> bool:
        return self.margin(measured) >= 0

    def margin(self, measured: Accuracy | DecoderAccuracy | ImageAccuracy) -> float:
        """How far `measured` is on the good side of the threshold (negative: guard fails)."""
        value = measured.value(self.metric)
        return self.threshold - value if self.metric in CEILING_METRICS else value - self.threshold

    def __str__(self) -> str:
        return f"{self.metric}{'<=' if self.metric in CEILING_METRICS else '>='}{self.threshold:g}"


# A decoder quantized without --guard is held to this: 9 in 10 next tokens as FP32 predicts them.
DEFAULT_DECODER_GUARD = Guard("top1", 0.9)


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


@dataclass
class QuantConfig:
    """How to quantize. exclude: node names or op types kept in float. isa: the instruction
    sets to choose INT8 kernels for (e.g. "avx2"; None or "auto": $EDGERT_CPU_ISA, else detect)."""

    mode: str = "static"
    method: str = "minmax"
    per_channel: bool = True
    exclude: tuple[str, ...] = ()
    target: str = "cpu"
    calib_size: int = 128
    guard: Guard | None = None
    fuse: bool = True  # attention/LayerNorm/GELU fusions for ONNX Runtime CPU (target cpu only)
    isa: str | None = None

    def check(self) -> None:
        for name, value, allowed in (("mode", self.mode, MODES), ("method", self.method, METHODS),
                                     ("target", self.target, TARGETS)):
            if value not in allowed:
                raise QuantizeError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.target == "tensorrt" and self.mode == "dynamic":
            raise QuantizeError("TensorRT takes static (QDQ) INT8 only; use --mode static")
        if self.calib_size < 1:
            raise QuantizeError(f"calib size must be >= 1, got {self.calib_size}")
        if self.guard is not None:
            self.guard.check()
        if self.isa is not None:
            cpu.parse_isa(self.isa)


def candidate_kernels(config: QuantConfig, isa: cpu.CpuIsa) -> tuple[Int8Kernel, ...]:
    """The INT8 kernel configurations to measure for `config` on a CPU with `isa`."""
    if config.target == "tensorrt":
        return (TENSORRT,)
    return KERNELS[isa.int8_class][config.mode]


@dataclass
class Candidate:
    """One kernel configuration, quantized with the initial float nodes and measured.
    speedup: FP32 p50 / INT8 p50, all candidates timed interleaved (None: not timed alone)."""

    kernel: Int8Kernel
    accuracy: Accuracy | DecoderAccuracy | ImageAccuracy
    speedup: float | None = None
    chosen: bool = False


def choose_kernel(candidates: Sequence[Candidate], guard: Guard | None) -> tuple[int, str]:
    """Index of the candidate to keep, and why.

    With a guard: the fastest candidate that meets it; if none does, the one closest to it
    (the greedy float-node search then starts from there, needing the fewest float nodes).
    Without a guard: the fastest of those as accurate as the most accurate one (Accuracy:
    SQNR within 1 dB; DecoderAccuracy: mean KL within 10^0.1 of it), so speed never buys more
    than that much accuracy. One candidate: itself. Speeds come from one interleaved run of
    FP32 and every candidate (encoders: batch 1, seq 128; decoders: per decoded token).
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


@dataclass
class Attempt:
    """One quantization try: how many nodes stayed in float, and the accuracy it reached."""

    float_nodes: int
    accuracy: Accuracy | DecoderAccuracy | ImageAccuracy


@dataclass
class QuantResult:
    path: Path
    config: QuantConfig
    float_nodes: list[str]
    accuracy: Accuracy | DecoderAccuracy | ImageAccuracy
    speed: SpeedCheck | DecodeSpeed
    attempts: list[Attempt] = field(default_factory=list)
    heldout: str = ""
    fused: dict[str, int] = field(default_factory=dict)
    outliers: list[TensorStats] = field(default_factory=list)  # worst fake-INT8 SQNR first
    isa: cpu.CpuIsa | None = None
    kernel: Int8Kernel = U8S8
    candidates: list[Candidate] = field(default_factory=list)
    choice: str = ""
    decoder: bool = False  # a text-generation graph, judged by next-token agreement
    # decoders: the modules (layers, lm_head) wholly in float → their nodes
    float_modules: dict[str, list[str]] = field(default_factory=dict)
    default_guard: bool = False  # config.guard is DEFAULT_DECODER_GUARD, not asked for
    image: bool = False  # an image classifier, judged by its logits on held-out images
    inlined: list[str] = field(default_factory=list)  # edgert ops whose function bodies were inlined


Step = Callable[[str], None]


def quantize_model(model: str | os.PathLike, output: str | os.PathLike, config: QuantConfig, *,
                   calib: str | os.PathLike | None = None, heldout: str | os.PathLike | None = None,
                   threads: int | None = None, on_step: Step | None = None) -> QuantResult:
    """Quantize `model` to INT8 at `output` with the kernel configuration that is accurate and
    fastest on this CPU (see choose_kernel), enforcing `config.guard` on held-out data.

    A decoder (text-generation graph) is judged by next-token agreement with FP32 on held-out
    prompts (decoder_eval), held to DEFAULT_DECODER_GUARD unless `config.guard` says otherwise,
    and timed per decoded token; its projections are quantized, its attention and KV cache
    stay in float. An image classifier (task image-classification) needs `calib` (a folder
    of images or an .npz of pixel_values) and is judged on `heldout` images (else the
    calibration images) by top-1 agreement and logits SQNR, and by top-1 accuracy where
    they are labelled. edgert custom ops whose function bodies hold MatMul/Gemm/Conv are
    inlined first, so those get quantized."""
    step = on_step or (lambda _: None)
    config.check()
    output = check_output_path(output, inputs=(model, calib, heldout))
    options = session_options(threads, spin=False)
    reference = Session(model, options=options)
    proto = load_onnx_proto(model)
    _check_quantizable(proto, model, config)
    decoder = is_decoder(reference)
    image = not decoder and is_image_model(reference.manifest)
    default_guard = decoder and config.guard is None
    config = _guard_for(config, "decoder" if decoder else "image" if image else "encoder")
    isa = cpu.cpu_isa(config.isa)
    kernels = candidate_kernels(config, isa)
    if decoder:
        evaluation, samples, heldout_words = _decoder_data(reference, model, config, calib, heldout,
                                                           threads, step)
    elif image:
        evaluation, samples, heldout_words = _image_data(reference, config, calib, heldout, options, step)
    else:
        calib, heldout = _data_paths(reference, calib, heldout)
        step("calibration data")
        samples = load_calibration(calib, reference, size=config.calib_size,
                                   same_length=config.method != "minmax")
        checks = load_calibration(heldout, reference, role="held-out data") if heldout else samples
        evaluation = EncoderEvaluation(reference, checks, options)
        heldout_words = str(heldout) if heldout else f"{calib} (calibration data)"

    with temporary_directory(prefix="edgert-quant-") as work, tempfiles_in(work):
        pre = work / "pre.onnx"
        functions = _functions_to_inline(proto)
        inlined = [name for _, name in functions]
        if functions:
            step(f"inlining the function bodies of {', '.join(inlined)}")
            _inline(proto, functions, work / "inlined.onnx")
        step("pre-processing")
        _preprocess(work / "inlined.onnx" if functions else model, pre)
        step("activation outliers")
        outliers = activation_stats(pre, samples[:OUTLIER_SAMPLES], threads=threads)
        fused: dict[str, int] = {}
        # Decoders stay unfused: onnxscript's attention fusions do not know edgert's per-head cache.
        if config.fuse and config.target == "cpu" and not decoder:
            step("fusing attention for ONNX Runtime CPU")
            fused = _fuse(pre, work / "fused.onnx")
            if any(fused.values()):
                pre = work / "fused.onnx"
        graph = load_onnx_proto(pre).graph
        quantizable = _Quantizable({i.name for i in graph.initializer},
                                   const_weight_only=decoder or config.mode == "dynamic")
        float_nodes = _resolve_excludes(config.exclude, graph.node, quantizable)
        trial = _Trial(pre, work, config, samples, evaluation, step, decoder=decoder,
                       quantizable_nodes=frozenset(n.name for n in graph.node if quantizable(n)), image=image)
        modules = _module_groups(graph.node, quantizable) if decoder else []
        if decoder:
            # A decoder's error compounds token after token, and which modules it comes from
            # (first layers' attention, say) tells little about their activations' outliers:
            # each module's damage is measured instead, when the guard first fails.
            ranking = partial(trial.rank_modules, modules)
        else:
            ranking = partial(_constant, _sensitivity_ranking(graph.node, outliers, quantizable))

        candidates, paths, speeds = trial.measure_candidates(kernels, float_nodes)
        chosen, choice = choose_kernel(candidates, config.guard)
        if config.target == "tensorrt":
            choice = "symmetric S8S8 QDQ, the form TensorRT's explicit quantization takes"
        candidates[chosen].chosen = True
        kernel = kernels[chosen]
        path, final_nodes, attempts = trial.meet_guard(kernel, paths[chosen], candidates[chosen].accuracy,
                                                       float_nodes, ranking)
        if speeds and final_nodes == float_nodes:
            speed = speeds[chosen]
        else:
            step("timing FP32 vs INT8")
            speed = evaluation.speeds([evaluation.open(path)])[0]
            if len(candidates) == 1 and final_nodes == float_nodes:
                candidates[0].speedup = speed.speedup
        result = QuantResult(output, config, final_nodes, attempts[-1].accuracy, speed, attempts,
                             heldout=heldout_words, fused=fused, outliers=outliers, isa=isa,
                             kernel=kernel, candidates=candidates, choice=choice, decoder=decoder,
                             default_guard=default_guard, image=image, inlined=inlined,
                             float_modules={name: nodes for name, nodes in modules if set(nodes) <= set(final_nodes)})
        _write(path, output, proto, result)
    return result


def _guard_for(config: QuantConfig, kind: str) -> QuantConfig:
    """`config` with the guard a model of this kind (a KIND_GUARDS key) takes (decoders:
    DEFAULT_DECODER_GUARD when none is given); a guard on another metric is a QuantizeError."""
    guard = config.guard
    if kind == "decoder" and guard is None:
        return replace(config, guard=DEFAULT_DECODER_GUARD)
    metrics, allowed, why = KIND_GUARDS[kind]
    if guard is not None and guard.metric not in metrics:
        model = {"decoder": "a decoder", "image": "an image classifier"}.get(kind, "this model")
        raise QuantizeError(f"guard {guard} does not fit {model}: its guard is {allowed} ({why})")
    return config


def _image_data(reference: Session, config: QuantConfig, calib, heldout, options, step: Step
                ) -> tuple[ImageEvaluation, list[dict], str]:
    """An image classifier's evaluation (FP32 logits on the held-out images), its
    calibration feeds (one image each), and the held-out data in words."""
    spec, input_name = image_spec(reference)
    output = next((s for s in reference.outputs if s.name == "logits"), reference.outputs[0])
    if len(output.shape) != 2:
        raise QuantizeError(f"{reference.path.name}: an image classifier's output is logits "
                            f"[batch, classes], not {output.describe()}")
    classes = output.shape[1] if isinstance(output.shape[1], int) else None
    if calib is None:
        raise QuantizeError("image models have no built-in calibration set; give --calib FOLDER "
                            "(images, preprocessed as the model's manifest says) or an .npz of pixel_values")
    step("calibration images")
    calib_data = load_images(calib, spec, classes=classes, size=config.calib_size)
    held = calib_data
    if heldout is not None:
        step("held-out images")
        held = load_images(heldout, spec, classes=classes, role="held-out data")
    step("held-out images: FP32 logits")
    evaluation = ImageEvaluation(reference, held.pixel_values, held.labels, options,
                                 input_name=input_name, output_name=output.name)
    words = held.source if heldout is not None else f"{held.source}: the calibration images, no --heldout given"
    return evaluation, calib_data.feeds(input_name), words


def _functions_to_inline(proto) -> list[tuple[str, str]]:
    """(domain, name) of the model-local functions of edgert-domain ops used in `proto`
    whose bodies hold ops INT8 quantizes (MatMul, Gemm, Conv). Quantization sees such an op
    as one opaque node (ONNX Runtime inlines it only when loading), so they are inlined
    first; bodies without them (edgert::ClippedSoftmax) stay as they are."""
    functions = {(f.domain, f.name): f for f in proto.functions}

    def quantizable(key, seen=()) -> bool:
        body = functions.get(key)
        return body is not None and key not in seen and any(
            n.op_type in OP_TYPES and n.domain in ("", "ai.onnx") or quantizable((n.domain, n.op_type), (*seen, key))
            for n in body.node)

    used = {(n.domain, n.op_type) for n in proto.graph.node}
    used |= {(n.domain, n.op_type) for f in proto.functions for n in f.node}
    return sorted(k for k in functions if k[0] == EDGERT_DOMAIN and k in used and quantizable(k))


def _inline(proto, functions: list[tuple[str, str]], out: Path) -> None:
    """Save `proto` with `functions` inlined to `out`, without the edgert opset import once
    no edgert op is left, and with constant sub-graphs folded.

    Each call gets a copy of its function (of its overload, or of that overload's channels-last
    twin where the model has one: ONNX Runtime's INT8 convolutions run channels-last) whose nodes are named `CALL/NODE`
    and carry the call's metadata (torch's module scope): ONNX's inliner leaves body nodes
    unnamed, and --exclude, the outlier report and the float-node search all go by names and
    scopes. Bodies that slice their weights out of stacked inputs (a CascadedGroupAttention
    picks each head's convolution weights with Gather) are folded afterwards, so those
    weights are initializers again and get per-channel weight quantization."""
    import onnx
    import onnx_ir as ir
    import onnx_ir.passes.common as ir_passes
    import onnxscript.optimizer
    from onnx import inliner

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    bodies = {(f.domain, f.name, f.overload): f for f in model.functions}
    calls = []
    for index, node in enumerate(model.graph.node):
        if (node.domain, node.op_type) not in functions:
            continue
        twin = (node.domain, node.op_type, channels_last_overload(node.overload))
        body = onnx.FunctionProto()
        body.CopyFrom(bodies.get(twin) or bodies[(node.domain, node.op_type, node.overload)])
        body.name, body.overload = f"{node.op_type}__call{index}", ""
        prefix = node.name or f"{node.op_type}_{index}"
        for k, inner in enumerate(body.node):
            inner.name = f"{prefix}/{inner.name or f'{inner.op_type}_{k}'}"
            have = {prop.key for prop in inner.metadata_props}
            for prop in node.metadata_props:
                if prop.key not in have:
                    inner.metadata_props.add(key=prop.key, value=prop.value)
        node.op_type, node.overload = body.name, ""
        model.functions.append(body)
        calls.append((body.domain, body.name))
    inlined = inliner.inline_selected_functions(model, calls)
    unused = [f for f in inlined.functions if (f.domain, f.name) in functions]
    for function in unused:
        inlined.functions.remove(function)
    if not any(n.domain == EDGERT_DOMAIN for n in inlined.graph.node) and not inlined.functions:
        kept = [o for o in inlined.opset_import if o.domain != EDGERT_DOMAIN]
        del inlined.opset_import[:]
        inlined.opset_import.extend(kept)
    graph = ir.from_proto(inlined)
    # The default size limits (about a thousand elements) would leave most weights unfolded.
    onnxscript.optimizer.fold_constants(graph, input_size_limit=1 << 24, output_size_limit=1 << 24)
    onnxscript.optimizer.remove_unused_nodes(graph)
    ir_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16)(graph)
    onnx.save(ir.to_proto(graph), str(out))


def _decoder_data(reference: Session, model, config: QuantConfig, calib, heldout, threads: int | None,
                  step: Step) -> tuple[DecoderEvaluation, list[dict], str]:
    """A decoder's evaluation (held-out prompts and FP32's continuations) and its calibration
    feeds, recorded while FP32 generates after the calibration prompts."""
    if config.mode == "static":
        decoder_eval.check_static_feeds(config.method)
    step("held-out prompts: FP32 continuations")
    prompts, source = decoder_eval.decoder_prompts(
        reference, heldout, count=decoder_eval.HELDOUT_PROMPTS, seed=decoder_eval.HELDOUT_SEED,
        bundled=BUNDLED_TEXT[1], role="held-out data")
    evaluation = DecoderEvaluation(Path(model), prompts, threads=threads)
    # Dynamic INT8 needs feeds only for the outlier report and the float-node ranking.
    limit = config.calib_size if config.mode == "static" else min(config.calib_size, OUTLIER_SAMPLES)
    count = math.ceil(limit / (1 + decoder_eval.CALIB_DECODE_STEPS))
    step("calibration feeds from FP32 generation")
    calib_prompts, _ = decoder_eval.decoder_prompts(
        reference, calib, count=count, seed=decoder_eval.CALIB_SEED, bundled=BUNDLED_TEXT[0],
        role="calibration data")
    samples = decoder_eval.calibration_feeds(reference, calib_prompts, limit=limit)
    words = (f"{source}; each continued greedily by FP32 for {decoder_eval.CONTINUATION} tokens, "
             "both models teacher-forced along it")
    return evaluation, samples, words


@dataclass(frozen=True)
class _Quantizable:
    """Which nodes ONNX Runtime quantizes: MatMul / Gemm / Conv, and with const_weight_only
    (dynamic mode, decoders) only those whose second input is a weight, not an activation."""

    weights: set[str]
    const_weight_only: bool

    def __call__(self, node) -> bool:
        if node.op_type not in OP_TYPES:
            return False
        return not self.const_weight_only or (len(node.input) > 1 and node.input[1] in self.weights)


@dataclass
class _Trial:
    """Quantizes the pre-processed graph one way and measures it against FP32."""

    pre: Path
    work: Path
    config: QuantConfig
    samples: list
    evaluation: EncoderEvaluation | DecoderEvaluation | ImageEvaluation
    step: Step
    decoder: bool = False
    quantizable_nodes: frozenset[str] = frozenset()  # with all of them in float nothing is INT8
    image: bool = False  # an image classifier: static INT8 also covers IMAGE_OP_TYPES

    def quantize(self, kernel: Int8Kernel, float_nodes: list[str], path: Path
                 ) -> tuple[object, Accuracy | DecoderAccuracy | ImageAccuracy]:
        """Quantize to `path`; the candidate as the evaluation opens it, and its accuracy."""
        _quantize(self.pre, path, self.config, kernel, self.samples, float_nodes, decoder=self.decoder,
                  op_types=IMAGE_OP_TYPES if self.image and self.config.mode == "static" else OP_TYPES)
        candidate = self.evaluation.open(path)
        return candidate, self.evaluation.accuracy(candidate)

    def measure_candidates(self, kernels: Sequence[Int8Kernel], float_nodes: list[str]
                           ) -> tuple[list[Candidate], list[Path], list[SpeedCheck | DecodeSpeed]]:
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

    def rank_modules(self, modules: list[tuple[str, list[str]]], kernel: Int8Kernel,
                     float_nodes: list[str]) -> list[tuple[str, list[str]]]:
        """`modules` (name, quantizable nodes) most damaging first: each is quantized alone,
        everything else in float, and ranked by its accuracy (worst score first)."""
        scored = []
        pending = [(name, nodes) for name, nodes in modules if any(n not in float_nodes for n in nodes)]
        everything = [n for _, nodes in pending for n in nodes]
        for i, (name, nodes) in enumerate(pending):
            self.step(f"sensitivity of {name} ({i + 1} of {len(pending)} modules, quantized alone)")
            others = float_nodes + [n for n in everything if n not in nodes and n not in float_nodes]
            _, measured = self.quantize(kernel, others, self.work / "probe.onnx")
            scored.append((measured.score, i))
        return [pending[i] for _, i in sorted(scored)]

    def meet_guard(self, kernel: Int8Kernel, path: Path, measured: Accuracy | DecoderAccuracy | ImageAccuracy,
                   float_nodes: list[str], rank: Callable[[Int8Kernel, list[str]], list]
                   ) -> tuple[Path, list[str], list[Attempt]]:
        """Keep the most sensitive nodes in float, in the order `rank(kernel, float_nodes)`
        gives (asked once, when the guard first fails), until the guard holds (`path` is
        already quantized with `float_nodes` and measured)."""
        guard = self.config.guard
        attempts = [Attempt(len(float_nodes), measured)]
        ranking = None
        while guard is not None and not guard.holds(measured):
            ranking = rank(kernel, float_nodes) if ranking is None else ranking
            float_nodes = _next_float_nodes(ranking, float_nodes)
            nothing_left = float_nodes is not None and self.quantizable_nodes <= set(float_nodes)
            if float_nodes is None or nothing_left or len(attempts) >= MAX_ATTEMPTS:
                shown = "{:.3g}" if guard.metric in CEILING_METRICS else "{:.4f}"
                tried = ", ".join(f"{a.float_nodes} float nodes → {guard.metric} "
                                  + shown.format(a.accuracy.value(guard.metric)) for a in attempts)
                raise QuantizeError(f"guard {guard} cannot be met with INT8 {kernel.label}; "
                                    f"tried {tried}; nothing written")
            self.step(f"quantizing with {kernel.label} ({len(float_nodes)} nodes in float)")
            path = self.work / "int8.onnx"
            _, measured = self.quantize(kernel, float_nodes, path)
            attempts.append(Attempt(len(float_nodes), measured))
        return path, float_nodes, attempts


def _check_quantizable(proto, model, config: QuantConfig) -> None:
    """Refuse graphs that are quantized already, and ONNX Runtime-only graphs for TensorRT."""
    ops = {(n.domain, n.op_type) for n in proto.graph.node}
    already = sorted({op for _, op in ops} & QUANTIZED_OPS)
    if already:
        raise QuantizeError(f"{model} is already quantized (it has {', '.join(already)})")
    ort_only = sorted({op for domain, op in ops if domain == ORT_ONLY_DOMAIN})
    if config.target == "tensorrt" and ort_only:
        raise QuantizeError(f"{model} has ONNX Runtime-only {ORT_ONLY_DOMAIN} ops ({', '.join(ort_only)}), "
                            "which TensorRT cannot parse; export it with --no-optimize for --target tensorrt")


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


def _resolve_excludes(items: Sequence[str], nodes, quantizable: Callable[[object], bool]) -> list[str]:
    """Node names for --exclude items, each a node name, an op type, or a torch module path
    (whole dotted parts of where torch.onnx says a node came from, e.g. `lm_head` or
    `layers.0`: the quantizable nodes inside that module)."""
    names = []
    for item in items:
        matched = [n.name for n in nodes if n.name == item or n.op_type == item]
        if not matched:
            part = f".{item.strip('.')}."
            matched = [n.name for n in nodes if quantizable(n) and part in f".{producer_scope(n)}."]
        if not matched:
            raise QuantizeError(f"--exclude {item!r} matches no node name or op type in the model, "
                                "nor a torch module path (such as lm_head or layers.0) of a quantizable node")
        names += [m for m in matched if m not in names]
    return names


def _quantize(pre: Path, out: Path, config: QuantConfig, kernel: Int8Kernel, samples,
              float_nodes: list[str], *, decoder: bool = False, op_types: Sequence[str] = OP_TYPES) -> None:
    # ONNX Runtime's quantizer logs warnings on the root logger (e.g. a Conv bias computed
    # inside an inlined edgert op, not an initializer); they would reach the user as noise.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        _ort_quantize(pre, out, config, kernel, samples, float_nodes, decoder=decoder, op_types=op_types)
    finally:
        logging.disable(previous)


def _ort_quantize(pre: Path, out: Path, config: QuantConfig, kernel: Int8Kernel, samples,
                  float_nodes: list[str], *, decoder: bool = False, op_types: Sequence[str] = OP_TYPES) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_dynamic, quantize_static)

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if config.mode == "dynamic":  # activations are always uint8 (DynamicQuantizeLinear)
        quantize_dynamic(str(pre), str(out), op_types_to_quantize=list(OP_TYPES),
                         per_channel=config.per_channel, reduce_range=kernel.reduce_range,
                         weight_type=types[kernel.weight], nodes_to_exclude=float_nodes)
        return

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._items = iter(samples)

        def get_next(self):
            return next(self._items, None)

    # TensorRT's explicit quantization wants symmetric int8 on both sides.
    quantize_static(
        str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(op_types), per_channel=config.per_channel,
        reduce_range=kernel.reduce_range, activation_type=types[kernel.activation],
        weight_type=types[kernel.weight], nodes_to_exclude=float_nodes,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[config.method],
        extra_options={**({"ActivationSymmetric": True, "WeightSymmetric": True,
                           "DedicatedQDQPair": True} if kernel.symmetric else {}),
                       **(_DECODER_QDQ_OPTIONS if decoder else {})})


# Static QDQ of decoders: attention over the KV cache stays in float (only MatMuls by a
# weight), and MatMul outputs are not quantized: with Q/DQ on the projections' outputs, which
# reach the attention If-branches and the new-key outputs through Reshapes, ONNX Runtime 1.32's
# QDQPropagationTransformer aborts the process when a session is created.
_DECODER_QDQ_OPTIONS = {"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": list(OP_TYPES)}


def _fuse(pre: Path, out: Path) -> dict[str, int]:
    """Fuse for ONNX Runtime CPU when onnxscript is installed (it comes with edgert[export])."""
    try:
        from edgert.quant.fuse import fuse_for_ort_cpu
    except ImportError:
        warnings.warn("onnxscript is not installed (pip install 'edgert[export]'), so attention "
                      "is not fused; the INT8 model will be slower", stacklevel=2)
        return {}
    # Residual Add+LayerNorm stays unfused, as in `edgert export`: ONNX Runtime's CPU
    # SkipLayerNormalization is slower than the two ops (dynamic INT8 MiniLM 1.29x faster without).
    return fuse_for_ort_cpu(pre, out, skip_layer_norm=False)


def _sensitivity_ranking(nodes, stats: list[TensorStats], quantizable: Callable[[object], bool]
                         ) -> list[tuple[str, list[str]]]:
    """Activation inputs of quantizable nodes, worst fake-INT8 SQNR first, each with the
    nodes that consume it. Fusion keeps the names of the tensors that feed MatMuls, so
    statistics taken on the unfused graph rank the fused graph's nodes."""
    consumers: dict[str, list[str]] = {}
    for node in nodes:
        if quantizable(node):
            for tensor in node.input[:2]:
                consumers.setdefault(tensor, []).append(node.name)
    return [(s.name, consumers[s.name]) for s in stats if s.name in consumers]


def _constant(ranking: list, *_) -> list:
    """A ranking known before quantizing, whatever the kernel and float nodes."""
    return ranking


# `model.model.layers.3.mlp.up_proj` → `model.model.layers.3`: one decoder layer.
_LAYER_SCOPE = re.compile(r"^(.*?(?:^|\.)(?:layers|layer|h|blocks)\.\d+)(?:\.|$)")


def _module_groups(nodes, quantizable: Callable[[object], bool]) -> list[tuple[str, list[str]]]:
    """Quantizable nodes grouped by the decoder layer (or other torch module, e.g. lm_head)
    they came from, in graph order."""
    groups: dict[str, list[str]] = {}
    for node in nodes:
        if quantizable(node):
            scope = producer_scope(node)
            match = _LAYER_SCOPE.match(scope)
            groups.setdefault(match.group(1) if match else scope, []).append(node.name)
    return list(groups.items())


def _next_float_nodes(ranking, float_nodes: list[str]) -> list[str] | None:
    """float_nodes plus the consumers of the worst tensor not yet fully in float."""
    for _, names in ranking:
        new = [n for n in names if n not in float_nodes]
        if new:
            return float_nodes + new
    return None


def quant_record(result: QuantResult) -> dict:
    """What the manifest records about a quantization (also `edgert quantize --json`)."""
    record = {
        "config": {**asdict(result.config), "guard": asdict(result.config.guard) if result.config.guard else None},
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
    }
    if result.decoder:
        record["accuracy_method"] = ("next-token top-1 agreement and mean KL(p_fp32 || p_int8) in nats, "
                                     "teacher-forced along FP32's greedy continuations of held-out prompts")
        record["default_guard"] = result.default_guard
        record["float_modules"] = list(result.float_modules)
        record["float_ranking"] = "per decoder layer or module: each quantized alone, the most damaging kept in float first"
    if result.image:
        record["accuracy_method"] = ("logits on held-out images against FP32: top-1 agreement, SQNR, cosine; "
                                     "top-1 accuracy of both models where the images are labelled")
    record["inlined_functions"] = result.inlined
    return record


def _write(candidate: Path, output: Path, original, result: QuantResult) -> None:
    """Copy metadata (manifest with the quantization record, tokenizer) and save atomically."""
    import json

    import onnx

    from edgert.plan import Manifest

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


