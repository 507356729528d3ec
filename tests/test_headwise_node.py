"""edgert::HeadwiseAttention: the decoder's attention over its per-head cache as one node per
layer, whose function body (exporters/headwise_ops.py) is the graph the decoder had inline."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402
from onnx import inliner  # noqa: E402

from edgert.exporters import decoder as decoder_recipe  # noqa: E402
from edgert.exporters import export  # noqa: E402
from edgert.exporters.heads import Transform  # noqa: E402
from edgert.exporters.optimize import count_ops  # noqa: E402
from edgert.kv_cache import CacheLayout  # noqa: E402
from edgert.op_spec import DOMAIN, HEADWISE_ATTENTION, PLUGIN_NAMESPACE  # noqa: E402
from edgert.plan import CachePolicy, HeadPlan, Softmax  # noqa: E402
from edgert.quant.inline import nested_nodes  # noqa: E402

from conftest import save_tiny_decoder  # noqa: E402

WINDOW = CachePolicy("window", 2, 3)
# Three layers of 4 query / 2 kv heads: r == 2 (s == 0), r == 1 and s == 1, r == 0 (s == 2).
LAYER_CACHES = [[CachePolicy(), CachePolicy()], [CachePolicy(), WINDOW], [WINDOW, WINDOW]]
GQA_PER_LAYER = [2, 3, 1]  # retrieval heads: with a bias and causal; streaming heads: with a bias


def _plan() -> HeadPlan:
    plan = HeadPlan.full(3, 4, 2, head_dim=16)
    for layer, caches in zip(plan.layers, LAYER_CACHES):
        layer.cache = list(caches)
    return plan


def _node_attributes(node) -> dict:
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _calls(model) -> list:
    return [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == HEADWISE_ATTENTION.name]


def _body_domains(model) -> set[str]:
    return {node.domain for function in model.functions for node in nested_nodes(function.node)}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The three-layer headwise decoder exported four ways: for ONNX Runtime CPU (default),
    with the node turned off, portable (--no-optimize), and with a clipped softmax."""
    directory = tmp_path_factory.mktemp("headwise")
    save_tiny_decoder(directory / "hf", "llama", num_hidden_layers=3, eos_token_id=None, bos_token_id=None,
                      pad_token_id=None)
    plan_path = directory / "plan.json"
    _plan().save(plan_path)
    transform = Transform(plan=HeadPlan.load(plan_path))
    paths = {name: directory / f"{name}.onnx" for name in ("node", "inline", "portable", "clipped")}
    results = {"node": export(str(directory / "hf"), paths["node"], transform=transform),
               "portable": export(str(directory / "hf"), paths["portable"], transform=transform, optimize=False),
               "clipped": export(str(directory / "hf"), paths["clipped"],
                                 transform=Transform(plan=HeadPlan.load(plan_path),
                                                     softmax=Softmax("clipped", -0.03, 1.03)))}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decoder_recipe, "use_headwise_node", lambda model: None)
        results["inline"] = export(str(directory / "hf"), paths["inline"], transform=transform)
    return paths, results


@pytest.mark.parametrize("name", ["node", "portable", "clipped"])
def test_one_node_per_layer_with_a_body_per_configuration(exports, name):
    paths, results = exports
    model = onnx.load(str(paths[name]))
    calls = _calls(model)
    assert len(calls) == 3
    configurations = [(a["retrieval_heads"], a["streaming_heads"]) for a in map(_node_attributes, calls)]
    assert configurations == [(2, 0), (1, 1), (0, 2)]
    bodies = {f.overload: f for f in model.functions if f.name == HEADWISE_ATTENTION.name}
    for node in calls:
        attributes = _node_attributes(node)
        assert attributes["plugin_namespace"] == PLUGIN_NAMESPACE
        assert node.overload == HEADWISE_ATTENTION.overload(attributes) and node.overload in bodies
        assert attributes["softmax"] == ("clipped" if name == "clipped" else "standard")
        assert attributes["fused_prefill"] == (name == "node")
    assert len(bodies) == 3
    assert results[name].manifest.extra["custom_ops"] == [HEADWISE_ATTENTION.name]
    if name == "clipped":  # the body's softmax is an edgert node, whose own body the model carries
        assert count_ops(model, ["ClippedSoftmax"])["ClippedSoftmax"] > 0
        assert any(f.name == "ClippedSoftmax" for f in model.functions)


def test_fused_prefill_lives_in_the_bodies_and_the_portable_bodies_have_none(exports):
    paths, results = exports
    node, portable = onnx.load(str(paths["node"])), onnx.load(str(paths["portable"]))
    assert "com.microsoft" in _body_domains(node)
    assert count_ops(node, ["GroupQueryAttention"]) == {"GroupQueryAttention": sum(GQA_PER_LAYER)}
    assert results["node"].manifest.extra["fusions"] == {"GroupQueryAttention": sum(GQA_PER_LAYER)}
    assert _body_domains(portable) <= {"", DOMAIN}
    assert all(o.domain != "com.microsoft" for o in portable.opset_import)
    clipped = onnx.load(str(paths["clipped"]))
    assert _body_domains(clipped) <= {"", DOMAIN}  # a clipped softmax never fuses


