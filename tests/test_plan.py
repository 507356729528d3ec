import json

import pytest

from edgert import CachePolicy, HeadPlan, LayerPlan, Manifest, PlanError, Softmax


def test_full_plan_round_trips_through_json():
    plan = HeadPlan.full(num_layers=3, num_heads=8, num_kv_heads=2, head_dim=64)
    plan.layers[1].softmax = Softmax("clipped", gamma=-0.025, zeta=1.0)
    plan.layers[2].cache[1] = CachePolicy("window", sink=64, recent=256)
    again = HeadPlan.from_json(plan.to_json())
    assert again == plan
    assert again.layers[0].kv_heads == [0, 0, 0, 0, 1, 1, 1, 1]


def test_plan_allows_uneven_and_empty_layers():
    plan = HeadPlan.full(2, 4)
    plan.layers[0] = LayerPlan(4, [0, 2], [0, 1], 2, cache=[CachePolicy(), CachePolicy()])
    plan.layers[1] = LayerPlan(4, [], [], 0, cache=[])
    assert HeadPlan.from_json(plan.to_json()).kept_heads == 2


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.layers[0].kept_heads.append(0), "duplicates"),
    (lambda p: p.layers[0].kept_heads.__setitem__(0, 9), r"kept_heads must lie in \[0, 4\)"),
    (lambda p: p.layers[0].kv_heads.pop(), "one entry per kept head"),
    (lambda p: setattr(p.layers[0], "softmax", Softmax("clipped", 0.1, 1.0)), "gamma < 0"),
    (lambda p: setattr(p.layers[0], "softmax", Softmax("clipped", -0.1, 0.5)), "zeta >= 1"),
    (lambda p: setattr(p.layers[0], "softmax", Softmax("sparse")), "unknown softmax"),
    (lambda p: p.layers[0].cache.__setitem__(0, CachePolicy("window", 4, 0)), "recent >= 1"),
    (lambda p: p.layers[0].cache.pop(), "one policy per kv head"),
])
def test_plan_check_names_the_problem(mutate, message):
    plan = HeadPlan.full(2, 4)
    mutate(plan)
    with pytest.raises(PlanError, match=message):
        HeadPlan.from_json(plan.to_json())


def test_malformed_plan_json_is_a_plan_error(tmp_path):
    with pytest.raises(PlanError, match="not valid JSON"):
        HeadPlan.from_json("{")
    with pytest.raises(PlanError, match="malformed plan"):
        HeadPlan.from_json(json.dumps({"layers": [{"num_heads": 2}]}))
    with pytest.raises(PlanError, match="not found"):
        HeadPlan.load(tmp_path / "missing.json")


def test_plan_must_match_model_shape():
    plan = HeadPlan.full(2, 4)
    plan.check_matches(2, 4)
    with pytest.raises(PlanError, match="plan has 2 layers, model has 3"):
        plan.check_matches(3, 4)
    with pytest.raises(PlanError, match="4 heads, model has 12"):
        plan.check_matches(2, 12)


def test_duo_attention_pattern_file_becomes_streaming_heads(tmp_path):
    tsv = tmp_path / "full_attention_heads.tsv"
    tsv.write_text("0.9\t0.1\n0.2\t0.8\n0.05\t0.3\n")
    plan = HeadPlan.from_duo_attention_tsv(tsv, num_heads=4, retrieval_fraction=1 / 3,
                                           sink=4, recent=16)
    kinds = [[c.kind for c in layer.cache] for layer in plan.layers]
    assert kinds == [["full", "window"], ["window", "full"], ["window", "window"]]
    assert plan.layers[0].kv_heads == [0, 0, 1, 1]
    # 2 full heads keep 100 tokens, 4 window heads keep 20: (2*100 + 4*20)
    assert plan.cache_tokens(100) == 280


def test_duo_attention_pattern_errors(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("0.1\tx\n")
    with pytest.raises(PlanError, match="tab-separated"):
        HeadPlan.from_duo_attention_tsv(bad, num_heads=2, retrieval_fraction=0.5)
    bad.write_text("0.1\t0.2\t0.3\n")
    with pytest.raises(PlanError, match="do not divide"):
        HeadPlan.from_duo_attention_tsv(bad, num_heads=4, retrieval_fraction=0.5)


def test_manifest_round_trip_keeps_plan():
    manifest = Manifest(edgert_version="0.1.0", source="minilm", task="sentence-embedding",
                        opset=18, inputs={"input_ids": "input_ids"}, dims={"batch": "batch"},
                        validation={"atol": 1e-4, "max_abs_diff": {"y": 1e-6}},
                        text={"max_length": 256, "vocab_size": 30522}, plan=HeadPlan.full(1, 2))
    assert Manifest.from_json(manifest.to_json()) == manifest
