"""edgert's custom ops, each described once: the names, domain, plugin namespace and version,
inputs, outputs, attributes and function-overload naming that every backend of an op reads.

An op has up to five homes, one per backend, and each reads its OpSpec from here:
the torch reference and torch.library op (models/ops.py), the ONNX schema and function body
(exporters/custom_ops.py, exporters/vision_ops.py), the inlining before INT8 quantization
(quant/inline.py), the Triton kernel (trt_plugins/), and the TensorRT plugin (trt_plugins/,
binding a node whose op type is the spec's name and whose `plugin_namespace` attribute is
PLUGIN_NAMESPACE). docs/architecture.md follows one op through the tree.

No torch, no onnx: the runtime, the exporters and the kernels may all import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

DOMAIN = "edgert"  # ONNX domain of every edgert node, and the torch.library namespace
OP_VERSION = 1  # the edgert opset version models import
PLUGIN_NAMESPACE = "edgert"  # TensorRT plugin namespace (a node attribute the ONNX parser reads)
PLUGIN_VERSION = "1"  # TensorRT plugin version (the parser's default when a node names none)
PLUGIN_NAMESPACE_ATTRIBUTE = "plugin_namespace"
CHANNELS_LAST = "channels-last"
FUNCTION = "function"  # OpSpec.onnx_form of an edgert node whose function body is standard ONNX
NO_ONNX_FORM = ""
ATTRIBUTE_KINDS = ("int", "ints", "float", "string")


@dataclass(frozen=True)
class Attribute:
    """One node attribute: its ONNX name, kind (ATTRIBUTE_KINDS) and meaning."""

    name: str
    kind: str
    doc: str


@dataclass(frozen=True)
class OpSpec:
    """One edgert op.

    name: the ONNX op type and the TensorRT plugin name (CamelCase); torch_name: the op in the
    edgert torch.library namespace (snake_case); inputs/outputs: ONNX formal parameter names,
    in order; attributes: the node's attributes (plugin_namespace is added to every node);
    overload: the function overload a node with these attribute values calls, for ops whose
    ONNX body depends on them (None: one body, overload ""); onnx_form: how the op reaches an
    ONNX graph: FUNCTION (an edgert node with a function body), another domain's op that a
    target has instead (e.g. "com.microsoft.GroupQueryAttention"), or NO_ONNX_FORM."""

    name: str
    torch_name: str
    doc: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: tuple[Attribute, ...] = ()
    overload_of: Callable[[Mapping[str, object]], str] | None = None
    onnx_form: str = FUNCTION
    optional_inputs: tuple[str, ...] = ()  # inputs a node may leave empty ("")
    input_types: tuple[tuple[str, str], ...] = ()  # (input, ONNX type) of inputs that are not float

    @property
    def torch_qualname(self) -> str:
        """The torch.library name, e.g. "edgert::clipped_softmax"."""
        return f"{DOMAIN}::{self.torch_name}"

    @property
    def plugin_id(self) -> str:
        """The TensorRT plugin id, "namespace::name"."""
        return f"{PLUGIN_NAMESPACE}::{self.name}"

    @property
    def attribute_names(self) -> list[str]:
        """Every attribute a node and its function body carry, plugin_namespace last."""
        return [a.name for a in self.attributes] + [PLUGIN_NAMESPACE_ATTRIBUTE]

    def overload(self, attributes: Mapping[str, object], *, channels_last: bool = False) -> str:
        """The function overload a node with `attributes` calls, or its channels-last twin (the
        same arithmetic arranged for channels-last INT8 kernels, which quantization inlines in
        place of the body the node calls)."""
        base = self.overload_of(attributes) if self.overload_of else ""
        return channels_last_overload(base) if channels_last else base

    def node_attributes(self, **values: object) -> dict[str, object]:
        """A node's attributes: `values` (exactly this op's attribute names) plus the plugin
        namespace."""
        expected = {a.name for a in self.attributes}
        if set(values) != expected:
            raise ValueError(f"{self.name} takes attributes {sorted(expected)}, got {sorted(values)}")
        return {**values, PLUGIN_NAMESPACE_ATTRIBUTE: PLUGIN_NAMESPACE}


def channels_last_overload(overload: str) -> str:
    """The overload under which a body has its channels-last twin."""
    return f"{overload}.{CHANNELS_LAST}" if overload else CHANNELS_LAST


def _cascade_overload(attributes: Mapping[str, object]) -> str:
    """One body per head count and kernel list: the body unrolls its heads ("heads4.k5-5-5-5")."""
    kernels = "-".join(str(k) for k in attributes["kernels"])
    return f"heads{attributes['num_heads']}.k{kernels}"


CLIPPED_SOFTMAX = OpSpec(
    # Not ONNX's own "Softmax" name: TensorRT looks built-in layers up by op type alone.
    "ClippedSoftmax", "clipped_softmax",
    "clip((zeta - gamma) * softmax(scores, axis=-1) + gamma, 0, 1) (Bondarenko et al. 2023)",
    inputs=("scores",), outputs=("probs",),
    attributes=(Attribute("gamma", "float", "lower stretch, < 0"),
                Attribute("zeta", "float", "upper stretch, >= 1")))

CASCADED_GROUP_ATTENTION = OpSpec(
    "CascadedGroupAttention", "cascaded_group_attention",
    "EfficientViT cascaded group attention over windows x [B, C, H, W]; returns the heads' outputs "
    "concatenated [B, num_heads * value_dim, H, W]",
    inputs=("x", "qkv_weight", "qkv_bias", "dw_weight", "dw_bias", "bias"), outputs=("heads",),
    attributes=(Attribute("num_heads", "int", "heads (channel chunks)"),
                Attribute("key_dim", "int", "query/key channels per head"),
                Attribute("value_dim", "int", "value channels per head"),
                Attribute("kernels", "ints", "each head's depthwise query kernel size; dw_weight holds them "
                                             "zero-padded to the largest"),
                Attribute("scale", "float", "query scale")),
    overload_of=_cascade_overload)

SINGLE_HEAD_ATTENTION = OpSpec(
    "SingleHeadAttention", "single_head_attention",
    "SHViT single-head attention over the first partial_dim channels of x [B, C, H, W] (GroupNorm with "
    "one group, 1x1 qkv conv, global softmax attention); the other channels pass through; returns [B, C, H, W]",
    inputs=("x", "norm_weight", "norm_bias", "qkv_weight", "qkv_bias"), outputs=("y",),
    attributes=(Attribute("partial_dim", "int", "channels that attend"),
                Attribute("qk_dim", "int", "query/key channels"),
                Attribute("scale", "float", "score scale"),
                Attribute("epsilon", "float", "GroupNorm epsilon")))

PREFILL_ATTENTION = OpSpec(
    "PrefillAttention", "prefill_attention",
    "grouped-query attention of S new tokens over a KV cache and themselves, causal in cache "
    "coordinates or under an additive bias; exported for ONNX Runtime CPU as "
    "com.microsoft.GroupQueryAttention, and as plain ONNX ops in the portable graph",
    inputs=("q", "k_new", "v_new", "k_past", "v_past", "bias"), outputs=("context",),
    attributes=(Attribute("scale", "float", "score scale"),),
    onnx_form="com.microsoft.GroupQueryAttention")


def _headwise_overload(attributes: Mapping[str, object]) -> str:
    """One body per layer configuration: "g2.r1.s1.d16", plus ".gqa" when prefill chunks run as
    GroupQueryAttention, or ".clipped-0.025_1" for a clipped softmax (the body bakes all of them
    in: head counts and head_dim as slice and reshape constants, gamma/zeta as attributes)."""
    name = (f"g{attributes['group']}.r{attributes['retrieval_heads']}.s{attributes['streaming_heads']}"
            f".d{attributes['head_dim']}")
    if attributes["fused_prefill"]:
        name += ".gqa"
    if attributes["softmax"] == "clipped":
        name += f".clipped{attributes['gamma']:.6g}_{attributes['zeta']:.6g}"
    return name


HEADWISE_ATTENTION = OpSpec(
    "HeadwiseAttention", "headwise_attention",
    "S new tokens of one decoder layer attending over its per-head KV cache and themselves: query heads "
    "[0, r*g) read the r retrieval kv heads (retrieval cache [B, r, P, d] under retrieval_bias [B, 1, 1, P], "
    "the new tokens under causal_bias [B, 1, S, S]), the others the s streaming kv heads (window cache "
    "[B, s, W, d] under streaming_bias [B, 1, S, W], the new tokens under window_bias [B, 1, S, S]); query "
    "head h reads kv head h // group; q [B, H, S, d] is scaled by head_dim ** -0.5 inside; biases are "
    "additive; unpadded (bool scalar) lets fused prefill chunks of the retrieval heads skip their bias. "
    "Returns [B, H, S, d]",
    inputs=("q", "k_new", "v_new", "retrieval_key", "retrieval_value", "retrieval_bias", "causal_bias",
            "streaming_key", "streaming_value", "streaming_bias", "window_bias", "unpadded"),
    outputs=("context",),
    attributes=(Attribute("group", "int", "query heads per kv head"),
                Attribute("retrieval_heads", "int", "kv heads with a full (retrieval) cache, r"),
                Attribute("streaming_heads", "int", "kv heads with a window (streaming) cache, s"),
                Attribute("head_dim", "int", "d"),
                Attribute("softmax", "string", "standard or clipped"),
                Attribute("gamma", "float", "clipped softmax's lower stretch (0 for standard)"),
                Attribute("zeta", "float", "clipped softmax's upper stretch (1 for standard)"),
                Attribute("fused_prefill", "int", "1: prefill chunks run as com.microsoft.GroupQueryAttention "
                                                  "(ONNX Runtime CPU); 0: plain ONNX")),
    overload_of=_headwise_overload,
    optional_inputs=("retrieval_key", "retrieval_value", "retrieval_bias", "streaming_key", "streaming_value",
                     "streaming_bias", "window_bias", "unpadded"),
    input_types=(("unpadded", "tensor(bool)"),))

HEADWISE_DECODE_ATTENTION = OpSpec(
    "HeadwiseDecodeAttention", "headwise_decode_attention",
    "one new token per sequence attending over a per-head KV cache: retrieval kv heads over every filled "
    "slot of [B, r, C, d] (past_mask, optional lengths), streaming kv heads over their sink + recent window "
    "[B, s, W, d] (window_positions, the token's position), each plus the new token itself; query head h "
    "reads kv head h // (H / kv); returns [B, H, d]",
    inputs=("q", "k_new", "v_new", "retrieval_key", "retrieval_value", "past_mask", "lengths",
            "streaming_key", "streaming_value", "window_positions", "position"), outputs=("context",),
    attributes=(Attribute("sink", "int", "first tokens every streaming head keeps"),
                Attribute("recent", "int", "latest tokens every streaming head keeps"),
                Attribute("scale", "float", "score scale")),
    # Torch-side decoding's interface (trt_plugins/); the ONNX graph has the whole layer's cache
    # attention, S new tokens, as HEADWISE_ATTENTION instead.
    onnx_form=NO_ONNX_FORM)

OPS: dict[str, OpSpec] = {op.name: op for op in (CLIPPED_SOFTMAX, CASCADED_GROUP_ATTENTION, SINGLE_HEAD_ATTENTION,
                                                 PREFILL_ATTENTION, HEADWISE_DECODE_ATTENTION, HEADWISE_ATTENTION)}


def onnx_ops() -> list[OpSpec]:
    """The ops exported as edgert-domain ONNX nodes."""
    return [op for op in OPS.values() if op.onnx_form == FUNCTION]