def _feeds(result) -> list[dict[str, np.ndarray]]:
    """Prefill chunks (left padding included) and one-token steps over partly filled caches."""
    layout = CacheLayout.from_dict(result.manifest.decoder["cache"])
    shapes = ((2, 5, 7), (1, 1, 9), (3, 1, 4), (2, 4, 1))
    return [decoder_recipe.step_inputs(layout, 128, batch=b, seq=s, past=p, seed=b * 10 + s)
            for b, s, p in shapes]


def _run(model_or_path, feeds) -> list[np.ndarray]:
    source = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("name", ["node", "portable", "clipped"])
def test_inlined_body_gives_the_same_results(exports, name):
    """ONNX Runtime runs the node by inlining its body itself; onnx's inliner gives the same graph."""
    paths, results = exports
    inlined = inliner.inline_local_functions(onnx.load(str(paths[name])))
    assert not _calls(inlined)
    for feeds in _feeds(results[name]):
        for got, want in zip(_run(inlined, feeds), _run(str(paths[name]), feeds)):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_node_gives_the_results_of_the_inline_graph(exports):
    """The export with one node per layer equals the export without it (today's inline graph,
    the same ops): logits and new keys/values within 1e-5 on prefill chunks and decode steps."""
    paths, results = exports
    assert not _calls(onnx.load(str(paths["inline"])))
    assert count_ops(onnx.load(str(paths["inline"])), ["GroupQueryAttention"]) == {
        "GroupQueryAttention": sum(GQA_PER_LAYER)}
    for feeds in _feeds(results["node"]):
        for got, want in zip(_run(str(paths["node"]), feeds), _run(str(paths["inline"]), feeds)):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _attention_layers(num_layers: int, plan: HeadPlan | None = None):
    """A tiny Llama adapted to `plan` (None: every head), its layers cache-ordered."""
    from edgert.models.adapters import adapt
    from edgert.models.decoder import order_for_cache

    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                      initializer_range=0.3)
    model = transformers.LlamaForCausalLM(config).eval()
    adapt(model, plan)
    order_for_cache(model, plan or HeadPlan.full(num_layers, 4, 2, head_dim=16))
    return model


def test_op_computes_what_the_inline_arithmetic_does():
    """HeadAttention through edgert::headwise_attention equals its inline path (the op's
    arguments reach the shared reference in the right order), one token and a chunk, clipped
    softmax and fused prefill included."""
    from edgert.models.adapters import head_attentions
    from edgert.models.attention import LayerCache

    model = _attention_layers(1)
    attention = head_attentions(model)[0]
    rng = torch.Generator().manual_seed(1)
    for seq, softmax, fused in ((1, "standard", False), (4, "standard", True), (4, "clipped", False)):
        attention.softmax_kind, attention.gamma, attention.zeta = softmax, -0.03, 1.03
        attention.fused_prefill = fused
        cache = LayerCache(1, torch.zeros(2, 1, seq, seq), torch.zeros(2, 1, seq, seq),
                           retrieval_key=torch.randn(2, 1, 6, 16, generator=rng),
                           retrieval_value=torch.randn(2, 1, 6, 16, generator=rng),
                           retrieval_bias=torch.zeros(2, 1, 1, 6),
                           streaming_key=torch.randn(2, 1, 5, 16, generator=rng),
                           streaming_value=torch.randn(2, 1, 5, 16, generator=rng),
                           streaming_bias=torch.zeros(2, 1, seq, 5), unpadded=torch.tensor(True))
        cache.streaming_bias[:, :, :, 0] = torch.finfo(torch.float32).min
        hidden = torch.randn(2, seq, 64, generator=rng)
        rope = (torch.ones(2, seq, 16), torch.zeros(2, seq, 16))
        outputs = []
        for node in (False, True):
            attention.headwise_node = node
            with torch.no_grad():
                outputs.append(attention(hidden, rope=rope, cache=copy.copy(cache)))
        torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)


def test_uneven_groups_stay_inline_and_say_so():
    """A pruned layer whose query heads read kv heads unevenly cannot be the op: it keeps the
    inline arithmetic, and the manifest note says how many layers did."""
    from edgert.models.adapters import head_attentions

    plan = HeadPlan.full(2, 4, 2, head_dim=16)
    plan.layers[1].kept_heads, plan.layers[1].kv_heads = [0, 1, 3], [0, 0, 1]
    model = _attention_layers(2, plan)
    note = decoder_recipe.use_headwise_node(model)
    assert [a.headwise_node for a in head_attentions(model)] == [True, False]
    assert note.startswith("cache attention of 1 of 2 layers left as plain ONNX ops")
