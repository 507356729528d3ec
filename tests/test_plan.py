import json

import pytest

from edgert import CachePolicy, HeadPlan, LayerPlan, Manifest, ModelLoadError, PlanError, Softmax


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


def plan_dict(**layer_changes):
    data = HeadPlan.full(2, 4, head_dim=8).to_dict()
    data["layers"][0].update(layer_changes)
    return data


@pytest.mark.parametrize("data, message", [
    ({"layers": 5}, "'layers' must be a list, got an integer"),
    ({}, "no 'layers'"),
    ({"layers": [5]}, "layer 0 must be an object, got an integer"),
    ({"format": 2, "layers": []}, "unsupported plan format 2"),
    ({"format": "1", "layers": []}, "unsupported plan format '1'"),
    ({**plan_dict(), "head_dim": "8"}, "head_dim must be an integer, got a string"),
    ({**plan_dict(), "head_dim": 0}, "head_dim must be >= 1, got 0"),
    (plan_dict(num_heads="4"), "layer 0: num_heads must be an integer, got a string"),
    (plan_dict(num_heads=4.5), "layer 0: num_heads must be an integer, got a number"),
    (plan_dict(kept_heads="0123"), "layer 0: kept_heads must be a list of integers, got a string"),
    (plan_dict(kv_heads=[0, 1, 2, None]), "layer 0: kv_heads must be a list of integers"),
    (plan_dict(gated="yes"), "layer 0: gated must be true or false, got a string"),
    (plan_dict(softmax="clipped"), "layer 0: softmax must be an object, got a string"),
    (plan_dict(softmax={"kind": "clipped", "gamma": "a", "zeta": 1}), "softmax gamma must be a finite number"),
    (plan_dict(softmax={"kind": 5}), "softmax kind must be a string, got an integer"),
    (plan_dict(softmax={"kind": "standard", "temperature": 2}), "malformed plan: layer 0: .*temperature"),
    (plan_dict(cache=[{"kind": "window", "sink": "a", "recent": 4}] * 4), "kv head 0: sink must be an integer"),
    (plan_dict(cache=[7] * 4), "layer 0 kv head 0: cache policy must be an object"),
    (plan_dict(cache={}), "layer 0: cache must be a list, got an object"),
])
def test_plan_json_with_wrong_types_is_a_plan_error(data, message):
    with pytest.raises(PlanError, match=message):
        HeadPlan.from_json(json.dumps(data))


@pytest.mark.parametrize("text, message", [
    (123, "plan JSON must be a string, got int"),
    (None, "plan JSON must be a string, got NoneType"),
    ("[1, 2]", "plan JSON must be an object, got a list"),
    ("null", "plan JSON must be an object, got null"),
    ("[" * 100_000, "plan is not valid JSON"),
    (b"\xff\xfe", "plan is not valid JSON"),
])
def test_plan_json_that_is_not_an_object(text, message):
    with pytest.raises(PlanError, match=message):
        HeadPlan.from_json(text)


def test_plan_load_with_bad_paths(tmp_path):
    with pytest.raises(PlanError, match="plan path must be a str or os.PathLike, got int"):
        HeadPlan.load(123)
    with pytest.raises(PlanError, match="plan file not found"):
        HeadPlan.load(tmp_path / "none.json")
    with pytest.raises(PlanError, match="plan file is a folder, not a file"):
        HeadPlan.load(tmp_path)
    binary = tmp_path / "plan.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PlanError, match="is not UTF-8 text"):
        HeadPlan.load(binary)


def test_plan_constructors_check_their_arguments(tmp_path):
    with pytest.raises(PlanError, match="3 kv heads do not divide 4 query heads"):
        HeadPlan.full(2, 4, num_kv_heads=3)
    with pytest.raises(PlanError, match="num_layers must be >= 1, got 0"):
        HeadPlan.full(0, 4)
    with pytest.raises(PlanError, match="num_heads must be an integer, got a string"):
        HeadPlan.full(2, "4")
    tsv = tmp_path / "heads.tsv"
    tsv.write_text("0.5\t0.1\n")
    with pytest.raises(PlanError, match="num_heads must be an integer"):
        HeadPlan.from_duo_attention_tsv(tsv, num_heads="4", retrieval_fraction=0.5)
    with pytest.raises(PlanError, match=r"retrieval_fraction must be a number in \[0, 1\]"):
        HeadPlan.from_duo_attention_tsv(tsv, num_heads=4, retrieval_fraction="half")
    tsv.write_text("0.5\tnan\n")
    with pytest.raises(PlanError, match="gates must be finite numbers"):
        HeadPlan.from_duo_attention_tsv(tsv, num_heads=4, retrieval_fraction=0.5)


@pytest.mark.parametrize("text, message", [
    ("[]", "manifest must be a JSON object, got a list"),
    ("{", "manifest is not valid JSON"),
    ('{"edgert_version": "0.1.0", "task": "x", "opset": 18}', "manifest has no 'source'"),
    ('{"edgert_version": "0.1.0", "source": "s", "task": "x", "opset": "18"}',
     "manifest field 'opset' must be an integer, got a string"),
    ('{"edgert_version": "0.1.0", "source": "s", "task": "x", "opset": 18, "text": {"max_length": "256"}}',
     r"manifest text\.max_length must be an integer >= 1, got a string"),
    ('{"edgert_version": "0.1.0", "source": "s", "task": "x", "opset": 18, "inputs": {"ids": 1}}',
     "manifest field 'inputs' must map names to role strings"),
])
def test_bad_manifests_are_model_load_errors(text, message):
    with pytest.raises(ModelLoadError, match=message):
        Manifest.from_json(text)


