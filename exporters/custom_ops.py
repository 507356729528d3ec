"""The ONNX side of edgert's custom ops (edgert/op_spec.py describes them; docs/architecture.md).

Each op becomes one node in domain `edgert` carrying plugin_namespace="edgert" (so TensorRT can
bind a plugin of the same name), plus a model-local FunctionProto of the same name whose body
is standard ONNX, so plain ONNX Runtime runs the graph by inlining it. Schemas, node
attributes and overload names all come from the op's OpSpec.

torch and onnxscript are imported inside translation_table, the one function that needs them:
`edgert export --help` imports this module.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import AttributeProto, helper
from onnx.defs import OpSchema

from edgert.exporters import headwise_ops, vision_ops
from edgert.op_spec import (CASCADED_GROUP_ATTENTION, CLIPPED_SOFTMAX, DOMAIN, HEADWISE_ATTENTION, OP_VERSION, OPS,
                            SINGLE_HEAD_ATTENTION, OpSpec, onnx_ops)
from edgert.quant.inline import nested_nodes

_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
_ATTRIBUTE_TYPES = {"int": OpSchema.AttrType.INT, "ints": OpSchema.AttrType.INTS,
                    "float": OpSchema.AttrType.FLOAT, "string": OpSchema.AttrType.STRING}


# ONNX Runtime's contrib ops that edgert's ONNX Runtime CPU target emits, by (domain, name). onnx
# itself has no schemas for them; onnxscript needs one to build a node.
MICROSOFT_DOMAIN = "com.microsoft"
GROUP_QUERY_ATTENTION = "GroupQueryAttention"
# GroupQueryAttention's inputs in ONNX Runtime 1.32's order (all but query optional in the
# schema; ONNX Runtime itself requires seqlens_k and total_sequence_length).
_GQA_INPUTS = ("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length",
               "cos_cache", "sin_cache", "position_ids", "attention_bias", "head_sink", "k_scale", "v_scale",
               "q_norm_weight", "k_norm_weight", "query_seqlens")


def register_schemas() -> None:
    """Register the edgert ops, and the ONNX Runtime contrib op the CPU target emits, with onnx
    so onnxscript and the checker know their signatures."""
    if not onnx.defs.has(GROUP_QUERY_ATTENTION, MICROSOFT_DOMAIN):
        onnx.defs.register_schema(_group_query_attention_schema())
    for spec in onnx_ops():
        if not onnx.defs.has(spec.name, DOMAIN):
            onnx.defs.register_schema(onnx_schema(spec))


def onnx_schema(spec: OpSpec) -> OpSchema:
    """The onnx OpSchema of an edgert op: every input and output one float type T, but for the
    inputs the spec types otherwise (spec.input_types)."""
    attributes = [OpSchema.Attribute(a.name, _ATTRIBUTE_TYPES[a.kind], a.doc) for a in spec.attributes]
    attributes.append(OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace"))
    types = dict(spec.input_types)
    optional = OpSchema.FormalParameterOption.Optional
    single = OpSchema.FormalParameterOption.Single
    return OpSchema(spec.name, DOMAIN, OP_VERSION, doc=spec.doc,
                    inputs=[OpSchema.FormalParameter(name, types.get(name, "T"),
                                                     param_option=optional if name in spec.optional_inputs else single)
                            for name in spec.inputs],
                    outputs=[OpSchema.FormalParameter(name, "T") for name in spec.outputs],
                    type_constraints=[("T", _FLOATS, "")], attributes=attributes)


def _group_query_attention_schema() -> OpSchema:
    """What edgert uses of com.microsoft.GroupQueryAttention (ONNX Runtime's contrib op)."""
    optional = OpSchema.FormalParameterOption.Optional
    tensor = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    inputs = [OpSchema.FormalParameter(name, "M" if name in ("seqlens_k", "total_sequence_length", "query_seqlens",
                                                             "position_ids") else "T", param_option=optional)
              for name in _GQA_INPUTS]
    # output_qk is left out: naming it would turn off the tiled kernel (and onnxscript's tracer
    # gives a node one output per schema output).
    outputs = [OpSchema.FormalParameter(name, "T", param_option=optional)
               for name in ("output", "present_key", "present_value")]
    return OpSchema(GROUP_QUERY_ATTENTION, MICROSOFT_DOMAIN, 1,
                    doc="ONNX Runtime's grouped-query attention over a BNSH KV cache (contrib op)",
                    inputs=inputs, outputs=outputs,
                    type_constraints=[("T", tensor, ""), ("M", ["tensor(int32)", "tensor(int64)"], "")],
                    attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "query heads"),
                                OpSchema.Attribute("kv_num_heads", OpSchema.AttrType.INT, "key/value heads"),
                                OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "score scale")])


