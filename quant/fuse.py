"""Transformer fusions for ONNX Runtime CPU that keep every projection a plain MatMul.

onnxscript's `optimize_for_ort` fuses dynamo-exported encoders (ONNX Runtime's own
`optimize_model` finds nothing to fuse in them), but its last step packs Q, K and V into one
`Attention` node whose weights are computed by a Concat and whose mask is a float bias: ONNX
Runtime's quantizer leaves such a node in FP32, so a quarter of the encoder's MatMul work would
stay in float. Running the same fusions minus that packing step gives `MultiHeadAttention` fed
by three quantizable MatMuls, plus SkipLayerNormalization and BiasGelu.

The result uses com.microsoft ops, so it is for ONNX Runtime only (not TensorRT).
"""

from __future__ import annotations

from pathlib import Path

FUSED_OPS = ("MultiHeadAttention", "SkipLayerNormalization", "BiasGelu")


def fuse_for_ort_cpu(source: str | Path, destination: str | Path) -> dict[str, int]:
    """Fuse attention, skip+LayerNorm and bias+GELU of `source` into `destination`; return
    how many nodes of each fused op type the result has (all zero: nothing matched)."""
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
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_layer_normalization

    model = ir.load(str(source))
    passes.ShapeInferencePass()(model)
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)
    fuse_erfgelu(model)
    fuse_skip_layer_normalization(model)
    fuse_sdpa(model, apply_shape_inference=True)
    for fuse in (fuse_mha1, fuse_mha2, fuse_mha_scale, fuse_mha_bias, fuse_bias_gelu):
        fuse(model)
    optimize(model)  # inlines partial-fusion functions that no later fusion consumed
    rewrite(model, ORT_PATTERN_REWRITE_RULES)
    passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=1)(model)
    passes.ShapeInferencePass()(model)
    ir.save(model, str(destination))
    nodes = list(model.graph)
    return {op: sum(n.op_type == op and n.domain == "com.microsoft" for n in nodes) for op in FUSED_OPS}
