"""The ONNX side of edgert's custom ops (docs/architecture.md).

Each op becomes one node in domain `edgert` carrying plugin_namespace="edgert" (so TensorRT can
bind a plugin of the same name), plus a model-local FunctionProto of the same name whose body
is standard ONNX, so plain ONNX Runtime runs the graph by inlining it.

torch and onnxscript are imported inside translation_table, the one function that needs them:
`edgert export --help` imports this module.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import AttributeProto, helper
from onnx.defs import OpSchema

from edgert.exporters import vision_ops

DOMAIN = "edgert"
PLUGIN_NAMESPACE = "edgert"
OP_VERSION = 1
CLIPPED_SOFTMAX = "ClippedSoftmax"  # not a standard ONNX op name: TensorRT looks up built-ins by name only


def register_schemas() -> None:
    """Register the edgert ops with onnx so onnxscript and the checker know their signatures."""
    if onnx.defs.has(CLIPPED_SOFTMAX, DOMAIN):
        return
    for schema in vision_ops.schemas(DOMAIN, OP_VERSION):
        onnx.defs.register_schema(schema)
    float_attr = OpSchema.AttrType.FLOAT
    onnx.defs.register_schema(OpSchema(
        CLIPPED_SOFTMAX, DOMAIN, OP_VERSION,
        doc="clip((zeta - gamma) * softmax(scores, axis=-1) + gamma, 0, 1)",
        inputs=[OpSchema.FormalParameter("scores", "T")],
        outputs=[OpSchema.FormalParameter("probs", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "")],
        attributes=[OpSchema.Attribute("gamma", float_attr, "lower stretch, < 0"),
                    OpSchema.Attribute("zeta", float_attr, "upper stretch, >= 1"),
                    OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace")],
    ))


def translation_table() -> dict[object, Callable]:
    """torch op → onnxscript function emitting the edgert node, for torch.onnx.export."""
    import onnxscript
    import torch

    import edgert.models.ops  # noqa: F401  (registers torch.ops.edgert.*)

    register_schemas()
    edgert_ops = onnxscript.values.Opset(DOMAIN, OP_VERSION)

    def clipped_softmax(scores, gamma: float, zeta: float):
        return edgert_ops.ClippedSoftmax(scores, gamma=gamma, zeta=zeta, plugin_namespace=PLUGIN_NAMESPACE)

    def cascaded_group_attention(x, qkv_weight, qkv_bias, dw_weight, dw_bias, bias, num_heads: int,
                                 key_dim: int, kernels: list[int], scale: float):
        value_dim = qkv_weight.shape[1] - 2 * key_dim
        return edgert_ops.CascadedGroupAttention(x, qkv_weight, qkv_bias, dw_weight, dw_bias, bias,
                                                 num_heads=num_heads, key_dim=key_dim, value_dim=value_dim,
                                                 kernels=list(kernels), scale=scale,
                                                 plugin_namespace=PLUGIN_NAMESPACE)

    def single_head_attention(x, norm_weight, norm_bias, qkv_weight, qkv_bias, partial_dim: int, qk_dim: int,
                              scale: float, eps: float):
        return edgert_ops.SingleHeadAttention(x, norm_weight, norm_bias, qkv_weight, qkv_bias,
                                              partial_dim=partial_dim, qk_dim=qk_dim, scale=scale, epsilon=eps,
                                              plugin_namespace=PLUGIN_NAMESPACE)

    return {torch.ops.edgert.clipped_softmax.default: clipped_softmax,
            torch.ops.edgert.cascaded_group_attention.default: cascaded_group_attention,
            torch.ops.edgert.single_head_attention.default: single_head_attention}


def clipped_softmax_function(opset: int):
    """ClippedSoftmax's body in standard ONNX (default-domain `opset`, which must equal the model's)."""
    def constant(name: str, attribute: str):
        node = helper.make_node("Constant", [], [name])
        node.attribute.append(helper.make_attribute_ref("value_float", AttributeProto.FLOAT))
        node.attribute[0].ref_attr_name = attribute
        return node

    nodes = [
        constant("gamma_f", "gamma"),
        constant("zeta_f", "zeta"),
        helper.make_node("Constant", [], ["zero_f"], value_float=0.0),
        helper.make_node("Constant", [], ["one_f"], value_float=1.0),
        helper.make_node("CastLike", ["gamma_f", "scores"], ["gamma"]),
        helper.make_node("CastLike", ["zeta_f", "scores"], ["zeta"]),
        helper.make_node("CastLike", ["zero_f", "scores"], ["zero"]),
        helper.make_node("CastLike", ["one_f", "scores"], ["one"]),
        helper.make_node("Softmax", ["scores"], ["softmax"], axis=-1),
        helper.make_node("Sub", ["zeta", "gamma"], ["stretch"]),
        helper.make_node("Mul", ["softmax", "stretch"], ["scaled"]),
        helper.make_node("Add", ["scaled", "gamma"], ["shifted"]),
        helper.make_node("Clip", ["shifted", "zero", "one"], ["probs"]),
    ]
    return helper.make_function(DOMAIN, CLIPPED_SOFTMAX, ["scores"], ["probs"], nodes,
                                [helper.make_opsetid("", opset)],
                                attributes=["gamma", "zeta", "plugin_namespace"])


def _attribute(node, name: str):
    return next(helper.get_attribute_value(a) for a in node.attribute if a.name == name)


def _cascaded_group_attention_bodies(opset: int, node) -> list:
    heads, kernels = _attribute(node, "num_heads"), list(_attribute(node, "kernels"))
    return [vision_ops.cascaded_group_attention_function(DOMAIN, opset, heads, kernels, channels_last=layout)
            for layout in (False, True)]


def _single_head_attention_bodies(opset: int, node) -> list:
    return [vision_ops.single_head_attention_function(DOMAIN, opset, channels_last=layout) for layout in (False, True)]


# op type -> (opset, node) -> [the FunctionProto the node calls, alternative layouts...]. A body
# that depends on the node's attributes (CascadedGroupAttention unrolls its heads) is one
# function overload per variant.
FUNCTIONS = {CLIPPED_SOFTMAX: lambda opset, node: [clipped_softmax_function(opset)],
             "CascadedGroupAttention": _cascaded_group_attention_bodies,
             "SingleHeadAttention": _single_head_attention_bodies}
# ONNX IR version 10 introduced function overloads.
OVERLOAD_IR_VERSION = 10


def attach_functions(model) -> list[str]:
    """Give `model` (ModelProto) the function body of every edgert op it uses; return their names.

    Nodes whose body depends on their attributes get the overload of their variant (IR >= 10)."""
    nodes = [n for n in model.graph.node if n.domain == DOMAIN]
    if not nodes:
        return []
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    have = {(f.domain, f.name, f.overload) for f in model.functions}
    for node in nodes:
        bodies = FUNCTIONS[node.op_type](opset, node)
        node.overload = bodies[0].overload
        for body in bodies:
            if (DOMAIN, node.op_type, body.overload) not in have:
                model.functions.append(body)
                have.add((DOMAIN, node.op_type, body.overload))
    if any(f.overload for f in model.functions):
        model.ir_version = max(model.ir_version, OVERLOAD_IR_VERSION)
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, OP_VERSION))
    return sorted({n.op_type for n in nodes})
