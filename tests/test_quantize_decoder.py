"""edgert quantize on decoder (text-generation) graphs: dynamic and static INT8 of tiny random
Llama exports, next-token top-1 agreement and KL against FP32, the guard and its per-module
float fallback, per-token decode timing, and edgert.Generator running the INT8 graph.

Accuracy bounds hold for every CPU class: the tiny model measured top-1 0.90 / KL 0.015 with
VNNI U8S8 (dynamic); the asserted bounds (top-1 >= 0.5, KL <= 0.5) leave room for the 7-bit
weights and U8U8 kernels an AVX2-only CPU gets.
"""

import json
from dataclasses import asdict

import numpy as np
import onnx
import pytest

from edgert import Generator, cpu
from edgert.errors import CalibrationError, QuantizeError
from edgert.quant import decoder_eval
from edgert.quant.calib import BUNDLED_TEXT
from edgert.quant.guard import Guard
from edgert.quant.kernels import U8S8, U8S8_REDUCED, U8U8
from edgert.quant.outliers import producer_scope
from edgert.quant.quantize import QuantConfig, quantize_model
from edgert.session import Session

from conftest import make_tiny_model, run_cli, save_tiny_decoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

INTEGER_MATMULS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
PROJECTIONS_PER_LAYER = 7  # q, k, v, o, gate, up, down
PROJECTIONS = 2 * PROJECTIONS_PER_LAYER + 1  # two layers and the lm_head
ANY_GUARD = Guard("top1", 0.0)  # met by every model: measures without a float fallback


def save_tiny_llama(directory, *, tokenizer: bool) -> None:
    save_tiny_decoder(directory, tokenizer="words" if tokenizer else None)


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    """{"full": the tiny Llama with a word-level tokenizer, every kv head keeping every token;
    "headwise": the same weights, 1 retrieval kv head in all and the 3 others sink 2 +
    recent 5}."""
    from edgert.exporters import export
    from edgert.exporters.heads import Transform

    root = tmp_path_factory.mktemp("quant_decoders")
    save_tiny_llama(root / "llama", tokenizer=True)
    export(str(root / "llama"), root / "full.onnx")
    export(str(root / "llama"), root / "headwise.onnx", transform=Transform(retrieval=1, sink=2, recent=5))
    return {"full": root / "full.onnx", "headwise": root / "headwise.onnx"}


def manifest_of(path) -> dict:
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["edgert"])


def record_of(path) -> tuple[dict, dict]:
    manifest = manifest_of(path)
    return manifest, manifest["extra"]["quantization"]


