"""Decoders (text-generation graphs edgert.Generator runs) under `edgert quantize`: judged by
next-token top-1 agreement and KL divergence along FP32's greedy continuations of held-out
prompts and timed per decoded token (quant/decoder_eval.py), calibrated on feeds recorded
while FP32 generates, held to top1>=0.9 without --guard. Only projections (MatMuls by a
weight) are quantized: attention over the KV cache stays in float, and the graph unfused
(onnxscript's attention fusions do not know edgert's per-head cache). Float nodes move
a torch module at a time, the most damaging first."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from edgert.quant import decoder_eval
from edgert.quant.calib import BUNDLED_TEXT
from edgert.quant.guard import Guard
from edgert.quant.kernels import OP_TYPES, Int8Kernel
from edgert.quant.model_kind import (DataRequest, FloatRanking, KindData, NodeGroups, Probe, QuantizableGraph,
                                     Step)
from edgert.quant.outliers import OUTLIER_SAMPLES, TensorStats, producer_scope
from edgert.session import Session

if TYPE_CHECKING:  # annotations only: quantize imports the kinds
    from edgert.quant.quantize import QuantResult

ACCURACY_METHOD = ("next-token top-1 agreement and mean KL(p_fp32 || p_int8) in nats, "
                   "teacher-forced along FP32's greedy continuations of held-out prompts")
FLOAT_RANKING = "per decoder layer or module: each quantized alone, the most damaging kept in float first"
# `model.model.layers.3.mlp.up_proj` → `model.model.layers.3`: one decoder layer.
_LAYER_SCOPE = re.compile(r"^(.*?(?:^|\.)(?:layers|layer|h|blocks)\.\d+)(?:\.|$)")


class DecoderKind:
    """A decoder: its manifest's task is text-generation and it describes its KV cache."""

    name = "decoder"
    noun = "a decoder"
    plural = "decoders"
    metrics = decoder_eval.METRICS
    metric_words = "next-token agreement with FP32"
    # 9 in 10 next tokens as FP32 predicts them.
    default_guard = Guard("top1", 0.9)
    fuses = False
    const_weight_only = True
    # Static QDQ: attention over the KV cache stays in float (only MatMuls by a weight), and
    # MatMul outputs are not quantized: with Q/DQ on the projections' outputs, which reach the
    # attention If-branches and the new-key outputs through Reshapes, ONNX Runtime 1.32's
    # QDQPropagationTransformer aborts the process when a session is created.
    qdq_options: dict[str, object] = {"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": list(OP_TYPES)}

    def matches(self, session: Session) -> bool:
        return decoder_eval.is_decoder(session)

    def op_types(self, mode: str) -> tuple[str, ...]:
        return OP_TYPES

    def load(self, request: DataRequest) -> KindData:
        """The evaluation (held-out prompts and FP32's continuations), and the calibration
        feeds, recorded while FP32 generates after the calibration prompts."""
        reference, config, step = request.reference, request.config, request.step
        if config.mode == "static":
            decoder_eval.check_static_feeds(config.method)
        step("held-out prompts: FP32 continuations")
        prompts, source = decoder_eval.decoder_prompts(
            reference, request.heldout, count=decoder_eval.HELDOUT_PROMPTS, seed=decoder_eval.HELDOUT_SEED,
            bundled=BUNDLED_TEXT[1], role="held-out data")
        evaluation = decoder_eval.DecoderEvaluation(request.model, prompts, threads=request.threads)
        # Dynamic INT8 needs feeds only for the outlier report and the float-node ranking.
        limit = config.calib_size if config.mode == "static" else min(config.calib_size, OUTLIER_SAMPLES)
        count = math.ceil(limit / (1 + decoder_eval.CALIB_DECODE_STEPS))
        step("calibration feeds from FP32 generation")
        calib_prompts, _ = decoder_eval.decoder_prompts(
            reference, request.calib, count=count, seed=decoder_eval.CALIB_SEED, bundled=BUNDLED_TEXT[0],
            role="calibration data")
        samples = decoder_eval.calibration_feeds(reference, calib_prompts, limit=limit)
        words = (f"{source}; each continued greedily by FP32 for {decoder_eval.CONTINUATION} tokens, "
                 "both models teacher-forced along it")
        return KindData(evaluation, samples, words)

    def ranking(self, graph: QuantizableGraph, outliers: list[TensorStats], probe: Probe,
                step: Step) -> FloatRanking:
        """Whole torch modules (decoder layers, lm_head), ranked by the damage each does
        quantized alone. A decoder's error compounds token after token, and which modules it
        comes from (first layers' attention, say) tells little about their activations'
        outliers: each module's damage is measured instead, when the guard first fails."""
        modules = module_groups(graph)

        def order(kernel: Int8Kernel, float_nodes: list[str]) -> NodeGroups:
            return rank_by_damage(modules, kernel, float_nodes, probe, step)

        return FloatRanking(order, modules)

    def record(self, result: QuantResult) -> dict:
        return {"accuracy_method": ACCURACY_METHOD, "default_guard": result.default_guard,
                "float_modules": list(result.float_modules), "float_ranking": FLOAT_RANKING}


def module_groups(graph: QuantizableGraph) -> NodeGroups:
    """Quantizable nodes grouped by the decoder layer (or other torch module, e.g. lm_head)
    they came from, in graph order."""
    groups: dict[str, list[str]] = {}
    for node in graph.nodes:
        if graph.quantizable(node):
            scope = producer_scope(node)
            match = _LAYER_SCOPE.match(scope)
            groups.setdefault(match.group(1) if match else scope, []).append(node.name)
    return list(groups.items())


def rank_by_damage(modules: NodeGroups, kernel: Int8Kernel, float_nodes: list[str], probe: Probe,
                   step: Step) -> NodeGroups:
    """`modules` not yet wholly in float, most damaging first: each is quantized alone with
    `kernel`, everything else in float, and ranked by its accuracy (worst score first)."""
    pending = [(name, nodes) for name, nodes in modules if any(n not in float_nodes for n in nodes)]
    everything = [n for _, nodes in pending for n in nodes]
    scored = []
    for i, (name, nodes) in enumerate(pending):
        step(f"sensitivity of {name} ({i + 1} of {len(pending)} modules, quantized alone)")
        others = float_nodes + [n for n in everything if n not in nodes and n not in float_nodes]
        scored.append((probe(kernel, others).score, i))
    return [pending[i] for _, i in sorted(scored)]
