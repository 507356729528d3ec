"""edgert export fuses the graph for ONNX Runtime CPU by default; --no-optimize keeps it portable."""

from collections import Counter

import numpy as np
import onnx
import pytest

import edgert
from edgert.exporters import export
from edgert.exporters.heads import Transform, parse_softmax
from edgert.plan import MANIFEST_KEY, TOKENIZER_KEY

from conftest import run_cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Residual Add + LayerNormalization stay unfused (exporters/optimize.py FUSE_SKIP_LAYER_NORM):
# ONNX Runtime's CPU SkipLayerNormalization kernel is slower than the two ops.
MINILM_FUSIONS = {"MultiHeadAttention": 6, "BiasGelu": 6}
ALL_FUSED_OPS = ("MultiHeadAttention", "SkipLayerNormalization", "BiasGelu")
ATOL = 1e-4  # export's default tolerance against torch


def _ops(path) -> Counter:
    return Counter((n.domain, n.op_type) for n in onnx.load(str(path)).graph.node)


@pytest.fixture
def tiny_bert(tmp_path):
    """A random-init 2-layer BERT directory with a word-piece tokenizer."""
    config = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37,
                                     max_position_embeddings=64)
    torch.manual_seed(0)
    directory = tmp_path / "bert"
    transformers.BertModel(config).eval().save_pretrained(directory)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "edge", "##s"]
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(directory)
    return directory


def test_default_minilm_export_is_fused_validated_and_recorded(minilm_st):
    ops = _ops(minilm_st)
    assert {op: ops[("com.microsoft", op)] for op in MINILM_FUSIONS} == MINILM_FUSIONS
    assert ops[("", "MatMul")] == 36  # Q, K, V, O and the FFN stay plain (quantizable) MatMuls
    assert ops[("", "Softmax")] == 0  # it lives inside MultiHeadAttention now
    assert ops[("com.microsoft", "SkipLayerNormalization")] == 0
    assert ops[("", "LayerNormalization")] == 13  # embeddings + 2 per layer, left as they are
    manifest = edgert.load(minilm_st).manifest
    assert manifest.extra["optimized_for"] == "onnxruntime-cpu"
    assert manifest.extra["fusions"] == MINILM_FUSIONS
    assert 0 < manifest.validation["max_abs_diff"]["sentence_embedding"] <= ATOL
    model = onnx.load(str(minilm_st))
    assert model.ir_version == 8 and model.producer_name == "edgert"
    assert {MANIFEST_KEY, TOKENIZER_KEY} <= {p.key for p in model.metadata_props}


def test_cli_fused_feature_extraction_validates_within_atol(minilm_fe):
    manifest = edgert.load(minilm_fe).manifest
    assert manifest.extra["fusions"] == MINILM_FUSIONS
    assert manifest.validation["max_abs_diff"]["last_hidden_state"] <= ATOL


@pytest.mark.slow
def test_no_optimize_is_portable_and_agrees_with_the_fused_graph(tiny_bert, tmp_path):
    fused = export(str(tiny_bert), tmp_path / "fused.onnx", task="sentence-embedding")
    plain = export(str(tiny_bert), tmp_path / "plain.onnx", task="sentence-embedding", optimize=False)
    assert fused.manifest.extra["fusions"] == {"MultiHeadAttention": 2, "BiasGelu": 2}
    assert _ops(fused.path)[("", "LayerNormalization")] == 5
    assert {domain for domain, _ in _ops(plain.path)} == {""}  # standard ONNX only
    assert plain.manifest.extra["optimized_for"] is None and "fusions" not in plain.manifest.extra
    assert plain.diffs["sentence_embedding"] <= ATOL and fused.diffs["sentence_embedding"] <= ATOL
    texts = ["hello edges", "world", "edge world hello hello"]
    want = edgert.load(plain.path).run_text(texts)["sentence_embedding"]
    got = edgert.load(fused.path).run_text(texts)["sentence_embedding"]
    assert np.abs(got - want).max() <= ATOL
    assert edgert.load(fused.path).tokenizer(["hello"])["input_ids"].tolist() == [[2, 5, 3]]


@pytest.mark.slow
def test_clipped_softmax_survives_fusion(tiny_bert, tmp_path):
    result = export(str(tiny_bert), tmp_path / "clip.onnx", task="feature-extraction",
                    transform=Transform(softmax=parse_softmax("clipped:-0.025,1")))
    model = onnx.load(str(result.path))
    ops = _ops(result.path)
    assert ops[("edgert", "ClippedSoftmax")] == 2  # one per layer, not inlined
    assert [(f.domain, f.name) for f in model.functions] == [("edgert", "ClippedSoftmax")]
    assert ops[("com.microsoft", "SkipLayerNormalization")] == 0 and ops[("com.microsoft", "BiasGelu")] == 2
    assert ops[("com.microsoft", "MultiHeadAttention")] == 0  # its softmax is the edgert op
    extra = result.manifest.extra
    assert extra["optimized_for"] == "onnxruntime-cpu" and extra["custom_ops"] == ["ClippedSoftmax"]
    assert "edgert::ClippedSoftmax" in extra["optimization_note"]
    assert result.diffs["last_hidden_state"] <= ATOL


