"""ONNX function bodies of the vision attention ops (edgert/op_spec.py describes them;
models/ops.py has their torch references): `CascadedGroupAttention` (EfficientViT) and
`SingleHeadAttention` (SHViT).

The bodies are written node by node with onnx.helper: a CascadedGroupAttention body unrolls
its heads (each head feeds the next) and crops each head's depthwise kernel, so there is one
function overload per head count and kernel list ("heads2.k7-5", "heads4.k5-5-5-5", ...),
which onnxscript's decorator functions cannot express. Each body also comes in a
channels-last twin (overload "heads4.k5-5-5-5.channels-last", "channels-last"): the same
arithmetic laid out for ONNX Runtime's channels-last INT8 kernels, which `edgert quantize`
inlines instead of the FP32 form (see _attend).
"""

from __future__ import annotations

from onnx import AttributeProto, helper

from edgert.op_spec import CASCADED_GROUP_ATTENTION, SINGLE_HEAD_ATTENTION


class _Body:
    """Collects the nodes of a function body with unique intermediate names."""

    def __init__(self):
        self.helper, self.nodes, self._count = helper, [], 0

    def __call__(self, op: str, inputs: list[str], outputs: int | list[str] = 1, **attrs) -> str | list[str]:
        names = outputs if isinstance(outputs, list) else [self._name(op) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op, inputs, names, **attrs))
        return names[0] if len(names) == 1 else names

    def _name(self, op: str) -> str:
        self._count += 1
        return f"{op.lower()}_{self._count}"

    def ints(self, *values: int) -> str:
        return self("Constant", [], value_ints=list(values))

    def attribute(self, attribute: str, kind: str, like: str | None = None) -> str:
        """A Constant holding the node attribute `attribute` (value_int or value_float), as a
        1-D int64 tensor for ints, or cast like `like` for floats."""
        field, proto = {"int": ("value_int", AttributeProto.INT),
                        "float": ("value_float", AttributeProto.FLOAT)}[kind]
        node = self.helper.make_node("Constant", [], [self._name("attr")])
        node.attribute.append(self.helper.make_attribute_ref(field, proto))
        node.attribute[0].ref_attr_name = attribute
        self.nodes.append(node)
        value = node.output[0]
        if kind == "int":
            return self("Unsqueeze", [value, self.ints(0)])
        return self("CastLike", [value, like])

    def attribute_ref(self, op: str, inputs: list[str], ref: dict[str, str], kind: str = "int", **attrs) -> str:
        """A node whose attributes named in `ref` (all ints, or all floats with kind="float")
        come from the function's attributes."""
        proto = {"int": AttributeProto.INT, "float": AttributeProto.FLOAT}[kind]
        name = self._name(op)
        node = self.helper.make_node(op, inputs, [name], **attrs)
        for field, attribute in ref.items():
            node.attribute.append(self.helper.make_attribute_ref(field, proto))
            node.attribute[-1].ref_attr_name = attribute
        self.nodes.append(node)
        return name

    def function(self, domain: str, name: str, inputs: list[str], outputs: list[str], attributes: list[str],
                 opset: int, overload: str = ""):
        function = self.helper.make_function(domain, name, inputs, outputs, self.nodes,
                                             [self.helper.make_opsetid("", opset)], attributes=attributes)
        function.overload = overload
        return function


def _attend(b: _Body, q: str, k: str, v: str, *, scale: str, q_dim: str, v_dim: str, bias: str | None,
            channels_last: bool) -> str:
    """softmax(q^T k * scale + bias) applied to v, all [B, C, H, W]; returns [B, v_dim, H, W].

    Channel-major (the FP32 form): q, k, v flattened to [B, C, H*W]; ONNX Runtime folds the
    transposes into its MatMul. Channels-last (the form INT8 quantization inlines): q and v
    turned token-major [B, H*W, C] through a channels-last Transpose, and the output back
    through the inverse: ONNX Runtime's INT8 convolutions run channels-last, and its layout
    optimizer cancels these transposes against its own instead of adding more (the FP32
    graph would pay for them)."""
    channel_major = b.ints(0, 0, -1)
    keys = b("Reshape", [k, channel_major])
    if channels_last:
        q_tokens = b("Reshape", [b("Transpose", [q], perm=[0, 2, 3, 1]), b("Concat", [b.ints(0, -1), q_dim], axis=0)])
        scores = b("MatMul", [b("Mul", [q_tokens, scale]), keys])
    else:
        scores = b("MatMul", [b("Transpose", [b("Mul", [b("Reshape", [q, channel_major]), scale])], perm=[0, 2, 1]),
                              keys])
    probs = b("Softmax", [b("Add", [scores, bias]) if bias else scores], axis=-1)
    if channels_last:
        v_grid = b("Transpose", [v], perm=[0, 2, 3, 1])
        v_tokens = b("Reshape", [v_grid, b("Concat", [b.ints(0, -1), v_dim], axis=0)])
        mixed = b("Reshape", [b("MatMul", [probs, v_tokens]), b("Shape", [v_grid])])
        return b("Transpose", [mixed], perm=[0, 3, 1, 2])
    mixed = b("MatMul", [b("Reshape", [v, channel_major]), b("Transpose", [probs], perm=[0, 2, 1])])
    return b("Reshape", [mixed, b("Shape", [v])])


