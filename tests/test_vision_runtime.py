"""Image classifiers at run time: preprocessing as timm evaluates, image folders and their
labels, image calibration data, INT8 quantization judged on held-out images, and the
`run --image`, `quantize` and `bench` commands on a tiny hand-built model (no torch)."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgert.errors import DependencyError, EdgertError
from edgert.images import ImageError, ImageSpec, folder_labels, image_files, load_image, preprocess, top_k
from edgert.plan import MANIFEST_KEY, Manifest
from edgert.quant.calib import CalibrationError, load_images
from edgert.quant.quantize import Guard, QuantConfig, QuantizeError, quantize_model
from edgert.session import Session

from conftest import assert_one_error, invoke, make_tiny_model

PIL = pytest.importorskip("PIL.Image")
LABELS = ("red", "green", "blue", "cyan", "magenta", "yellow")
RESOLUTION = 32


def make_image_model(path, *, labels=LABELS, function: bool = True, task: str = "image-classification"):
    """pixel_values [batch, 3, 32, 32] → 3x3 Conv + Relu (inside an edgert::CascadedGroupAttention
    function when `function`) → GlobalAveragePool → Flatten → Gemm → logits [batch, 6]. The
    first three classes are the image's dominant colour channel."""
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.05
    conv[[0, 1, 2], [0, 1, 2], 1, 1] = 1.0
    fc = rng.standard_normal((8, len(LABELS))).astype(np.float32) * 0.05
    fc[:3, :3] += np.eye(3, dtype=np.float32)
    inits = [numpy_helper.from_array(conv, "conv_w"), numpy_helper.from_array(np.zeros(8, np.float32), "conv_b"),
             numpy_helper.from_array(fc, "fc_w"), numpy_helper.from_array(np.zeros(len(LABELS), np.float32), "fc_b")]
    block = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    if function:
        nodes = [helper.make_node("CascadedGroupAttention", ["pixel_values", "conv_w", "conv_b"], ["act"],
                                  domain="edgert", name="blocks.0.attn")]
    else:
        nodes = [helper.make_node("Conv", ["pixel_values", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["act"])]
    nodes += [helper.make_node("GlobalAveragePool", ["act"], ["pool"]),
              helper.make_node("Flatten", ["pool"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="head")]
    graph = helper.make_graph(
        nodes, "tiny-vision",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["batch", 3, RESOLUTION, RESOLUTION])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])], inits)
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid("edgert", 1)] if function else [])
    functions = [helper.make_function("edgert", "CascadedGroupAttention", ["x", "w", "b"], ["y"], block,
                                      [helper.make_opsetid("", 18)])] if function else []
    model = helper.make_model(graph, opset_imports=opsets, functions=functions)
    model.ir_version = 8
    image = {"resolution": RESOLUTION, "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
             "crop_pct": 0.875, "interpolation": "bicubic", "labels": list(labels) if labels else None}
    manifest = Manifest(edgert_version="0.1.0", source="tiny-vision", task=task, opset=18,
                        inputs={"pixel_values": "pixel_values"}, dims={"batch": "batch"}, extra={"image": image})
    helper.set_model_props(model, {MANIFEST_KEY: manifest.to_json()})  # as exporters/export.py stores it
    onnx.save(model, str(path))
    return path