def op_counts(path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def integer_matmuls(path) -> int:
    return sum(n for op, n in op_counts(path).items() if op in INTEGER_MATMULS)


def float_weight_matmuls(path) -> int:
    """MatMuls that multiply by a weight (an initializer) in float."""
    graph = onnx.load(str(path)).graph
    weights = {i.name for i in graph.initializer}
    return sum(n.op_type == "MatMul" and n.input[1] in weights for n in graph.node)


def assert_plausible(accuracy: dict) -> None:
    """Bounds every CPU class meets on the tiny model (see the module docstring)."""
    assert accuracy["positions"] == decoder_eval.HELDOUT_PROMPTS * (decoder_eval.CONTINUATION + 1)
    assert 0.5 <= accuracy["top1"] <= 1.0
    assert 0.0 <= accuracy["kl_mean"] <= accuracy["kl_max"] and accuracy["kl_mean"] <= 0.5


def test_dynamic_int8_decoder_runs_in_generator(decoders, tmp_path):
    out = tmp_path / "full.int8.onnx"
    result = quantize_model(decoders["full"], out, QuantConfig(mode="dynamic", guard=ANY_GUARD))
    assert result.decoder and result.float_nodes == [] and result.fused == {}
    # every projection is integer; attention over the KV cache stays float
    assert integer_matmuls(out) == PROJECTIONS and float_weight_matmuls(out) == 0
    manifest, record = record_of(out)
    assert manifest["task"] == "text-generation"
    assert manifest["decoder"] == manifest_of(decoders["full"])["decoder"]
    assert_plausible(record["accuracy"])
    assert record["accuracy"]["top1"] == result.accuracy.top1
    assert record["timed_at"] == {"context": 128, "new_tokens": 16, "per": "token"}
    assert record["speedup"] > 0 and record["fp32_p50_ms"] > 0 and record["int8_p50_ms"] > 0
    assert record["default_guard"] is False and record["config"]["guard"] == {"metric": "top1", "threshold": 0.0}
    # the word-level tokenizer knows none of the bundled English: random prompts are used
    assert result.heldout.startswith("8 prompts of 32 random token ids in [3, 128) (seed 0)")

    fp32, int8 = Generator(decoders["full"]), Generator(out)
    prompt = [5, 9, 17, 33, 65]
    tokens = int8.generate(prompt, 8, stop=())
    assert len(tokens) == 8 and all(0 <= t < 128 for t in tokens)
    # Generator's own teacher-forced logits agree with the recorded top-1 rate in kind:
    # INT8 and FP32 pick the same next token after the prompt on most positions
    continuation = fp32.generate(prompt, 16, stop=())
    want = fp32.next_token_logits(prompt, continuation).argmax(-1)
    got = int8.next_token_logits(prompt, continuation).argmax(-1)
    assert (want == got).mean() >= 0.5


def test_cli_quantizes_a_decoder_with_the_default_guard(decoders, tmp_path):
    out = tmp_path / "q.onnx"
    result = run_cli("quantize", str(decoders["full"]), "--int8", "--mode", "dynamic", "-o", str(out),
                     "--report", "3", "--threads", "2")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # rich folds long lines at 80 columns
    assert "guard top1>=0.9 (the default for decoders) held: top-1 agreement " in text
    assert "top-1 agreement" in text and "KL mean" in text and "activation outliers" in text
    assert "decode latency p50 per token at context 128 (16 new tokens): FP32 " in text
    _, record = record_of(out)
    assert record["default_guard"] is True and record["accuracy"]["top1"] >= 0.9
    assert Generator(out).generate([3, 4, 5], 4, stop=()) is not None


def test_unmeetable_guard_fails_cleanly(decoders, tmp_path):
    out = tmp_path / "q.onnx"
    # KL 1e-9 needs every node in float, which is no INT8 model: refused after the fallback
    result = run_cli("quantize", str(decoders["full"]), "--int8", "--mode", "dynamic", "-o", str(out),
                     "--guard", "kl<=1e-9", "--report", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: guard kl<=1e-09 cannot be met with INT8 ") and last.endswith("nothing written")
    assert "tried 0 float nodes → kl " in last
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_guard_keeps_the_most_damaging_modules_in_float(decoders, tmp_path):
    model = decoders["full"]
    plain = quantize_model(model, tmp_path / "plain.onnx", QuantConfig(mode="dynamic", guard=ANY_GUARD))
    best = min(c.accuracy.kl_mean for c in plain.candidates)  # of this CPU's kernel candidates
    out = tmp_path / "guarded.onnx"
    result = quantize_model(model, out, QuantConfig(mode="dynamic", guard=Guard("kl", best / 2)))
    assert result.accuracy.kl_mean <= best / 2 and len(result.attempts) >= 2
    # no candidate meets the guard: the closest one is chosen, then modules move to float
    assert result.attempts[0].accuracy.kl_mean == pytest.approx(best)
    # whole modules move to float: a decoder layer's 7 projections, or the lm_head
    scopes = {n.name: producer_scope(n) for n in onnx.load(str(model)).graph.node}
    modules = {scopes[n].split(".mlp")[0].split(".self_attn")[0] for n in result.float_nodes}
    assert modules <= {"model.model.layers.0", "model.model.layers.1", "model.lm_head"}
    assert 0 < len(result.float_nodes) < PROJECTIONS
    assert integer_matmuls(out) == PROJECTIONS - len(result.float_nodes) == PROJECTIONS - float_weight_matmuls(out)
    _, record = record_of(out)
    assert record["float_nodes"] == result.float_nodes
    assert len(Generator(out).generate([7, 8, 9], 5, stop=())) == 5


def test_exclude_lm_head_and_first_layer_by_module_path(decoders, tmp_path):
    out = tmp_path / "q.onnx"
    config = QuantConfig(mode="dynamic", guard=ANY_GUARD, exclude=("lm_head", "layers.0"))
    result = quantize_model(decoders["full"], out, config)
    scopes = {n.name: producer_scope(n) for n in onnx.load(str(decoders["full"])).graph.node}
    assert len(result.float_nodes) == 1 + PROJECTIONS_PER_LAYER
    assert all(scopes[n] == "model.lm_head" or scopes[n].startswith("model.model.layers.0.")
               for n in result.float_nodes)
    assert integer_matmuls(out) == PROJECTIONS_PER_LAYER and float_weight_matmuls(out) == 1 + PROJECTIONS_PER_LAYER
    with pytest.raises(QuantizeError, match="matches no node name or op type in the model, nor a torch module"):
        quantize_model(decoders["full"], out, QuantConfig(mode="dynamic", exclude=("layers.7",)))


def test_headwise_export_quantizes_and_generates(decoders, tmp_path):
    out = tmp_path / "headwise.int8.onnx"
    result = quantize_model(decoders["headwise"], out, QuantConfig(mode="dynamic", guard=ANY_GUARD))
    assert integer_matmuls(out) == PROJECTIONS
    manifest, record = record_of(out)
    assert manifest["decoder"] == manifest_of(decoders["headwise"])["decoder"]
    cache = manifest["decoder"]["cache"]
    assert sum(cache["retrieval"]) == 1 and sum(cache["streaming"]) == 3
    assert (cache["sink"], cache["recent"]) == (2, 5)
    assert_plausible(record["accuracy"])
    generator = Generator(out)
    assert generator.session.input_names == Session(decoders["headwise"]).input_names
    assert len(generator.generate([4, 5, 6, 7, 8, 9, 10, 11, 12], 12, stop=())) == 12  # past the window
    assert result.speed.context == 128


def test_static_int8_decoder(decoders, tmp_path):
    out = tmp_path / "static.onnx"
    result = quantize_model(decoders["full"], out, QuantConfig(mode="static", calib_size=16, guard=ANY_GUARD))
    ops = op_counts(out)
    assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    assert_plausible(record_of(out)[1]["accuracy"])
    assert len(Generator(out).generate([3, 4, 5], 4, stop=())) == 4
    assert result.config.mode == "static"
    with pytest.raises(CalibrationError, match="minmax only"):
        quantize_model(decoders["full"], out, QuantConfig(mode="static", method="entropy"))


def test_no_vnni_cpu_class_measures_both_unsaturated_kernels(decoders, tmp_path, monkeypatch):
    monkeypatch.setenv(cpu.ISA_ENV, "avx512_vnni")  # the config field beats the environment
    out = tmp_path / "q.onnx"
    result = quantize_model(decoders["full"], out, QuantConfig(mode="dynamic", isa="avx2", guard=ANY_GUARD))
    assert [c.kernel for c in result.candidates] == [U8S8_REDUCED, U8U8]
    assert all(c.speedup > 0 for c in result.candidates)
    assert result.choice == "fastest meeting guard top1>=0"
    for candidate in result.candidates:
        assert_plausible(asdict(candidate.accuracy))
    _, record = record_of(out)
    assert record["cpu"]["class"] == "no-vnni" and record["kernel"]["label"] == result.kernel.label
    assert [c["kernel"] for c in record["candidates"]] == ["U8S8 reduce-range", "U8U8"]
    assert {"top1", "kl_mean", "kl_max", "speedup"} <= set(record["candidates"][0])


def test_vnni_class_gets_u8s8(decoders, tmp_path, monkeypatch):
    """Accuracy is not asserted: on a CPU without VNNI this kernel saturates."""
    monkeypatch.setenv(cpu.ISA_ENV, "avx2,avx512f,avx512_vnni")
    result = quantize_model(decoders["full"], tmp_path / "q.onnx", QuantConfig(mode="dynamic", guard=ANY_GUARD))
    assert result.kernel == U8S8 and [c.kernel for c in result.candidates] == [U8S8]
    assert result.candidates[0].speedup == result.speed.speedup


def test_guards_fit_the_kind_of_model(decoders, tmp_path):
    with pytest.raises(QuantizeError, match="guard cosine>=0.99 does not fit a decoder: its guard is top1>=V or kl<=V"):
        quantize_model(decoders["full"], tmp_path / "q.onnx", QuantConfig(mode="dynamic", guard=Guard.parse("cosine>=0.99")))
    encoder = make_tiny_model(tmp_path / "tiny.onnx")
    with pytest.raises(QuantizeError, match="guard top1>=0.9 does not fit this model: its guard is cosine>=V or sqnr>=V"):
        quantize_model(encoder, tmp_path / "q.onnx", QuantConfig(guard=Guard.parse("top1>=0.9")), calib=tmp_path / "x.npz")
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("text, message", [
    ("kl>=0.1", "kl is bounded with <=: kl<=VALUE"), ("top1<=0.5", "top1 is bounded with >=: top1>=VALUE"),
    ("kl<=0", "a kl guard must be above 0 and finite"), ("kl<=1e400", "a kl guard must be above 0 and finite"),
    ("top1>=1.5", "a top1 guard must be between 0 and 1"), ("top1>=-1", "a top1 guard must be between 0 and 1"),
])
def test_decoder_guard_syntax(text, message):
    with pytest.raises(QuantizeError, match=message):
        Guard.parse(text)


def test_decoder_guards_parse_and_print():
    assert str(Guard.parse(" kl <= 0.05 ")) == "kl<=0.05" and str(Guard.parse("top1>=0.95")) == "top1>=0.95"
    accurate = decoder_eval.DecoderAccuracy(top1=0.97, kl_mean=0.01, kl_max=0.1, positions=136)
    assert Guard.parse("kl<=0.05").holds(accurate) and not Guard.parse("kl<=0.005").holds(accurate)
    assert Guard.parse("top1>=0.95").holds(accurate) and not Guard.parse("top1>=0.98").holds(accurate)


def test_prompts_from_text_npz_bundled_or_random(decoders, tmp_path):
    session = Session(decoders["full"])
    text = tmp_path / "held.txt"
    text.write_text("w5 w6 w7 w8\n\nw100 w3\n")
    prompts, source = decoder_eval.decoder_prompts(session, text, count=8, seed=0, bundled=BUNDLED_TEXT[1],
                                                   role="held-out data")
    assert prompts == [[5, 6, 7, 8], [100, 3]] and source == str(text)
    npz = tmp_path / "held.npz"
    np.savez(npz, input_ids=np.array([[0, 0, 9, 10], [11, 12, 13, 14]]),
             attention_mask=np.array([[0, 0, 1, 1], [1, 1, 1, 1]]))
    prompts, _ = decoder_eval.decoder_prompts(session, npz, count=8, seed=0, bundled=BUNDLED_TEXT[1],
                                              role="held-out data")
    assert prompts == [[9, 10], [11, 12, 13, 14]]
    # the bundled English is all <unk> to this tokenizer: random ids instead, reproducibly
    first, source = decoder_eval.decoder_prompts(session, None, count=3, seed=0, bundled=BUNDLED_TEXT[1],
                                                 role="held-out data")
    again, _ = decoder_eval.decoder_prompts(session, None, count=3, seed=0, bundled=BUNDLED_TEXT[1],
                                            role="held-out data")
    assert first == again and len(first) == 3 and all(len(p) == 32 and min(p) >= 3 for p in first)
    assert "random token ids" in source
    bad = tmp_path / "bad.npz"
    np.savez(bad, input_ids=np.array([[5, 500]]))
    with pytest.raises(CalibrationError, match="token id 500 is outside the vocabulary"):
        decoder_eval.decoder_prompts(session, bad, count=8, seed=0, bundled=BUNDLED_TEXT[1], role="held-out data")
    with pytest.raises(CalibrationError, match="needs an input_ids array"):
        np.savez(bad, tokens=np.array([[5]]))
        decoder_eval.decoder_prompts(session, bad, count=8, seed=0, bundled=BUNDLED_TEXT[1], role="held-out data")


def test_calibration_feeds_cover_prefill_and_decode(decoders):
    session = Session(decoders["headwise"])
    feeds = decoder_eval.calibration_feeds(session, [[5, 6, 7], [8, 9]], limit=12, steps=3)
    assert len(feeds) == 8  # per prompt: one prefill feed, then 3 one-token feeds
    assert [f["input_ids"].shape[1] for f in feeds] == [3, 1, 1, 1, 2, 1, 1, 1]
    assert [int(f["position_ids"][0, -1]) for f in feeds] == [2, 3, 4, 5, 1, 2, 3, 4]
    for f in feeds:
        session.check_inputs(f)
        session.run_unchecked(f)
    assert len(decoder_eval.calibration_feeds(session, [[5, 6, 7], [8, 9]], limit=5, steps=3)) == 5
