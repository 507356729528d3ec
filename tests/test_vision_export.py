"""`edgert export` of the vision variants: edgert attention ops with function bodies, plain
ONNX, BatchNorm folding, validation against the unfolded model, and one-line errors."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from conftest import run_cli
from edgert.exporters.export import export
from edgert.models.vision import create_model, randomize_statistics
from edgert.models.vision_configs import VARIANTS
from edgert.session import Session

RESOLUTION = 64  # the smallest the models take: fast, and windows still pad (4 -> 7 in stage 1)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """efficientvit-m1 (heads 2, 3, 3: two overloads; kernels 7,5,3,3) and shvit-s1, with and without edgert ops."""
    out = tmp_path_factory.mktemp("vision")
    return {(name, ops): export(name, out / f"{name}-{ops}.onnx", resolution=RESOLUTION, custom_ops=ops)
            for name in ("efficientvit-m1", "shvit-s1") for ops in (True, False)}


def reference_model(name: str) -> torch.nn.Module:
    """The model the exporter builds without a checkpoint, unfolded."""
    import dataclasses

    config = dataclasses.replace(VARIANTS[name], img_size=RESOLUTION)
    return randomize_statistics(create_model(config, seed=0), seed=0)


@pytest.mark.parametrize("name,op,heads", [("efficientvit-m1", "CascadedGroupAttention", {"heads2.k7-5", "heads3.k7-5-3"}),
                                           ("shvit-s1", "SingleHeadAttention", None)])
def test_custom_ops_have_bodies_and_plugin_namespace(exports, name, op, heads):
    model = onnx.load(str(exports[(name, True)].path))
    nodes = [n for n in model.graph.node if n.domain == "edgert"]
    assert nodes and {n.op_type for n in nodes} == {op}
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == b"edgert"
    bodies = {(f.name, f.overload) for f in model.functions}
    assert {(n.op_type, n.overload) for n in nodes} <= bodies
    if heads:
        assert {n.overload for n in nodes} == heads  # one overload per head count and kernel list
        assert model.ir_version >= 10  # function overloads
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert exports[(name, True)].manifest.extra["custom_ops"] == [op]
    plain = onnx.load(str(exports[(name, False)].path))
    assert not any(n.domain == "edgert" for n in plain.graph.node) and not plain.functions


@pytest.mark.parametrize("name", ["efficientvit-m1", "shvit-s1"])
def test_graphs_match_unfolded_torch_model(exports, name):
    reference = reference_model(name)
    pixels = np.random.default_rng(3).standard_normal((8, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(pixels)).numpy()
    assert np.abs(want).max() > 0.1  # randomised statistics: every branch contributes
    for ops in (True, False):
        got = Session(exports[(name, ops)].path).run({"pixel_values": pixels})["logits"]
        assert np.abs(got - want).max() / np.abs(want).max() <= 1e-4
        one = Session(exports[(name, ops)].path).run({"pixel_values": pixels[:1]})["logits"]
        np.testing.assert_allclose(one, got[:1], rtol=0, atol=1e-4 * np.abs(want).max())


def test_manifest_says_how_to_feed_images(exports):
    manifest = exports[("shvit-s1", True)].manifest
    assert manifest.task == "image-classification" and manifest.inputs == {"pixel_values": "pixel_values"}
    image = manifest.extra["image"]
    assert image["resolution"] == RESOLUTION and image["labels"] is None and len(image["mean"]) == 3
    assert "random init" in manifest.extra["vision"]["weights"]
    assert manifest.extra["vision"]["batchnorms_folded"] > 0


@pytest.mark.slow
def test_checkpoint_of_another_variant_names_the_parameter(tmp_path):
    from safetensors.torch import save_file

    checkpoint = tmp_path / "m0.safetensors"
    save_file(create_model(VARIANTS["efficientvit-m0"]).state_dict(), str(checkpoint))
    result = run_cli("export", "efficientvit-m1", "--checkpoint", str(checkpoint), "-o", str(tmp_path / "x.onnx"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "patch_embed.conv1.conv.weight has shape [8, 3, 3, 3] in the checkpoint, [16, 3, 3, 3]" \
        in result.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_timm_checkpoint_with_other_class_count_and_wrapper(tmp_path):
    import dataclasses

    config = dataclasses.replace(VARIANTS["shvit-s1"], num_classes=7, img_size=RESOLUTION)
    model = randomize_statistics(create_model(config, seed=5), seed=5)
    checkpoint = tmp_path / "s1.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    result = export("shvit-s1", tmp_path / "s1.onnx", checkpoint=checkpoint, resolution=RESOLUTION)
    pixels = np.random.default_rng(0).standard_normal((2, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(pixels)).numpy()
    got = Session(result.path).run({"pixel_values": pixels})["logits"]
    assert got.shape == (2, 7)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
    assert result.manifest.extra["vision"]["weights"] == "checkpoint s1.pth"


@pytest.mark.slow
@pytest.mark.parametrize("args,message", [
    (["efficientvit-m9"], "unknown model 'efficientvit-m9'"),
    (["shvit-s1", "--resolution", "100"], "resolution 100 is not one these models take"),
    (["shvit-s1", "--resolution", "32"], "multiple of 16"),
    (["shvit-s1", "--resolution", "0"], "resolution 0 is not one these models take"),  # not silently 224
    (["shvit-s1", "--checkpoint", ""], "checkpoint path is empty"),
    (["efficientvit-m0", "--checkpoint", "missing.pth"], "missing.pth"),
    (["efficientvit-m0", "--prune", "0.5"], "apply to transformers text models"),
    (["minilm", "--resolution", "224"], "--resolution applies to the vision models"),
])
def test_bad_requests_are_one_line_errors(tmp_path, args, message):
    result = run_cli("export", *args, "-o", str(tmp_path / "out.onnx"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.slow
def test_json_summary(tmp_path):
    out = tmp_path / "m0.onnx"
    result = run_cli("export", "efficientvit-m0", "--resolution", "64", "-o", str(out), "--json",
                     str(tmp_path / "m0.json"))
    assert result.returncode == 0, result.stderr
    assert "CascadedGroupAttention" in result.stdout and "BatchNorms folded" in result.stdout
    summary = json.loads((tmp_path / "m0.json").read_text())
    assert summary["manifest"]["extra"]["vision"]["variant"] == "efficientvit-m0"


@pytest.mark.parametrize("name", ["efficientvit-m1", "shvit-s1"])
def test_channels_last_twin_computes_the_same(exports, name, tmp_path):
    """Quantization inlines each body's channels-last twin: it must be the same function."""
    from edgert.op_spec import channels_last_overload

    path = exports[(name, True)].path
    model = onnx.load(str(path))
    overloads = {f.overload for f in model.functions}
    for node in model.graph.node:
        if node.domain == "edgert":
            assert channels_last_overload(node.overload) in overloads
            node.overload = channels_last_overload(node.overload)
    twin = tmp_path / "twin.onnx"
    onnx.save(model, str(twin))
    pixels = np.random.default_rng(1).standard_normal((3, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
    want = Session(path).run({"pixel_values": pixels})["logits"]
    got = Session(twin).run({"pixel_values": pixels})["logits"]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_int8_inlines_the_attention_ops(exports, tmp_path):
    from edgert.quant.quantize import Guard, QuantConfig, quantize_model

    digits = Path(__file__).resolve().parents[1] / "examples" / "digits"
    result = quantize_model(exports[("efficientvit-m1", True)].path, tmp_path / "m1.int8.onnx",
                            QuantConfig(calib_size=8, guard=Guard.parse("top1>=0.9")), calib=digits / "calib",
                            heldout=digits / "heldout" / "3")
    graph = onnx.load(str(result.path))
    assert not graph.functions and not any(n.domain == "edgert" for n in graph.graph.node)
    assert sum(n.op_type == "QuantizeLinear" for n in graph.graph.node) > 50
    # the per-head weights went back to initializers, so they carry per-channel scales
    convs = [n for n in graph.graph.node if n.op_type == "Conv" and "cascaded_group_attention" in n.name]
    initializers = {i.name for i in graph.graph.initializer}
    producers = {o: n for n in graph.graph.node for o in n.output}
    assert convs and all(producers[c.input[1]].op_type == "DequantizeLinear"
                         and producers[c.input[1]].input[0] in initializers for c in convs)
    assert result.accuracy.top1_agreement >= 0.9


@pytest.mark.slow
def test_trained_digit_classifier_is_accurate(tmp_path):
    """The committed EfficientViT-M0 digit weights export with their labels and classify."""
    from edgert.images import ImageSpec, image_files, load_preprocessed

    digits = Path(__file__).resolve().parents[1] / "examples" / "digits"
    result = export("efficientvit-m0", tmp_path / "d.onnx", checkpoint=digits / "efficientvit-m0.safetensors")
    spec = ImageSpec.from_manifest(result.manifest)
    assert spec.resolution == 64 and spec.labels == tuple("0123456789")
    files = image_files(digits / "heldout")
    labels = np.array([int(f.parent.name) for f in files])
    logits = Session(result.path).run({"pixel_values": load_preprocessed(files, spec)})["logits"]
    assert (logits.argmax(1) == labels).mean() >= 0.99