def write_image(path, channel: int, rng, size=(48, 40)):
    """A noisy image whose `channel` (0 red, 1 green, 2 blue) dominates."""
    pixels = rng.integers(0, 90, (size[1], size[0], 3)).astype(np.uint8)
    pixels[..., channel] = rng.integers(160, 256, (size[1], size[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.fromarray(pixels).save(path)
    return path


def image_folder(root, per_class: int, *, seed: int = 0, labelled: bool = True):
    rng = np.random.default_rng(seed)
    for channel, label in enumerate(LABELS[:3]):
        for i in range(per_class):
            write_image(root / (label if labelled else "") / f"{label}{i}.png", channel, rng)
    return root


@pytest.fixture
def vision_model(tmp_path):
    return make_image_model(tmp_path / "vision.onnx")


@pytest.fixture
def spec(vision_model):
    return ImageSpec.from_manifest(Session(vision_model).manifest)




# ---------------------------------------------------------------------------------------------
# preprocessing

def test_spec_from_manifest(spec):
    assert spec.resolution == 32 and spec.crop_pct == 0.875 and spec.interpolation == "bicubic"
    assert spec.mean == (0.5, 0.5, 0.5) and spec.labels == LABELS
    assert spec.resize_to == 36  # floor(32 / 0.875), as timm scales before its centre crop


def test_preprocess_crop_and_normalise_by_hand():
    """crop_pct 1: no resize of a 6x4 image to resolution 4, a centre crop of columns 1..4,
    then /255 and (x - mean) / std per channel, channels first."""
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    spec = ImageSpec(resolution=4, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), crop_pct=1.0,
                     interpolation="bilinear")
    got = preprocess(PIL.fromarray(pixels), spec)
    crop = pixels[:, 1:5].astype(np.float64) / 255
    want = ((crop - np.array(spec.mean)) / np.array(spec.std)).transpose(2, 0, 1)
    assert got.dtype == np.float32 and got.shape == (3, 4, 4)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_preprocess_resizes_the_shorter_side_then_crops_the_centre(spec):
    # 48 wide x 40 high: shorter side 40 → 36, longer 48 → int(36 * 48 / 40) = 43, crop 32 x 32
    pixels = np.zeros((40, 48, 3), np.uint8)
    pixels[:, :24, 0] = 255  # left half red, right half blue
    pixels[:, 24:, 2] = 255
    got = preprocess(PIL.fromarray(pixels), spec)
    assert got.shape == (3, 32, 32)
    red, blue = got[0], got[2]
    assert np.allclose(red[:, :8], 1) and np.allclose(red[:, -8:], -1)  # (1 - 0.5) / 0.5, (0 - 0.5) / 0.5
    assert np.allclose(blue[:, :8], -1) and np.allclose(blue[:, -8:], 1)
    tall = preprocess(PIL.new("RGB", (20, 90), (255, 0, 0)), spec)  # portrait: width is the shorter side
    assert tall.shape == (3, 32, 32) and np.allclose(tall[0], 1) and np.allclose(tall[1], -1)


def test_grey_and_transparent_images_become_rgb(tmp_path, spec):
    grey = tmp_path / "grey.png"
    PIL.new("L", (40, 40), 255).save(grey)
    rgba = tmp_path / "rgba.webp"
    PIL.new("RGBA", (40, 40), (0, 255, 0, 10)).save(rgba)
    assert np.allclose(preprocess(load_image(grey), spec), 1)
    assert np.allclose(preprocess(load_image(rgba), spec)[1], 1, atol=0.02)


def test_not_an_image_model_is_one_clear_error(tmp_path):
    model = make_image_model(tmp_path / "m.onnx", task="sentence-embedding")
    with pytest.raises(ImageError, match="m.onnx is not an image model .*task 'sentence-embedding'"):
        ImageSpec.from_manifest(Session(model).manifest, name="m.onnx")
    with pytest.raises(ImageError, match="no edgert manifest"):
        ImageSpec.from_manifest(None)
    bad = Manifest("0.1.0", "x", "image-classification", 18, extra={"image": {"resolution": 32, "mean": [0.5] * 2}})
    with pytest.raises(ImageError, match="image.mean must be 3 finite numbers"):
        ImageSpec.from_manifest(bad)


def test_top_k():
    logits = np.array([[0.0, 2.0, 1.0], [5.0, 0.0, 0.0]], np.float32)
    first, second = top_k(logits, ["a", "b", "c"], k=5)  # k beyond the classes: all of them
    assert [p.label for p in first] == ["b", "c", "a"] and [p.index for p in first] == [1, 2, 0]
    assert sum(p.probability for p in first) == pytest.approx(1)
    assert first[0].probability == pytest.approx(np.exp(2) / (1 + np.exp(1) + np.exp(2)))
    assert [p.label for p in top_k(logits[1], None, k=1)[0]] == ["0"]
    with pytest.raises(ImageError, match="k must be"):
        top_k(logits, None, k=0)


# ---------------------------------------------------------------------------------------------
# image folders

def test_image_files_skip_hidden_and_name_a_stray_file(tmp_path):
    rng = np.random.default_rng(0)
    write_image(tmp_path / "b.PNG", 0, rng)
    write_image(tmp_path / "sub" / "a.jpg", 1, rng)
    (tmp_path / ".DS_Store").write_bytes(b"\0\1")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "notes.txt").write_text("hidden folders are skipped")
    assert image_files(tmp_path) == [tmp_path / "b.PNG", tmp_path / "sub" / "a.jpg"]
    (tmp_path / "sub" / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError, match=r"sub/notes.txt is not an image \(.png"):
        image_files(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="empty holds no images"):
        image_files(tmp_path / "empty")
    with pytest.raises(ImageError, match="image folder not found"):
        image_files(tmp_path / "missing")


def test_corrupt_image_is_named(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageError, match="cannot read .*broken.png as an image"):
        load_image(broken)
    with pytest.raises(ImageError, match="image not found: .*none.png"):
        load_image(tmp_path / "none.png")


def test_folder_labels(tmp_path):
    root = image_folder(tmp_path / "held", 2)
    files = image_files(root)
    labels = folder_labels(files, root, LABELS)
    assert [LABELS[i] for i in labels] == [f.parent.name for f in files]
    assert folder_labels(image_files(root / "red"), root / "red", LABELS) is None  # flat folder
    assert folder_labels(files, root, ("x", "y")) is None  # sub-folders that are not labels: unlabelled
    write_image(root / "purple" / "p.png", 0, np.random.default_rng(1))
    with pytest.raises(ImageError, match="sub-folder .*purple is not one of the model's labels"):
        folder_labels(image_files(root), root, LABELS)
    numbered = tmp_path / "numbered"
    for index in (0, 2):
        write_image(numbered / str(index) / "i.png", index, np.random.default_rng(index))
    assert folder_labels(image_files(numbered), numbered, None, classes=6).tolist() == [0, 2]


# ---------------------------------------------------------------------------------------------
# calibration data

def test_load_images_from_folder_and_npz(tmp_path, spec):
    root = image_folder(tmp_path / "calib", 3)
    data = load_images(root, spec, classes=6)
    assert data.pixel_values.shape == (9, 3, 32, 32) and data.pixel_values.dtype == np.float32
    assert data.labels.tolist() == [2, 2, 2, 1, 1, 1, 0, 0, 0]  # sorted folders: blue, green, red
    assert "9 images, labelled by folder" in data.source
    few = load_images(root, spec, size=3)
    assert sorted(few.labels.tolist()) == [0, 1, 2]  # spread over the folders, not the first three
    feeds = few.feeds("pixel_values")
    assert len(feeds) == 3 and feeds[0]["pixel_values"].shape == (1, 3, 32, 32)
    npz = tmp_path / "images.npz"
    np.savez(npz, pixel_values=data.pixel_values, labels=data.labels)
    loaded = load_images(npz, spec, classes=6)
    np.testing.assert_array_equal(loaded.pixel_values, data.pixel_values)
    assert loaded.labels.tolist() == data.labels.tolist()
    np.savez(npz, pixel_values=data.pixel_values.astype(np.float64))
    assert load_images(npz, spec).labels is None


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((2, 3, 32, 32), np.float32)}, "needs a pixel_values array [N, 3, 32, 32]"),
    ({"pixel_values": np.zeros((2, 3, 16, 16), np.float32)}, "must be [N, 3, 32, 32] with N >= 1, got shape (2, 3, 16, 16)"),
    ({"pixel_values": np.zeros((2, 32, 32, 3), np.float32)}, "must be [N, 3, 32, 32]"),
    ({"pixel_values": np.zeros((0, 3, 32, 32), np.float32)}, "with N >= 1"),
    ({"pixel_values": np.zeros((2, 3, 32, 32), np.uint8)}, "must be floats"),
    ({"pixel_values": np.full((1, 3, 32, 32), np.nan, np.float32)}, "NaN or infinite"),
    ({"pixel_values": np.zeros((2, 3, 32, 32), np.float32), "labels": np.zeros(3, np.int64)}, "labels must be integers [2]"),
    ({"pixel_values": np.zeros((2, 3, 32, 32), np.float32), "labels": np.array([0.0, 1.0])}, "labels must be integers"),
    ({"pixel_values": np.zeros((2, 3, 32, 32), np.float32), "labels": np.array([0, 6])}, "labels must lie in [0, 6)"),
])
def test_bad_npz_images(tmp_path, spec, arrays, message):
    npz = tmp_path / "bad.npz"
    np.savez(npz, **arrays)
    with pytest.raises(CalibrationError) as error:
        load_images(npz, spec, classes=6)
    assert message in str(error.value)


