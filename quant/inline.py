"""Inlining edgert custom ops before INT8 quantization.

An edgert op (e.g. edgert::CascadedGroupAttention) travels as a model-local ONNX function.
ONNX Runtime's quantizer sees such a call as one opaque node (the runtime inlines it only when
loading), so the MatMul / Gemm / Conv inside its body would stay in float: the functions whose
bodies hold them are inlined first. Bodies without them (edgert::ClippedSoftmax) stay as
they are.

onnx_ir and onnxscript come with edgert[export] and are imported in inline_functions only:
quantizing a model without such functions does not need them.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import inliner

from edgert.errors import DependencyError
from edgert.op_spec import DOMAIN, channels_last_overload
from edgert.quant.kernels import OP_TYPES


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs among a node's attributes (an If's branches)."""
    return [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH] + [
        g for a in node.attribute for g in a.graphs]


def nested_nodes(nodes) -> list[onnx.NodeProto]:
    """`nodes` and the nodes of their subgraphs (If branches), at any depth."""
    found = []
    for node in nodes:
        found.append(node)
        for sub in subgraphs(node):
            found += nested_nodes(sub.node)
    return found


def model_nodes(proto: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Every node of `proto`: its graph's and its model-local functions', If branches included."""
    return nested_nodes(proto.graph.node) + [n for f in proto.functions for n in nested_nodes(f.node)]


def functions_to_inline(proto: onnx.ModelProto) -> list[tuple[str, str]]:
    """(domain, name) of the model-local functions of edgert-domain ops used in `proto`
    whose bodies hold OP_TYPES, directly, in If branches or through other functions (a decoder's
    edgert::HeadwiseAttention holds its MatMuls in If branches: inlined, the graph is the one
    the decoder kind was written for)."""
    functions = {(f.domain, f.name): f for f in proto.functions}

    def quantizable(key, seen=()) -> bool:
        body = functions.get(key)
        return body is not None and key not in seen and any(
            n.op_type in OP_TYPES and n.domain in ("", "ai.onnx")
            or quantizable((n.domain, n.op_type), (*seen, key))
            for n in nested_nodes(body.node))

    used = {(n.domain, n.op_type) for n in model_nodes(proto)}
    return sorted(k for k in functions if k[0] == DOMAIN and k in used and quantizable(k))


def inline_functions(proto: onnx.ModelProto, functions: list[tuple[str, str]], out: Path) -> None:
    """Save `proto` with `functions` inlined to `out`, without the edgert opset import once
    no edgert op is left, and with constant sub-graphs folded.

    Each call gets a copy of its function (of its overload, or of that overload's channels-last
    twin where the model has one: ONNX Runtime's INT8 convolutions run channels-last) whose
    nodes are named `CALL/NODE` and carry the call's metadata (torch's module scope): ONNX's
    inliner leaves body nodes unnamed, and --exclude, the outlier report and the float-node
    search all go by names and scopes. Bodies that slice their weights out of stacked inputs
    (a CascadedGroupAttention picks each head's convolution weights with Gather) are folded
    afterwards, so those weights are initializers again and get per-channel weight
    quantization."""
    try:
        import onnx_ir as ir
        import onnx_ir.passes.common as ir_passes
        import onnxscript.optimizer
    except ImportError:
        names = ", ".join(f"{domain}::{name}" for domain, name in functions)
        raise DependencyError(f"quantizing the custom ops {names} needs onnxscript to inline them: "
                              "pip install 'edgert[export]'") from None

    inlined = inliner.inline_selected_functions(*_named_calls(proto, functions))
    for function in [f for f in inlined.functions if (f.domain, f.name) in functions]:
        inlined.functions.remove(function)
    if not any(n.domain == DOMAIN for n in inlined.graph.node) and not inlined.functions:
        kept = [o for o in inlined.opset_import if o.domain != DOMAIN]
        del inlined.opset_import[:]
        inlined.opset_import.extend(kept)
    graph = ir.from_proto(inlined)
    # The default size limits (about a thousand elements) would leave most weights unfolded.
    onnxscript.optimizer.fold_constants(graph, input_size_limit=1 << 24, output_size_limit=1 << 24)
    onnxscript.optimizer.remove_unused_nodes(graph)
    ir_passes.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16)(graph)
    onnx.save(ir.to_proto(graph), str(out))


def _named_calls(proto: onnx.ModelProto, functions: list[tuple[str, str]]
                 ) -> tuple[onnx.ModelProto, list[tuple[str, str]]]:
    """A copy of `proto` whose calls of `functions` each call a copy of their body with named
    nodes that carry the call's metadata (see inline_functions), and the (domain, name) of
    those copies."""
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
    return model, calls
