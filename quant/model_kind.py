"""What a kind of model brings to `edgert quantize`, as protocols: its accuracy against FP32
(MeasuredAccuracy), its speed (Speed), how it measures both (Evaluation), and the kind itself
(ModelKind: metrics and default guard, op types, quantizer options, data, float-node ranking,
manifest record). The kinds are quant/encoder_kind.py, quant/image_kind.py and
quant/decoder_kind.py; quant/kinds.py picks one for a model.

Also what the kinds share: the request for their data, the graph as quantization sees it, and
the outlier-based float-node ranking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import onnx

from edgert.errors import QuantizeError
from edgert.model_info import load_onnx_proto
from edgert.quant.guard import Guard, guard_forms
from edgert.quant.kernels import OP_TYPES, Int8Kernel
from edgert.quant.outliers import TensorStats
from edgert.session import Session

if TYPE_CHECKING:  # annotations only: quantize imports this module
    import onnxruntime as ort

    from edgert.latency import LatencyStats
    from edgert.quant.quantize import QuantConfig, QuantResult

Step = Callable[[str], None]  # reports progress in words
Feeds = dict[str, np.ndarray]


class MeasuredAccuracy(Protocol):
    """A quantized model's accuracy against FP32 on held-out data (evaluate.Accuracy,
    evaluate.ImageAccuracy, decoder_eval.DecoderAccuracy). A dataclass: the manifest records
    its fields."""

    tolerance: str  # how close to the most accurate candidate counts as as accurate, in words

    def value(self, metric: str) -> float:
        """The number a guard on `metric` compares."""

    @property
    def score(self) -> float:
        """Higher is more accurate (ranks candidates and float-node probes)."""

    def close_to(self, best: MeasuredAccuracy) -> bool:
        """As accurate as `best` for choosing a kernel (within `tolerance`)."""

    def columns(self) -> dict[str, str]:
        """Table columns for the CLI: header → formatted value."""

    def summary(self, metric: str | None = None) -> str:
        """The accuracy in words, a guard's `metric` first where the order matters."""


class Speed(Protocol):
    """FP32 and INT8 latency, timed interleaved (evaluate.SpeedCheck, decoder_eval.DecodeSpeed)."""

    fp32_ms: LatencyStats
    int8_ms: LatencyStats

    @property
    def speedup(self) -> float:
        """FP32 p50 / INT8 p50."""

    @property
    def timed_at(self) -> dict[str, object]:
        """What was timed, for the manifest record (batch and seq; context and new tokens)."""

    @property
    def what(self) -> str:
        """What was timed, for the CLI."""


class Evaluation(Protocol):
    """Measures INT8 candidates against the FP32 model (its outputs computed once)."""

    def open(self, path: Path) -> object:
        """A candidate as accuracy() and speeds() take it."""

    def accuracy(self, candidate: object) -> MeasuredAccuracy:
        """`candidate`'s accuracy on the held-out data."""

    def speeds(self, candidates: Sequence[object]) -> list[Speed]:
        """Each candidate's speed, FP32 and all candidates timed interleaved."""


@dataclass(frozen=True)
class DataRequest:
    """What a kind loads its data from: the FP32 model (`reference`, opened from `model`), the
    user's calibration and held-out paths (None: the kind's default), the config, and how to
    run and report."""

    reference: Session
    model: Path
    calib: Path | None
    heldout: Path | None
    config: QuantConfig
    threads: int | None
    options: ort.SessionOptions
    step: Step


@dataclass
class KindData:
    """A kind's data: the evaluation of candidates on held-out data, the calibration feeds (one
    example each), and where the held-out data came from, in words."""

    evaluation: Evaluation
    samples: list[Feeds]
    heldout: str