def test_bad_image_sources(tmp_path, spec):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="holds no images"):
        load_images(tmp_path / "empty", spec)
    with pytest.raises(CalibrationError, match="calibration data not found"):
        load_images(tmp_path / "none", spec)
    text = tmp_path / "calib.txt"
    text.write_text("a sentence\n")
    with pytest.raises(CalibrationError, match="a folder of images or an .npz of pixel_values"):
        load_images(text, spec)


# ---------------------------------------------------------------------------------------------
# quantize

def test_quantize_with_top1_guard_and_labelled_heldout(vision_model, tmp_path):
    calib = image_folder(tmp_path / "calib", 4, labelled=False)
    held = image_folder(tmp_path / "held", 4, seed=1)
    out = tmp_path / "int8.onnx"
    result = quantize_model(vision_model, out, QuantConfig(calib_size=8, guard=Guard.parse("top1>=0.9")),
                            calib=calib, heldout=held)
    acc = result.accuracy
    assert result.image and result.inlined == ["CascadedGroupAttention"]
    assert acc.images == acc.labelled == 12 and acc.top1_agreement >= 0.9 and acc.sqnr_db > 20
    assert acc.fp32_top1 == 1.0 and acc.int8_top1 >= 0.9  # the dominant colour is the class
    assert result.speed.seq is None and result.speed.batch == 1 and result.speed.speedup > 0
    assert "12 images, labelled by folder" in result.heldout
    graph = onnx.load(str(out)).graph
    assert not any(n.domain == "edgert" for n in graph.node)
    conv = next(n for n in graph.node if n.op_type == "Conv")  # from the function body, quantized
    assert conv.name.startswith("blocks.0.attn/Conv")  # named after its call: --exclude and the guard use names
    producers = {o: n.op_type for n in graph.node for o in n.output}
    assert producers[conv.input[0]] == "DequantizeLinear" and producers[conv.input[1]] == "DequantizeLinear"
    session = Session(out)
    record = session.manifest.extra["quantization"]
    assert session.manifest.extra["image"]["labels"] == list(LABELS)  # the manifest travels
    assert record["inlined_functions"] == ["CascadedGroupAttention"]
    assert record["accuracy"]["fp32_top1"] == 1.0 and record["accuracy"]["labelled"] == 12
    assert record["timed_at"] == {"batch": 1, "seq": None}
    logits = session.run({"pixel_values": np.zeros((2, 3, 32, 32), np.float32)})["logits"]
    assert logits.shape == (2, 6)


