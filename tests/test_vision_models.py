"""edgert's EfficientViT-M and SHViT against outputs and state-dict shapes recorded from timm.

The recordings come from scripts/record_timm_vision.py (run in bench/.venv-timm; timm itself
is never imported here).
"""

from __future__ import annotations

import copy
import gzip
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from edgert.errors import CheckpointError
from edgert.models.vision import create_model
from edgert.models.vision_checkpoints import load_weights
from edgert.models.vision_configs import VARIANTS, VisionConfig
from edgert.models.vision_op_swap import for_export

DATA = Path(__file__).resolve().parent / "data" / "timm_vision"
RECORDINGS = ["efficientvit_tiny", "shvit_tiny"]
TOLERANCE = 1e-4  # max|a - b| / max|b|
CENTERED_TOLERANCE = 1e-3  # the same for logits minus their batch mean, ~3% of the logits' size


def relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max|a - b| / max|b|."""
    return ((a - b).abs().max() / b.abs().max()).item()


def load_recording(name: str) -> dict:
    """Config, state dict (float32) and runs ({name: (input, logits, img_size)}) of one recording."""
    with safe_open(str(DATA / f"{name}.safetensors"), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items() if not k.startswith("record/")}
    runs = {run["name"]: ((tensors[f"record/{run['name']}/input"].float() - 128.0) / 64.0,
                          tensors[f"record/{run['name']}/logits"], run["img_size"])
            for run in json.loads(meta["runs"])}
    return {"config": VisionConfig.from_dict(json.loads(meta["config"])), "state": state, "runs": runs,
            "timm_version": meta["timm_version"]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: thread start-up and barriers cost far more than the arithmetic,
    badly so on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=RECORDINGS)
def recording(request) -> dict:
    return load_recording(request.param)


@pytest.fixture(scope="module")
def timm_shapes() -> dict[str, dict[str, list[int]]]:
    return json.loads(gzip.decompress((DATA / "state_dict_shapes.json.gz").read_bytes()))["variants"]


def native(config: VisionConfig, state: dict, img_size: int) -> torch.nn.Module:
    """edgert's model built for img_size with the recorded weights loaded (bias tables resampled as needed)."""
    model = create_model(replace(config, img_size=img_size))
    load_weights(model, state, variant="recorded")
    return model.eval()


def check_runs(recording: dict, transform=None) -> dict[str, float]:
    """Relative max diff of each recorded run; `transform` turns each loaded model into another form.

    Runs of several images also report the diff of the logits minus their batch mean (as
    `<run>/centered`): the part that depends on the image, a few percent of the whole here."""
    diffs = {}
    with torch.no_grad():
        for run, (x, expected, img_size) in recording["runs"].items():
            model = native(recording["config"], recording["state"], img_size)
            if transform is not None:
                model = transform(model)
            out = model(x)
            assert out.shape == expected.shape, run
            diffs[run] = relative_diff(out, expected)
            if len(x) > 1:
                diffs[f"{run}/centered"] = relative_diff(out - out.mean(0), expected - expected.mean(0))
    return diffs


def assert_match(diffs: dict[str, float]) -> None:
    """Every diff within TOLERANCE (CENTERED_TOLERANCE for batch-centered logits)."""
    bad = {run: d for run, d in diffs.items()
           if d > (CENTERED_TOLERANCE if run.endswith("/centered") else TOLERANCE)}
    assert not bad, diffs


def test_recordings_are_not_trivial(recording):
    # The recorded logits vary over the batch and attention biases were randomised, so a model that
    # ignored its input or its biases could not match them.
    _, logits, _ = recording["runs"]["b8"]
    assert logits.std(0).min() > 1e-3 * logits.abs().max()
    biases = [v for k, v in recording["state"].items() if k.endswith("attention_biases")]
    assert all(b.std() > 0.5 for b in biases)
    assert {"b1", "b8"} <= set(recording["runs"]) and len(recording["runs"]) >= 3
    assert recording["config"].family in ("efficientvit", "shvit") and recording["timm_version"]