@dataclass(frozen=True)
class QuantizableGraph:
    """The pre-processed graph's nodes and which of them INT8 quantization covers: OP_TYPES,
    and with const_weight_only (dynamic mode, decoders) only those whose second input is a
    weight, not an activation."""

    nodes: Sequence[onnx.NodeProto]
    weights: frozenset[str]
    const_weight_only: bool

    @classmethod
    def load(cls, path: Path, *, const_weight_only: bool) -> QuantizableGraph:
        graph = load_onnx_proto(path).graph
        return cls(list(graph.node), frozenset(i.name for i in graph.initializer), const_weight_only)

    def quantizable(self, node: onnx.NodeProto) -> bool:
        if node.op_type not in OP_TYPES:
            return False
        return not self.const_weight_only or (len(node.input) > 1 and node.input[1] in self.weights)

    @property
    def quantizable_names(self) -> frozenset[str]:
        """With all of these in float, nothing is INT8."""
        return frozenset(n.name for n in self.nodes if self.quantizable(n))


NodeGroups = list[tuple[str, list[str]]]  # (a tensor or module, the quantizable nodes it names)
Probe = Callable[[Int8Kernel, list[str]], MeasuredAccuracy]  # quantize with these float nodes, measure


@dataclass
class FloatRanking:
    """The order in which groups of nodes move to float until the guard holds.
    order(kernel, float_nodes): the groups, most sensitive first (asked once, when the guard
    first fails); modules: groups named after torch modules, reported by name when wholly
    in float."""

    order: Callable[[Int8Kernel, list[str]], NodeGroups]
    modules: NodeGroups = field(default_factory=list)


class ModelKind(Protocol):
    """A kind of model under `edgert quantize` (encoder, image classifier, decoder).

    name: the kind's name; noun / plural: how messages name such a model; metrics: the guard
    metrics it takes, metric_words: what they measure; default_guard: the guard without
    --guard (None: no guard); fuses: attention fusion for ONNX Runtime CPU applies;
    const_weight_only: only MatMuls by a weight are quantized, whatever the mode;
    qdq_options: extra static-QDQ options for onnxruntime.quantization."""

    name: str
    noun: str
    plural: str
    metrics: tuple[str, ...]
    metric_words: str
    default_guard: Guard | None
    fuses: bool
    const_weight_only: bool
    qdq_options: dict[str, object]

    def matches(self, session: Session) -> bool:
        """Whether `session` holds a model of this kind."""

    def op_types(self, mode: str) -> tuple[str, ...]:
        """The op types quantized in `mode` ("static" or "dynamic")."""

    def load(self, request: DataRequest) -> KindData:
        """Calibration feeds and the evaluation on held-out data."""

    def ranking(self, graph: QuantizableGraph, outliers: list[TensorStats], probe: Probe,
                step: Step) -> FloatRanking:
        """How nodes move to float when the guard fails."""

    def record(self, result: QuantResult) -> dict:
        """The manifest record's entries for this kind (beyond those every kind has)."""


def guard_of(kind: ModelKind, guard: Guard | None) -> Guard | None:
    """The guard a model of `kind` is held to: `guard`, else the kind's default; a guard on a
    metric the kind does not take is a QuantizeError."""
    if guard is None:
        return kind.default_guard
    if guard.metric not in kind.metrics:
        raise QuantizeError(f"guard {guard} does not fit {kind.noun}: its guard is "
                            f"{guard_forms(kind.metrics)} ({kind.metric_words})")
    return guard


def outlier_ranking(graph: QuantizableGraph, outliers: list[TensorStats]) -> FloatRanking:
    """Activation inputs of quantizable nodes, worst fake-INT8 SQNR first, each with the nodes
    that consume it, whatever the kernel. Fusion keeps the names of the tensors that feed
    MatMuls, so statistics taken on the unfused graph rank the fused graph's nodes."""
    consumers: dict[str, list[str]] = {}
    for node in graph.nodes:
        if graph.quantizable(node):
            for tensor in node.input[:2]:
                consumers.setdefault(tensor, []).append(node.name)
    groups = [(s.name, consumers[s.name]) for s in outliers if s.name in consumers]
    return FloatRanking(lambda kernel, float_nodes: groups)