def test_quantize_image_model_guards_and_data(vision_model, tmp_path):
    out = tmp_path / "int8.onnx"
    with pytest.raises(QuantizeError, match="image models have no built-in calibration set; give --calib"):
        quantize_model(vision_model, out, QuantConfig())
    with pytest.raises(QuantizeError, match="guard kl<=0.1 does not fit an image classifier: its guard is "
                                            "top1>=V, sqnr>=V or cosine>=V"):
        quantize_model(vision_model, out, QuantConfig(guard=Guard.parse("kl<=0.1")),
                       calib=image_folder(tmp_path / "guard", 1))
    with pytest.raises(QuantizeError, match="guard top1>=0.9 does not fit this model: its guard is cosine>=V or sqnr>=V"):
        quantize_model(make_tiny_model(tmp_path / "tiny.onnx"), out, QuantConfig(guard=Guard.parse("top1>=0.9")))
    npz = tmp_path / "calib.npz"
    data = load_images(image_folder(tmp_path / "calib", 2), ImageSpec.from_manifest(Session(vision_model).manifest))
    np.savez(npz, pixel_values=data.pixel_values)  # unlabelled: no accuracy, the calibration set judged
    plain = make_image_model(tmp_path / "plain.onnx", function=False)
    result = quantize_model(plain, out, QuantConfig(mode="dynamic", guard=Guard.parse("cosine>=0.99")), calib=npz)
    assert result.inlined == [] and result.accuracy.labelled == 0 and result.accuracy.fp32_top1 is None
    assert result.accuracy.cosine_mean >= 0.99 and "the calibration images, no --heldout given" in result.heldout
    assert not (tmp_path / "int8.onnx.tmp").exists()