def cascaded_group_attention_function(domain: str, opset: int, num_heads: int, kernels: list[int], *,
                                      channels_last: bool = False):
    """The body for `num_heads` heads with depthwise kernels `kernels`, in standard ONNX
    (default-domain `opset`); see _attend for the two layouts. Each head crops its kernel out
    of the zero-padded stack, so a 3x3 head costs a 3x3 convolution."""
    largest = max(kernels)
    b = _Body()
    scale = b.attribute("scale", "float", like="x")
    key_dim, value_dim = b.attribute("key_dim", "int"), b.attribute("value_dim", "int")
    sizes = b("Concat", [key_dim, key_dim, value_dim], axis=0)
    chunks = b("Split", ["x"], num_heads, axis=1, num_outputs=num_heads) if num_heads > 1 else ["x"]
    chunks = chunks if isinstance(chunks, list) else [chunks]
    outputs, feat = [], chunks[0]
    for i in range(num_heads):
        head = b.ints(i)
        if i:
            feat = b("Add", [feat, chunks[i]])

        def pick(tensor: str) -> str:
            return b("Squeeze", [b("Gather", [tensor, head], axis=0), b.ints(0)])

        q, k, v = b("Split", [b("Conv", [feat, pick("qkv_weight"), pick("qkv_bias")]), sizes], 3, axis=1)
        crop = (largest - kernels[i]) // 2
        kernel = pick("dw_weight")
        if crop:
            kernel = b("Slice", [kernel, b.ints(crop, crop), b.ints(largest - crop, largest - crop), b.ints(2, 3)])
        q = b.attribute_ref("Conv", [q, kernel, pick("dw_bias")], {"group": "key_dim"}, auto_pad="SAME_UPPER")
        feat = _attend(b, q, k, v, scale=scale, q_dim=key_dim, v_dim=value_dim, bias=pick("bias"),
                       channels_last=channels_last)
        outputs.append(feat)
    b("Concat", outputs, list(CASCADED_GROUP_ATTENTION.outputs), axis=1)
    spec = CASCADED_GROUP_ATTENTION
    return b.function(domain, spec.name, list(spec.inputs), list(spec.outputs), spec.attribute_names, opset,
                      spec.overload({"num_heads": num_heads, "kernels": kernels}, channels_last=channels_last))


def single_head_attention_function(domain: str, opset: int, *, channels_last: bool = False):
    """SingleHeadAttention's body in standard ONNX (default-domain `opset`); see _attend for
    the two layouts."""
    b = _Body()
    scale = b.attribute("scale", "float", like="x")
    partial, qk = b.attribute("partial_dim", "int"), b.attribute("qk_dim", "int")
    x1 = b("Slice", ["x", b.ints(0), partial, b.ints(1)])
    x2 = b("Slice", ["x", partial, b.ints(2 ** 63 - 1), b.ints(1)])
    # GroupNorm with one group is InstanceNormalization over [B, 1, C*H*W] (as torch exports
    # it), then the per-channel affine.
    one = b("CastLike", [b("Constant", [], value_floats=[1.0]), "x"])
    zero = b("CastLike", [b("Constant", [], value_floats=[0.0]), "x"])
    normed = b.attribute_ref("InstanceNormalization", [b("Reshape", [x1, b.ints(0, 1, -1)]), one, zero],
                             {"epsilon": "epsilon"}, kind="float")
    normed = b("Reshape", [normed, b("Shape", [x1])])
    channel = b.ints(1, 2)  # [C] -> [C, 1, 1]
    normed = b("Add", [b("Mul", [normed, b("Unsqueeze", ["norm_weight", channel])]),
                       b("Unsqueeze", ["norm_bias", channel])])
    qkv = b("Conv", [normed, "qkv_weight", "qkv_bias"])
    q, k, v = b("Split", [qkv, b("Concat", [qk, qk, partial], axis=0)], 3, axis=1)
    mixed = _attend(b, q, k, v, scale=scale, q_dim=qk, v_dim=partial, bias=None, channels_last=channels_last)
    spec = SINGLE_HEAD_ATTENTION
    b("Concat", [mixed, x2], list(spec.outputs), axis=1)
    return b.function(domain, spec.name, list(spec.inputs), list(spec.outputs), spec.attribute_names, opset,
                      spec.overload({}, channels_last=channels_last))