def test_manifest_ignores_unknown_fields():
    manifest = Manifest.from_json('{"edgert_version": "9", "source": "s", "task": "x", "opset": 18, "new": 1}')
    assert manifest.source == "s" and manifest.plan is None


# --- issue 17: sizes and scores checked before anything is allocated or chosen ----------------

def test_window_caches_are_bounded_by_max_length_or_an_absolute_limit():
    from edgert.plan import MAX_WINDOW_TOKENS

    CachePolicy("window", 4, 12).check("w", max_length=16)  # a window as long as the model is legal
    with pytest.raises(PlanError, match=r"w: a window of sink 4 \+ recent 13 tokens is longer than the model's "
                                        r"max_length \(16\)"):
        CachePolicy("window", 4, 13).check("w", max_length=16)
    with pytest.raises(PlanError, match=f"longer than the {MAX_WINDOW_TOKENS} tokens a window may keep"):
        CachePolicy("window", 10**12, 256).check("w")
    with pytest.raises(PlanError, match="sink a number with about 5001 digits"):  # str() of it would raise
        CachePolicy("window", 10**5000, 256).check("w")
    plan = HeadPlan.full(2, 4, num_kv_heads=2).with_windows(1, 64, 256)
    assert plan.check(max_length=320) is plan
    with pytest.raises(PlanError, match=r"layer \d kv head 1: a window of sink 64 \+ recent 256"):
        plan.check(max_length=319)
    with pytest.raises(PlanError, match="longer than the model's max_length"):
        HeadPlan.full(2, 4).with_windows(1, 64, 256, max_length=128)
    huge = HeadPlan.full(1, 2).to_dict()
    huge["layers"][0]["cache"][0] = {"kind": "window", "sink": 10**12, "recent": 1}
    with pytest.raises(PlanError, match="a window may keep"):
        HeadPlan.from_dict(huge)


@pytest.mark.parametrize("args, kwargs, message", [
    ((0.5, 4, 16), {"scores": [[1.0]]}, r"scores must hold one row per layer \(2\) of one number per kv head \(2\)"),
    ((0.5, 4, 16), {"scores": [[1.0, "a"], [0.0, 1.0]]}, "score of layer 0 kv head 1 must be a finite number"),
    ((0.5, 4, 16), {"scores": [[1.0, float("nan")], [0.0, 1.0]]}, "must be a finite number, got nan"),
    ((0.5, 4, 16), {"scores": "scores"}, "scores must hold one row per layer"),
    (("half", 4, 16), {}, "retrieval heads must be a fraction or a count, got a string"),
    ((float("nan"), 4, 16), {}, r"a retrieval fraction must lie in \[0, 1\] \(a finite number\), got nan"),
    ((0.5, 4.5, 16), {}, "sink must be an integer, got a number"),
])
def test_with_windows_raises_only_plan_errors(args, kwargs, message):
    with pytest.raises(PlanError, match=message):
        HeadPlan.full(2, 4, num_kv_heads=2).with_windows(*args, **kwargs)


def test_with_windows_takes_exact_fractions():
    from fractions import Fraction

    assert HeadPlan.full(2, 4, num_kv_heads=2).with_windows(Fraction(1, 2), 4, 16).retrieval_heads == 2


@pytest.mark.parametrize("decoder, message", [
    ({"eos_token_ids": ["2"]}, "manifest decoder.eos_token_ids must be a list of integers >= 0"),
    ({"eos_token_ids": 2}, "manifest decoder.eos_token_ids must be a list of integers >= 0, got an integer"),
    ({"eos_token_ids": [1.5]}, "decoder.eos_token_ids"),
    ({"bos_token_id": "1"}, "manifest decoder.bos_token_id must be an integer >= 0 or null, got a string"),
    ({"max_length": 0}, "manifest decoder.max_length must be an integer >= 1"),
    ({"vocab_size": 2.0}, "manifest decoder.vocab_size must be an integer >= 1, got a number"),
])
def test_manifest_decoder_fields_are_checked(decoder, message):
    manifest = {"edgert_version": "0.1.0", "source": "x", "task": "text-generation", "opset": 18,
                "decoder": {"max_length": 16, "vocab_size": 8, "eos_token_ids": [2], **decoder}}
    with pytest.raises(ModelLoadError, match=message):
        Manifest.from_json(json.dumps(manifest))


@pytest.mark.parametrize("read", [
    lambda path: HeadPlan.load(path),
    lambda path: HeadPlan.from_duo_attention_tsv(path, 4, retrieval_fraction=0.5),
], ids=["plan", "pattern"])
def test_files_far_larger_than_a_plan_are_refused_before_reading(tmp_path, read):
    """A 64 MiB file (sparse: no disk is used) is refused by its size; it was read whole, and a
    960 MB pattern file took 17 GB before its shape was checked."""
    path = tmp_path / "big"
    with open(path, "wb") as f:
        f.truncate(64 * 2**20)
    with pytest.raises(PlanError, match="is larger than 16 MiB"):
        read(path)


def test_plan_files_the_os_refuses_are_plan_errors(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(PlanError, match="cannot read plan file .*loop: Too many levels of symbolic links"):
        HeadPlan.load(loop)
    with pytest.raises(PlanError, match="plan file is not a regular file: /dev/zero"):
        HeadPlan.load("/dev/zero")
    from edgert.errors import OutputPathError

    with pytest.raises(OutputPathError, match="cannot write .*x{300}.json: File name too long"):
        HeadPlan.full(1, 2).save(tmp_path / ("x" * 300 + ".json"))