def test_cli_quantize_shows_accuracy_and_writes_json(vision_model, tmp_path):
    calib = image_folder(tmp_path / "calib", 3)
    out, report = tmp_path / "int8.onnx", tmp_path / "q.json"
    result = invoke("quantize", vision_model, "--int8", "-o", out, "--calib", calib, "--heldout", calib,
                    "--guard", "sqnr>=20", "--report", "0", "--json", report, "--isa", "avx2")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for words in ("top1 agree", "SQNR dB", "FP32 acc", "INT8 acc", "inlined (their Conv/MatMul quantized): "
                  "edgert::CascadedGroupAttention", "guard sqnr>=20 held: top-1 agreement ",
                  "top-1 accuracy FP32 1.0000", "latency p50 at batch 1:"):
        assert words in text, text
    assert all(len(line) <= 80 for line in text.splitlines()), text
    record = json.loads(report.read_text())
    assert record["path"] == str(out) and record["accuracy"]["labelled"] == 9
    assert {"top1_agreement", "sqnr_db", "fp32_top1", "int8_top1"} <= set(record["accuracy"])
    assert all("top1_agreement" in c for c in record["candidates"])
    assert_one_error(invoke("quantize", vision_model, "--int8", "-o", tmp_path / "q2.onnx"),
                     "image models have no built-in calibration set")
    (calib / "red" / "notes.txt").write_text("stray")
    assert_one_error(invoke("quantize", vision_model, "--int8", "-o", tmp_path / "q2.onnx", "--calib", calib),
                     "notes.txt is not an image")
    assert not (tmp_path / "q2.onnx").exists()


def test_quantize_custom_ops_without_onnxscript_is_a_clean_error(vision_model, tmp_path, monkeypatch):
    """Inlining edgert ops needs onnxscript (edgert[export]): without it, a DependencyError
    naming the ops, not an ImportError."""
    for name in ("onnxscript", "onnx_ir"):
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / "int8.onnx"
    with pytest.raises(DependencyError, match=r"edgert::CascadedGroupAttention needs onnxscript.*edgert\[export\]"):
        quantize_model(vision_model, out, QuantConfig(calib_size=4), calib=image_folder(tmp_path / "calib", 1))
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# run --image and bench

