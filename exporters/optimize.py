"""Optimize an exported graph for the runtime that will run it (today: ONNX Runtime CPU).

The fusions themselves are `edgert.quant.fuse` (shared with `edgert quantize`); this module
decides what the export keeps and what its manifest says about it.

`edgert.quant.fuse` (onnxscript) is imported where the graph is fused: `edgert export --help`
and `edgert analyze --help` import this module and must not load onnxscript.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import onnx

from edgert.errors import first_line
from edgert.op_spec import DOMAIN as CUSTOM_DOMAIN
from edgert.quant.inline import subgraphs

ORT_CPU = "onnxruntime-cpu"
# Residual Add + LayerNormalization stay unfused in the export: ONNX Runtime 1.32's CPU
# SkipLayerNormalization kernel is slower than those two ops, alone and inside MiniLM
# (bench/skip_layernorm_check.py). edgert's sessions also keep ONNX Runtime from fusing them at load
# (edgert.session.ORT_DISABLED_OPTIMIZERS); other runtimes may fuse them again.
FUSE_SKIP_LAYER_NORM = False


@dataclass
class Optimization:
    """What was done to the graph: `target` None means it was left portable (standard ONNX
    plus edgert ops); `note` says why it was left so, or what did not fuse."""

    target: str | None = None
    fusions: dict[str, int] = field(default_factory=dict)
    note: str | None = None

    def manifest_entries(self) -> dict:
        """The manifest `extra` keys recording this optimization."""
        entries: dict = {"optimized_for": self.target}
        if self.target:
            entries["fusions"] = self.fusions
        if self.note:
            entries["optimization_note"] = self.note
        return entries


def optimize_for_ort_cpu(model):
    """Fuse `model` (an onnx.ModelProto) for ONNX Runtime CPU: attention into
    com.microsoft.MultiHeadAttention and bias + GELU into BiasGelu; residual + LayerNorm only
    if FUSE_SKIP_LAYER_NORM. Returns (model, Optimization) whose `fusions` counts each fused op
    type applied; the model comes back unfused, with a warning and the reason in the note, if
    fusion fails or would change the edgert custom ops.
    """
    from edgert.quant import fuse

    before = _custom_ops(model)
    try:
        fused, fusions = fuse.fuse_model(model, skip_layer_norm=FUSE_SKIP_LAYER_NORM)
        onnx.checker.check_model(fused)
    except Exception as exc:  # onnxscript's rewriter on a graph it was not written for
        return _unfused(model, f"fusion failed ({type(exc).__name__}: {first_line(exc)})")
    if _custom_ops(fused) != before:
        return _unfused(model, "fusion would have changed the edgert custom ops")
    note = None
    if before["nodes"] and not fusions.get("MultiHeadAttention"):
        ops = ", ".join(f"{CUSTOM_DOMAIN}::{op}" for op in sorted({op for op, _ in before["nodes"]}))
        note = f"attention left unfused: the graph uses {ops}"
    return fused, Optimization(ORT_CPU, fusions, note)


def count_ops(model, op_types) -> dict[str, int]:
    """How many nodes of each of `op_types` `model` runs: subgraphs (If branches) included, and
    the body of a model-local function once per node that calls it (an edgert::HeadwiseAttention
    body holds its layer's GroupQueryAttention nodes)."""
    counts = dict.fromkeys(op_types, 0)
    functions = {(f.domain, f.name, f.overload): f for f in model.functions}

    def walk(nodes, calling=()):
        for node in nodes:
            if node.op_type in counts:
                counts[node.op_type] += 1
            for sub in subgraphs(node):
                walk(sub.node, calling)
            key = (node.domain, node.op_type, node.overload)
            if key in functions and key not in calling:
                walk(functions[key].node, (*calling, key))

    walk(model.graph.node)
    return counts


def _unfused(model, reason: str):
    warnings.warn(f"graph not optimized for ONNX Runtime CPU: {reason}; exporting it unfused",
                  stacklevel=3)
    return model, Optimization(None, {}, f"not optimized: {reason}")


def _custom_ops(model) -> dict[str, list]:
    """The edgert-domain nodes (op type, attributes) and function bodies of `model`."""
    nodes = sorted((n.op_type, tuple(a.SerializeToString() for a in n.attribute))
                   for n in model.graph.node if n.domain == CUSTOM_DOMAIN)
    functions = sorted(f.name for f in model.functions if f.domain == CUSTOM_DOMAIN)
    return {"nodes": nodes, "functions": functions}