def translation_table() -> dict[object, Callable]:
    """torch op → onnxscript function emitting the edgert node, for torch.onnx.export."""
    import onnxscript
    import torch

    import edgert.models.ops  # noqa: F401  (registers torch.ops.edgert.*)

    register_schemas()
    edgert_ops = onnxscript.values.Opset(DOMAIN, OP_VERSION)

    def node(spec: OpSpec):
        return getattr(edgert_ops, spec.name)

    def clipped_softmax(scores, gamma: float, zeta: float):
        return node(CLIPPED_SOFTMAX)(scores, **CLIPPED_SOFTMAX.node_attributes(gamma=gamma, zeta=zeta))

    def cascaded_group_attention(x, qkv_weight, qkv_bias, dw_weight, dw_bias, bias, num_heads: int,
                                 key_dim: int, kernels: list[int], scale: float):
        value_dim = qkv_weight.shape[1] - 2 * key_dim
        return node(CASCADED_GROUP_ATTENTION)(x, qkv_weight, qkv_bias, dw_weight, dw_bias, bias,
                                              **CASCADED_GROUP_ATTENTION.node_attributes(
                                                  num_heads=num_heads, key_dim=key_dim, value_dim=value_dim,
                                                  kernels=list(kernels), scale=scale))

    def single_head_attention(x, norm_weight, norm_bias, qkv_weight, qkv_bias, partial_dim: int, qk_dim: int,
                              scale: float, eps: float):
        return node(SINGLE_HEAD_ATTENTION)(x, norm_weight, norm_bias, qkv_weight, qkv_bias,
                                           **SINGLE_HEAD_ATTENTION.node_attributes(
                                               partial_dim=partial_dim, qk_dim=qk_dim, scale=scale, epsilon=eps))

    def headwise_attention(q, k_new, v_new, retrieval_key, retrieval_value, retrieval_bias, causal_bias,
                           streaming_key, streaming_value, streaming_bias, window_bias, unpadded, group: int,
                           retrieval_heads: int, softmax: str, gamma: float, zeta: float, fused_prefill: bool):
        attributes = HEADWISE_ATTENTION.node_attributes(
            group=group, retrieval_heads=retrieval_heads, streaming_heads=k_new.shape[1] - retrieval_heads,
            head_dim=q.shape[3], softmax=softmax, gamma=gamma, zeta=zeta, fused_prefill=int(fused_prefill))
        return node(HEADWISE_ATTENTION)(q, k_new, v_new, retrieval_key, retrieval_value, retrieval_bias, causal_bias,
                                        streaming_key, streaming_value, streaming_bias, window_bias, unpadded,
                                        **attributes)

    registered = getattr(torch.ops, DOMAIN)
    return {registered.clipped_softmax.default: clipped_softmax,
            registered.cascaded_group_attention.default: cascaded_group_attention,
            registered.single_head_attention.default: single_head_attention,
            registered.prefill_attention.default: prefill_attention_for_ort_cpu,
            registered.headwise_attention.default: headwise_attention}