@pytest.mark.slow
def test_gated_attention_fuses_through_sdpa_to_mha(tiny_bert, tmp_path):
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(3)
    save_file({f"edgert.gates.{i}.{kind}": torch.randn(*shape, generator=generator)
               for i in range(2) for kind, shape in (("weight", (4, 8)), ("bias", (4,)))},
              str(tiny_bert / "edgert_gates.safetensors"))
    result = export(str(tiny_bert), tmp_path / "gated.onnx", task="feature-extraction")
    assert all(layer.gated for layer in result.manifest.plan.layers)
    # the gate sits between attention and the output projection, so only the generic
    # SDPA -> MultiHeadAttention rewrite matches; no intermediate fusion op may be left
    assert result.manifest.extra["fusions"]["MultiHeadAttention"] == 2
    assert not any(d.startswith("ai.onnxruntime") for d, _ in _ops(result.path))
    assert result.diffs["last_hidden_state"] <= ATOL


@pytest.mark.slow
def test_fusion_that_fails_or_drops_a_custom_op_falls_back_to_the_unfused_graph(
        tiny_bert, tmp_path, monkeypatch):
    from edgert.quant import fuse

    real_fuse_model = fuse.fuse_model

    def drops_functions(model, **options):
        fused, counts = real_fuse_model(model, **options)
        del fused.functions[:]
        return fused, counts

    monkeypatch.setattr(fuse, "fuse_model", drops_functions)
    with pytest.warns(UserWarning, match="would have changed the edgert custom ops"):
        result = export(str(tiny_bert), tmp_path / "clip.onnx", task="feature-extraction",
                        transform=Transform(softmax=parse_softmax("clipped:-0.025,1")))
    assert result.manifest.extra["optimized_for"] is None
    assert {d for d, _ in _ops(result.path)} == {"", "edgert"}
    assert [f.name for f in onnx.load(str(result.path)).functions] == ["ClippedSoftmax"]

    def fails(model, **options):
        raise ValueError("no pattern for this graph\nsecond line")

    monkeypatch.setattr(fuse, "fuse_model", fails)
    with pytest.warns(UserWarning, match=r"fusion failed \(ValueError: no pattern for this graph\)"):
        result = export(str(tiny_bert), tmp_path / "m.onnx", task="feature-extraction")
    assert result.manifest.extra["optimization_note"].startswith("not optimized: fusion failed")
    assert result.diffs["last_hidden_state"] <= ATOL


@pytest.mark.slow
def test_cli_shows_steps_on_stderr_and_results_on_stdout(tiny_bert, tmp_path):
    result = run_cli("export", str(tiny_bert), "-o", str(tmp_path / "m.onnx"))
    assert result.returncode == 0, result.stderr
    steps = [line for line in result.stderr.splitlines() if line.startswith("export: ")]
    assert steps == ["export: loading model", "export: tracing with torch.onnx",
                     "export: fusing for ONNX Runtime CPU",
                     "export: writing graph, manifest and tokenizer", "export: validating against torch"]
    assert "export:" not in result.stdout
    assert "fused 2 MultiHeadAttention, 2 BiasGelu" in result.stdout
    assert all(len(line) <= 80 for line in result.stdout.splitlines() if not line.startswith("wrote "))
    plain = run_cli("export", str(tiny_bert), "-o", str(tmp_path / "p.onnx"), "--no-optimize")
    assert plain.returncode == 0, plain.stderr
    assert "export: fusing for ONNX Runtime CPU" not in plain.stderr
    assert "not optimized (--no-optimize)" in plain.stdout
    assert {d for d, _ in _ops(tmp_path / "p.onnx")} == {""}


@pytest.mark.slow
def test_failed_fused_validation_names_no_optimize_and_is_the_last_line(tiny_bert, tmp_path):
    result = run_cli("export", str(tiny_bert), "-o", str(tmp_path / "m.onnx"), "--atol", "1e-12", "--rtol", "0")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: export differs from torch beyond atol 1e-12") and "--no-optimize" in last
    assert "export: validating against torch" in result.stderr
    assert list(tmp_path.glob("*.onnx*")) == [] and not list(tmp_path.glob(".m.onnx*"))


def test_fuse_for_ort_cpu_copies_the_source_when_fusion_fails(tiny_model, tmp_path, monkeypatch):
    from edgert.quant import fuse

    def fails(model, **options):
        raise fuse.FusionError("partial fusion left SDPA in the graph")

    monkeypatch.setattr(fuse, "fuse_ir_model", fails)
    out = tmp_path / "fused.onnx"
    with pytest.warns(UserWarning, match="not fused.*FusionError: partial fusion left SDPA"):
        counts = fuse.fuse_for_ort_cpu(tiny_model, out)
    assert counts == dict.fromkeys(ALL_FUSED_OPS, 0)
    assert out.read_bytes() == tiny_model.read_bytes()


@pytest.mark.slow
def test_skip_layer_norm_fusion_is_optional_and_both_graphs_agree(tiny_bert, tmp_path):
    from edgert.quant.fuse import fuse_for_ort_cpu

    plain = export(str(tiny_bert), tmp_path / "plain.onnx", task="feature-extraction", optimize=False)
    with_sln, without_sln = tmp_path / "sln.onnx", tmp_path / "no_sln.onnx"
    assert fuse_for_ort_cpu(plain.path, with_sln) == {"MultiHeadAttention": 2,
                                                      "SkipLayerNormalization": 4, "BiasGelu": 2}
    assert fuse_for_ort_cpu(plain.path, without_sln, skip_layer_norm=False) == {
        "MultiHeadAttention": 2, "BiasGelu": 2}
    assert _ops(without_sln)[("com.microsoft", "SkipLayerNormalization")] == 0
    assert _ops(without_sln)[("", "LayerNormalization")] == 5
    texts = ["hello edges", "world world", "edge"]
    want = edgert.load(plain.path).run_text(texts)["last_hidden_state"]
    for path in (with_sln, without_sln):
        assert np.abs(edgert.load(path).run_text(texts)["last_hidden_state"] - want).max() <= ATOL