def test_matches_timm(recording):
    assert_match(check_runs(recording))


@pytest.mark.parametrize("custom_ops", [True, False])
def test_export_form_matches_timm(recording, custom_ops):
    assert_match(check_runs(recording, lambda model: for_export(copy.deepcopy(model), custom_ops=custom_ops)))


def test_export_form_has_no_batchnorm_and_uses_custom_ops(recording):
    model = native(recording["config"], recording["state"], recording["config"].img_size)
    exported = for_export(copy.deepcopy(model), custom_ops=True)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in exported.modules())
    assert any(type(m).__name__.endswith("AttentionOp") for m in exported.modules())
    plain = for_export(copy.deepcopy(model), custom_ops=False)
    assert not any(type(m).__name__.endswith("AttentionOp") for m in plain.modules())


def test_wrong_attention_bias_breaks_the_match():
    # Negative control: the comparison notices a change the size of one bias table's noise.
    rec = load_recording("efficientvit_tiny")
    key = next(k for k in rec["state"] if k.endswith("attention_biases"))
    rec["state"] = {**rec["state"], key: rec["state"][key].flip(-1)}
    assert max(check_runs(rec).values()) > 1e-3


def test_resampled_bias_tables_change_shape():
    # The recordings at other resolutions really load tables of another window size.
    rec = load_recording("efficientvit_tiny")
    sizes = {run: img for run, (_, _, img) in rec["runs"].items() if img != rec["config"].img_size}
    assert sizes
    for img_size in sizes.values():
        model = create_model(replace(rec["config"], img_size=img_size))
        own = model.state_dict()
        assert any(own[k].shape != v.shape for k, v in rec["state"].items() if k.endswith("attention_biases"))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_state_dict_matches_timm(variant, timm_shapes):
    with torch.device("meta"):
        model = create_model(VARIANTS[variant])
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = timm_shapes[variant.replace("-", "_")]
    assert list(ours) == list(theirs)  # same keys, same order
    assert ours == theirs
    # timm's own key set loads without complaint.
    load_weights(model, {k: torch.empty(s, device="meta") for k, s in theirs.items()}, variant=variant)


def shape_text(shape) -> str:
    return ", ".join(str(d) for d in shape)


@pytest.mark.parametrize("source, target", [("efficientvit-m0", "efficientvit-m1"),
                                            ("efficientvit-m4", "efficientvit-m3"),
                                            ("shvit-s1", "shvit-s2"),
                                            ("shvit-s3", "shvit-s4")])
def test_checkpoint_of_another_variant_is_named(source, target, timm_shapes):
    theirs = timm_shapes[source.replace("-", "_")]
    mine = timm_shapes[target.replace("-", "_")]
    with torch.device("meta"):
        model = create_model(VARIANTS[target])
    with pytest.raises(CheckpointError) as info:
        load_weights(model, {k: torch.empty(s, device="meta") for k, s in theirs.items()}, variant=target)
    message = str(info.value)
    assert target in message
    mismatched = [k for k in mine if k in theirs and theirs[k] != mine[k]]
    named = [k for k in mismatched if re.search(rf"(?<![\w.]){re.escape(k)}(?![\w.])", message)]
    assert named, message
    key = named[0]
    assert shape_text(theirs[key]) in message and shape_text(mine[key]) in message, message


def test_missing_and_unexpected_keys_are_named():
    rec = load_recording("shvit_tiny")
    config, state = rec["config"], rec["state"]
    missing = "stages.1.blocks.0.mixer.m.qkv.bn.running_var"
    assert missing in state
    with pytest.raises(CheckpointError, match=re.escape(missing) + r"\b.*missing"):
        load_weights(create_model(config), {k: v for k, v in state.items() if k != missing}, variant="tiny")
    extra = "stages.1.blocks.0.mixer.m.extra.weight"
    with pytest.raises(CheckpointError, match=re.escape(extra)):
        load_weights(create_model(config), {**state, extra: torch.zeros(3)}, variant="tiny")
    load_weights(create_model(config), state, variant="tiny")  # the untouched checkpoint loads