def prefill_attention_for_ort_cpu(q, k_new, v_new, k_past, v_past, bias, scale: float):
    """edgert::prefill_attention as ONNX Runtime's com.microsoft.GroupQueryAttention (CPU), whose
    fp32 path for a chunk over a cache is tiled with an online softmax: the score matrix is never
    written. The op is causal in cache coordinates (query i of S sees keys up to P + i), which is
    what the bias allows at most; the bias masks the rest (empty slots, left padding, windows).
    Its present_key/value outputs are requested because the tiled path runs only with them;
    query_seqlens lets a batch of several rows prefill over a cache (ONNX Runtime >= 1.32).

    Not an edgert-domain op with a function body: only ONNX Runtime runs this node, so the export
    emits it for the onnxruntime-cpu target only (models/attention.py); the portable graph
    keeps the reference arithmetic."""
    from onnxscript import opset18 as op
    from onnxscript.values import Opset

    register_schemas()
    microsoft = Opset(MICROSOFT_DOMAIN, 1)
    heads, kv = q.shape[1], k_new.shape[1]
    to_bsh = op.Constant(value_ints=[0, 0, -1])

    def bsh(x):  # [B, N, S, d] -> [B, S, N * d]
        return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), to_bsh)

    batch = op.Shape(q, start=0, end=1)
    seq = op.Shape(q, start=2, end=3)
    total = op.Add(op.Shape(k_past, start=2, end=3), seq)
    seqlens_k = op.Cast(op.Expand(op.Sub(total, op.Constant(value_ints=[1])), batch), to=6)  # int32 [B]
    total_length = op.Cast(op.Squeeze(total), to=6)  # int32 scalar
    query_seqlens = op.Cast(op.Expand(seq, batch), to=6)
    out, _, _ = microsoft.GroupQueryAttention(
        bsh(q), bsh(k_new), bsh(v_new), k_past, v_past, seqlens_k, total_length, None, None, None, bias,
        None, None, None, None, None, query_seqlens, num_heads=heads, kv_num_heads=kv, scale=scale)
    return op.Transpose(op.Reshape(out, op.Concat(batch, seq, op.Constant(value_ints=[heads, -1]), axis=0)),
                        perm=[0, 2, 1, 3])


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
    return helper.make_function(DOMAIN, CLIPPED_SOFTMAX.name, list(CLIPPED_SOFTMAX.inputs),
                                list(CLIPPED_SOFTMAX.outputs), nodes, [helper.make_opsetid("", opset)],
                                attributes=CLIPPED_SOFTMAX.attribute_names)


def node_attributes(node) -> dict:
    """A NodeProto's attributes as {name: python value} (strings decoded)."""
    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {name: value.decode() if isinstance(value, bytes) else value for name, value in values.items()}


def _cascaded_group_attention_bodies(opset: int, node) -> list:
    attributes = node_attributes(node)
    heads, kernels = attributes["num_heads"], list(attributes["kernels"])
    return [vision_ops.cascaded_group_attention_function(DOMAIN, opset, heads, kernels, channels_last=layout)
            for layout in (False, True)]


def _single_head_attention_bodies(opset: int, node) -> list:
    return [vision_ops.single_head_attention_function(DOMAIN, opset, channels_last=layout) for layout in (False, True)]


# op type -> (opset, node) -> [the FunctionProto the node calls, alternative layouts...]. A body
# that depends on the node's attributes (CascadedGroupAttention unrolls its heads) is one
# function overload per variant (OpSpec.overload names it).
FUNCTIONS = {CLIPPED_SOFTMAX.name: lambda opset, node: [clipped_softmax_function(opset)],
             CASCADED_GROUP_ATTENTION.name: _cascaded_group_attention_bodies,
             SINGLE_HEAD_ATTENTION.name: _single_head_attention_bodies,
             HEADWISE_ATTENTION.name: lambda opset, node: [headwise_ops.headwise_attention_body(
                 opset, node_attributes(node))]}
# ONNX IR version 10 introduced function overloads.
OVERLOAD_IR_VERSION = 10


def attach_functions(model) -> list[str]:
    """Give `model` (ModelProto) the function body of every edgert op it uses, in If branches and
    inside other bodies too; return the op types of its top-level edgert nodes.

    Each node calls the overload of its variant (OpSpec.overload; IR >= 10 when any has one);
    a body is built once per overload, and the domains its nodes use are imported by the model."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    have = {(f.domain, f.name, f.overload) for f in model.functions}
    pending = list(_edgert_nodes(model.graph.node))
    if not pending:
        return []
    while pending:
        node = pending.pop()
        node.overload = OPS[node.op_type].overload(node_attributes(node))
        if (DOMAIN, node.op_type, node.overload) in have:
            continue
        for body in FUNCTIONS[node.op_type](opset, node):
            model.functions.append(body)
            have.add((DOMAIN, node.op_type, body.overload))
            pending += _edgert_nodes(model.functions[-1].node)  # the stored copy: its nodes get overloads
    if any(f.overload for f in model.functions):
        model.ir_version = max(model.ir_version, OVERLOAD_IR_VERSION)
    imported = {o.domain for o in model.opset_import}
    for function in model.functions:
        for opset_id in function.opset_import:
            if opset_id.domain not in imported:
                model.opset_import.append(opset_id)
                imported.add(opset_id.domain)
    if DOMAIN not in imported:
        model.opset_import.append(helper.make_opsetid(DOMAIN, OP_VERSION))
    return sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})


def _edgert_nodes(nodes) -> list:
    """The edgert-domain nodes among `nodes` and in their subgraphs (If branches)."""
    return [node for node in nested_nodes(nodes) if node.domain == DOMAIN]
