"""Transformer fusions for ONNX Runtime CPU that keep every projection a plain MatMul.

onnxscript's `optimize_for_ort` fuses dynamo-exported encoders (ONNX Runtime's own
`optimize_model` finds nothing to fuse in them), but its last step packs Q, K and V into one
`Attention` node whose weights are computed by a Concat and whose mask is a float bias: ONNX
Runtime's quantizer leaves such a node in FP32, so a quarter of the encoder's MatMul work would
stay in float. Running the same fusions minus that packing step gives `MultiHeadAttention` fed
by three quantizable MatMuls, plus SkipLayerNormalization and BiasGelu. The FP32 graph runs
faster fused too, so `edgert export` applies the same fusions except SkipLayerNormalization
(`skip_layer_norm=False`: ONNX Runtime 1.32's CPU kernel for it is slower than the Add +
LayerNormalization it replaces, see exporters/optimize.py); fusing an exported graph again
only adds that one.

Custom ops survive: the model's own functions (the bodies of edgert ops such as
`edgert::ClippedSoftmax`) are set aside while the optimizer runs, since it inlines every
function it sees, and put back afterwards; attention whose softmax is such an op is then not
fused into MultiHeadAttention.

The result uses com.microsoft ops, so it is for ONNX Runtime only (not TensorRT). onnxscript
comes with edgert[export]: `edgert quantize` imports this module only to fuse, and runs
unfused (with a warning) without it.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import onnx_ir as ir
from onnx_ir.passes import common as passes
from onnxscript.optimizer import optimize
from onnxscript.rewriter import rewrite
from onnxscript.rewriter.ort_fusions import ORT_PATTERN_REWRITE_RULES, shape_optimization
from onnxscript.rewriter.ort_fusions.bias_gelu import fuse_bias_gelu
from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu
from onnxscript.rewriter.ort_fusions.mha import fuse_mha1, fuse_mha2
from onnxscript.rewriter.ort_fusions.mha_bias import fuse_mha_bias
from onnxscript.rewriter.ort_fusions.mha_scale import fuse_mha_scale
from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
from onnxscript.rewriter.ort_fusions.sdpa_via_mha import replace_sdpa_by_mha
from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_layer_normalization

from edgert.errors import first_line

FUSED_DOMAIN = "com.microsoft"
FUSED_OPS = ("MultiHeadAttention", "SkipLayerNormalization", "BiasGelu")
PARTIAL_FUSION_DOMAIN = "ai.onnxruntime._fusion"  # onnxscript's intermediate ops (no kernel)


class FusionError(RuntimeError):
    """Fusion stopped half-way: the graph holds an op no runtime has a kernel for."""


def fuse_for_ort_cpu(source: str | Path, destination: str | Path, *,
                     skip_layer_norm: bool = True) -> dict[str, int]:
    """Fuse attention, skip+LayerNorm (unless `skip_layer_norm` is False) and bias+GELU of
    `source` into `destination`; return how many nodes of each fused op type the result has
    (all zero: nothing matched). If fusion fails, `destination` is a copy of `source`, the
    counts are zero and a warning says why."""
    model = ir.load(str(source))
    try:
        counts = fuse_ir_model(model, skip_layer_norm=skip_layer_norm)
    except Exception as exc:  # onnxscript's rewriter on a graph it was not written for
        warnings.warn(f"attention not fused for ONNX Runtime CPU ({type(exc).__name__}: "
                      f"{first_line(exc)}); the model stays unfused", stacklevel=2)
        shutil.copyfile(source, destination)
        return dict.fromkeys(fused_op_types(skip_layer_norm), 0)
    ir.save(model, str(destination))
    return counts


def fuse_model(model, *, skip_layer_norm: bool = True):
    """`model` (an onnx.ModelProto) fused as fuse_for_ort_cpu fuses a file: returns the fused
    ModelProto (metadata_props, IR version and custom-op functions kept) and the op counts."""
    fused = ir.serde.deserialize_model(model)
    counts = fuse_ir_model(fused, skip_layer_norm=skip_layer_norm)
    return ir.serde.serialize_model(fused), counts


def fuse_ir_model(model, *, skip_layer_norm: bool = True) -> dict[str, int]:
    """Fuse an onnx_ir.Model in place; return the counts of the fused op types it applied
    (fused_op_types). `skip_layer_norm=False` leaves each residual Add + LayerNormalization
    as it is. Raises FusionError if an intermediate op of onnxscript's fusions is left over
    (then `model` is unusable)."""
    passes.ShapeInferencePass()(model)  # with the functions in place, so custom ops get types
    own_functions = dict(model.functions)
    model.functions.clear()
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)
    fuse_erfgelu(model)
    if skip_layer_norm:
        fuse_skip_layer_normalization(model)
    fuse_sdpa(model, apply_shape_inference=True)
    # replace_sdpa_by_mha: attention the MHA patterns miss (e.g. a gate between it and the
    # output projection) becomes MultiHeadAttention between reshapes.
    for fuse in (fuse_mha1, fuse_mha2, fuse_mha_scale, fuse_mha_bias, fuse_bias_gelu,
                 replace_sdpa_by_mha):
        fuse(model)
    optimize(model)  # inlines partial-fusion functions that no later fusion consumed
    rewrite(model, ORT_PATTERN_REWRITE_RULES)
    left = sorted({n.op_type for n in model.graph if n.domain == PARTIAL_FUSION_DOMAIN})
    if left:
        raise FusionError(f"partial fusion left {', '.join(left)} in the graph")
    model.functions.update(own_functions)
    passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(model)
    passes.ShapeInferencePass()(model)
    return fused_op_counts(model.graph, fused_op_types(skip_layer_norm))


def fused_op_types(skip_layer_norm: bool = True) -> tuple[str, ...]:
    """The com.microsoft op types a fusion with this setting produces."""
    return tuple(op for op in FUSED_OPS if skip_layer_norm or op != "SkipLayerNormalization")


def fused_op_counts(nodes, ops: tuple[str, ...] = FUSED_OPS) -> dict[str, int]:
    """How many nodes of each fused op type in `ops` `nodes` (IR or proto nodes) hold."""
    nodes = list(nodes)
    return {op: sum(n.op_type == op and n.domain == FUSED_DOMAIN for n in nodes) for op in ops}