def test_run_image_prints_top5_and_writes_json(vision_model, tmp_path):
    rng = np.random.default_rng(0)
    red, blue = write_image(tmp_path / "red.png", 0, rng), write_image(tmp_path / "blue.jpg", 2, rng)
    report = tmp_path / "top.json"
    result = invoke("run", vision_model, "--image", red, "--image", blue, "--json", report)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    rows = [line.split("│")[1:-1] for line in lines if line.startswith("│")]
    assert len(rows) == 10  # five classes per image
    assert [c.strip() for c in rows[0]][:3] == ["1", "0", "red"] and [c.strip() for c in rows[5]][:3] == ["1", "2", "blue"]
    probabilities = [float(r[3]) for r in rows[:5]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    data = json.loads(report.read_text())
    assert [i["path"] for i in data["images"]] == [str(red), str(blue)]
    assert data["images"][0]["top"][0] == {"index": 0, "label": "red", "probability": pytest.approx(probabilities[0], abs=1e-4)}
    top2 = invoke("run", vision_model, "--image", red, "--top", "2")
    assert top2.exit_code == 0 and sum(line.startswith("│") for line in top2.stdout.splitlines()) == 2
    logits = tmp_path / "logits.npy"
    saved = invoke("run", vision_model, "--image", red, "--out", logits)
    assert saved.exit_code == 0 and np.load(logits).shape == (1, 6)


def test_run_image_errors(vision_model, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    red = write_image(tmp_path / "red.png", 0, np.random.default_rng(0))
    text_model = make_image_model(tmp_path / "text.onnx", task="sentence-embedding")
    for args, message in [
        ((vision_model, "--image", notes), "cannot read " + str(notes) + " as an image"),
        ((vision_model, "--image", tmp_path / "none.png"), "image not found: "),
        ((vision_model, "--image", tmp_path), "image is a folder, not a file: "),
        ((text_model, "--image", red), "text.onnx is not an image model (its manifest says task 'sentence-embedding')"),
        ((make_tiny_model(tmp_path / "tiny.onnx"), "--image", red), "tiny.onnx is not an image model (it has no edgert manifest)"),
        ((vision_model, "--image", red, "--text", "hello"), "give one of --text"),
        ((vision_model, "--image", red, "--full"), "--full does not apply to --image"),
        ((vision_model, "--image", red, "--top", "0"), "--top must be a whole number >= 1, got 0"),
        ((vision_model, "--text", "hello", "--json", tmp_path / "x.json"), "--json needs --image"),
        ((vision_model, "--text", "hello", "--top", "3"), "--top needs --image"),
        ((vision_model, "--image", red, "--json", red), "same file as input"),
    ]:
        assert_one_error(invoke("run", *args), message)
    assert not (tmp_path / "x.json").exists()


def test_an_extreme_aspect_ratio_is_preprocessed_in_bounded_memory(vision_model, tmp_path, monkeypatch):
    """A 100000 x 1 PNG (a few hundred bytes) passed Pillow's bomb guard, then its resized form
    (3.6 million x 36 pixels for this model, 500 MiB) was made whole; only the crop is resized now."""
    wide = tmp_path / "wide.png"
    PIL.new("RGB", (100_000, 1), (255, 0, 0)).save(wide)
    made = []
    resize = PIL.Image.resize

    def recorded(image, size, *args, **kwargs):
        made.append(size[0] * size[1])
        return resize(image, size, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "resize", recorded)
    spec = ImageSpec.from_manifest(Session(vision_model).manifest)
    pixels = preprocess(load_image(wide), spec)
    assert made and max(made) <= 32 * 32, made  # every image Pillow made: pixels
    np.testing.assert_allclose(pixels[0], 1, atol=1e-6)  # pure red: (1 - 0.5) / 0.5
    np.testing.assert_allclose(pixels[1:], -1, atol=1e-6)
    ran = invoke("run", vision_model, "--image", wide, "--top", "1")
    assert ran.exit_code == 0 and "red" in ran.stdout, ran.output


def test_an_image_larger_than_the_memory_available_is_refused_before_decoding(tmp_path, monkeypatch):
    image = write_image(tmp_path / "red.png", 0, np.random.default_rng(0))  # 48 x 40
    monkeypatch.setattr("edgert.memory.available_memory_bytes", lambda: 10_000)
    with pytest.raises(ImageError, match=r"decoding .*red.png \(48 x 40 pixels\) needs 13.1 KiB; 9.8 KiB of memory"):
        load_image(image)


def test_bench_an_image_model(vision_model, tmp_path):
    report = tmp_path / "bench.json"
    result = invoke("bench", vision_model, "--batch", "3", "--iters", "5", "--warmup", "1", "--threads", "1",
                    "--json", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["config"]["batch"] == 3 and data["models"][0]["latency_ms"]["p50"] > 0


def test_errors_are_edgert_errors():
    assert issubclass(ImageError, EdgertError)


def test_analyze_outliers_reads_an_image_folder(vision_model, tmp_path):
    calib = image_folder(tmp_path / "calib", 2)
    result = invoke("analyze", "outliers", vision_model, "--calib", calib, "--top", "3")
    assert result.exit_code == 0, result.output
    assert "SQNR" in result.stdout


def test_without_pillow_a_clear_dependency_error(tmp_path, monkeypatch):
    from edgert.errors import DependencyError

    image = write_image(tmp_path / "red.png", 0, np.random.default_rng(0))
    monkeypatch.setitem(__import__("sys").modules, "PIL", None)
    with pytest.raises(DependencyError, match="needs Pillow: pip install pillow"):
        load_image(image)
