"""The ONNX function body of edgert::HeadwiseAttention (edgert/op_spec.py describes the op;
models/ops.py:headwise_attention_reference is its arithmetic).

The body is not written by hand: the torch reference of the node's configuration is exported
with torch.onnx (the same translation table as the model, so a `fused_prefill` body holds
com.microsoft.GroupQueryAttention and its clipped-softmax form edgert::ClippedSoftmax nodes)
with symbolic batch, sequence, past and window sizes, and that graph becomes the
FunctionProto. So the body is exactly the graph the decoder had before the node existed, and
ONNX Runtime, which inlines it at load, runs the same ops.

torch is imported inside headwise_attention_body: exporters/custom_ops.py lists this builder
in its FUNCTIONS table, and `edgert export --help` imports that module.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import onnx
from onnx import helper, inliner

from edgert.op_spec import DOMAIN, HEADWISE_ATTENTION
from edgert.quant.inline import nested_nodes, subgraphs

# Sizes of the sample inputs the body is traced with: each differs from the others and from 1,
# so torch.export keeps every one of them symbolic (S == 1 is the decode branch of an If).
_BATCH, _SEQUENCE, _PAST, _WINDOW = 2, 3, 5, 4
BODY_PREFIX = "headwise/"  # of every value a body makes (see _prefix_names)
# input -> {axis: dimension name}; the head counts and head_dim are the configuration's.
_DYNAMIC = {"q": {0: "batch", 2: "sequence"}, "k_new": {0: "batch", 2: "sequence"},
            "v_new": {0: "batch", 2: "sequence"}, "retrieval_key": {0: "batch", 2: "past"},
            "retrieval_value": {0: "batch", 2: "past"}, "retrieval_bias": {0: "batch", 3: "past"},
            "causal_bias": {0: "batch", 2: "sequence", 3: "sequence"}, "streaming_key": {0: "batch", 2: "window"},
            "streaming_value": {0: "batch", 2: "window"}, "streaming_bias": {0: "batch", 2: "sequence", 3: "window"},
            "window_bias": {0: "batch", 2: "sequence", 3: "sequence"}, "unpadded": {}}


def headwise_attention_body(opset: int, attributes: dict) -> onnx.FunctionProto:
    """The FunctionProto (overload HEADWISE_ATTENTION.overload(attributes)) that a
    HeadwiseAttention node with `attributes` calls, for a model of default-domain `opset`."""
    program = _export_reference(opset, attributes)
    graph = inliner.inline_local_functions(program.model_proto).graph
    constants = [helper.make_node("Constant", [], [t.name], value=t) for t in graph.initializer]
    nodes = constants + list(graph.node)
    for node in nodes:
        del node.metadata_props[:]  # inlined, a body node takes the call's (its layer's scope)
    _prefix_names(nodes, _produced(nodes) - set(HEADWISE_ATTENTION.outputs))
    if [o.name for o in graph.output] != list(HEADWISE_ATTENTION.outputs):
        raise RuntimeError(f"the HeadwiseAttention body exported outputs {[o.name for o in graph.output]}")
    domains = {node.domain for node in nested_nodes(graph.node)} - {""}
    imports = [helper.make_opsetid("", opset)] + [o for o in program.model_proto.opset_import if o.domain in domains]
    function = helper.make_function(DOMAIN, HEADWISE_ATTENTION.name, list(HEADWISE_ATTENTION.inputs),
                                    list(HEADWISE_ATTENTION.outputs), nodes, imports,
                                    attributes=HEADWISE_ATTENTION.attribute_names)
    function.overload = HEADWISE_ATTENTION.overload(attributes)
    return function


def _export_reference(opset: int, attributes: dict):
    """torch.onnx's ONNXProgram of headwise_attention_reference in the configuration `attributes`."""
    import torch

    from edgert.exporters.custom_ops import translation_table
    from edgert.models.ops import headwise_attention_reference

    group, r, s, d = (attributes[k] for k in ("group", "retrieval_heads", "streaming_heads", "head_dim"))
    heads = group * (r + s)
    samples = _sample_inputs(torch, heads, r, s, d)
    names = [n for n in HEADWISE_ATTENTION.inputs if samples[n] is not None]

    class Reference(torch.nn.Module):
        def forward(self, *inputs):
            named = dict.fromkeys(HEADWISE_ATTENTION.inputs) | dict(zip(names, inputs))
            return headwise_attention_reference(
                *(named[n] for n in HEADWISE_ATTENTION.inputs), kv_heads=[h // group for h in range(heads)],
                retrieval_heads=r, softmax=attributes["softmax"], gamma=attributes["gamma"],
                zeta=attributes["zeta"], fused_prefill=bool(attributes["fused_prefill"]))

    dims: dict[str, torch.export.Dim] = {}
    dynamic = tuple({axis: dims.setdefault(dim, torch.export.Dim(dim, min=1)) for axis, dim in _DYNAMIC[n].items()}
                    for n in names)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return torch.onnx.export(Reference(), tuple(samples[n] for n in names), dynamo=True, opset_version=opset,
                                 input_names=names, output_names=list(HEADWISE_ATTENTION.outputs),
                                 dynamic_shapes=(dynamic,), verbose=False,
                                 custom_translation_table=translation_table())


def _sample_inputs(torch, heads: int, r: int, s: int, d: int) -> dict:
    """Well-formed inputs of one layer (None for the parts it lacks): every bias 0, so no
    softmax row is empty."""
    b, n, p, w = _BATCH, _SEQUENCE, _PAST, _WINDOW

    def zeros(*shape):
        return torch.zeros(shape)

    return {"q": zeros(b, heads, n, d), "k_new": zeros(b, r + s, n, d), "v_new": zeros(b, r + s, n, d),
            "retrieval_key": zeros(b, r, p, d) if r else None, "retrieval_value": zeros(b, r, p, d) if r else None,
            "retrieval_bias": zeros(b, 1, 1, p) if r else None, "causal_bias": zeros(b, 1, n, n),
            "streaming_key": zeros(b, s, w, d) if s else None, "streaming_value": zeros(b, s, w, d) if s else None,
            "streaming_bias": zeros(b, 1, n, w) if s else None, "window_bias": zeros(b, 1, n, n) if s else None,
            "unpadded": torch.tensor(True) if r else None}


def _produced(nodes) -> set[str]:
    """The values the nodes produce, in their subgraphs too."""
    return {name for node in nested_nodes(nodes) for name in node.output}


def _prefix_names(nodes, names: set[str]) -> None:
    """Rename `names` to BODY_PREFIX + name wherever the nodes (and their subgraphs) use them.

    ONNX Runtime renames a body's top-level values when it inlines a call, but not those
    inside its If branches: a branch value named like one of the calling graph's (torch names
    both "view_2") would shadow it."""
    def rename(name: str) -> str:
        return BODY_PREFIX + name if name in names else name

    for node in nodes:
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        for sub in subgraphs(node):
            _prefix_names(sub.node, names)
            for value in [*sub.output, *sub.value_info, *sub.input]:
                value.name = rename(value.name)
