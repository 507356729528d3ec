"""edgert's tiny LM: its tokenizer, its training data and recipe, and the committed weights
loading, exporting, generating and passing the passkey test like any Hugging Face Llama."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import invoke
from edgert.passkey import INSTRUCTION, QUESTION, passkey_prompt, random_key

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_tokenizer_covers_every_passkey_word():
    from edgert.models.tiny_lm import build_tokenizer

    tokenizer = build_tokenizer()
    prompt = passkey_prompt(lambda t: len(t.split()), 200, 0.5, np.random.default_rng(0), key="40213")
    encoding = tokenizer.encode(prompt.text + " 40213.")
    assert encoding.ids[0] == tokenizer.token_to_id("<s>")
    assert tokenizer.token_to_id("<unk>") not in encoding.ids
    assert encoding.tokens[-6:] == ["4", "0", "2", "1", "3", "."]  # one token per digit
    assert tokenizer.decode(tokenizer.encode(QUESTION).ids) == QUESTION.lower()


def test_keys_have_different_digits_and_no_leading_zero():
    rng = np.random.default_rng(0)
    for _ in range(200):
        key = random_key(rng)
        assert len(key) == 5 and key[0] != "0" and len(set(key)) == 5


def test_batches_weigh_the_answer_and_ignore_padding():
    from edgert.models.tiny_lm import PasskeyBatches, build_tokenizer

    tokenizer = build_tokenizer()
    batches = PasskeyBatches(tokenizer, np.random.default_rng(0), answer_weight=4.0)
    ids, weights, copies = batches.batch(3, 120)
    assert not copies.any()
    pad = tokenizer.token_to_id("<pad>")
    assert (weights[ids == pad] == 0).all() and (weights[:, 0] == 0).all()
    for row in range(3):
        answer = (weights[row] == 4.0).nonzero().flatten().tolist()
        assert len(answer) == 5 and answer == list(range(answer[0], answer[0] + 5))
        text = tokenizer.decode(ids[row, :answer[-1] + 1].tolist())
        assert text.startswith(INSTRUCTION.lower()[:20])
    copies = PasskeyBatches(tokenizer, np.random.default_rng(0), 4.0, copy_fraction=1.0)
    ids, _, copied = copies.batch(1, 64)
    row = ids[0, 1:].tolist()
    period = next(p for p in range(1, len(row)) if row[p] == row[0])
    assert row[period:] == row[:len(row) - period]  # a repeated segment of distinct words
    assert len(set(row[:period])) == period
    assert copied[0, 1:].tolist() == [i >= period for i in range(len(row))]


def test_train_writes_a_loadable_llama_directory(tmp_path):
    from edgert.models.tiny_lm import TinyLMConfig, train

    config = TinyLMConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1,
                          train_context=(40, 80), short_steps=1, ramp=1, batch_size=2, steps=3, warmup=1)
    record = train(tmp_path / "lm", config, log=lambda line: None)
    assert record["parameters"] > 0 and len(record["history"]) == 2
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    assert model.config.num_key_value_heads == 1 and model.config.model_type == "llama"
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "lm")
    assert tokenizer("the pass key is 12").input_ids[-2:] == [tokenizer.convert_tokens_to_ids(d) for d in "12"]
    assert json.loads((tmp_path / "lm" / "training.json").read_text())["config"]["steps"] == 3


# --- the committed weights --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm_onnx(tmp_path_factory):
    """The committed tiny LM exported with every head full."""
    path = tmp_path_factory.mktemp("tinylm") / "tiny-lm.onnx"
    result = invoke("export", "tiny-lm", "-o", path)
    assert result.exit_code == 0, result.output
    return path


def test_committed_weights_load_like_any_llama_directory():
    from edgert.models.sources import resolve_source

    source = resolve_source("tiny-lm")
    files = {p.name: p.stat().st_size for p in source.directory.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= set(files)
    assert files["model.safetensors"] < 12 * 2**20
    model = transformers.AutoModelForCausalLM.from_pretrained(source.directory)
    assert model.config.model_type == "llama"
    assert model.config.num_attention_heads == 8 and model.config.num_key_value_heads == 4


def test_committed_model_recalls_a_passkey_through_generate(tiny_lm_onnx):
    from edgert.models.tiny_lm import build_tokenizer

    tokenizer = build_tokenizer()
    count = lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)  # noqa: E731
    prompt = passkey_prompt(count, 150, 0.3, np.random.default_rng(7), key="71824")
    result = invoke("generate", tiny_lm_onnx, "--prompt", prompt.text, "--max-new-tokens", 6, "--threads", 1)
    assert result.exit_code == 0, result.output
    assert "7 1 8 2 4" in result.output


def test_eval_passkey_full_model_is_accurate_within_its_training_length(tiny_lm_onnx, tmp_path):
    out = tmp_path / "passkey.json"
    result = invoke("eval", "passkey", tiny_lm_onnx, "--context", "128,384", "--depths", "0,0.5,1",
                  "--trials", 4, "--threads", 1, "--json", out)
    assert result.exit_code == 0, result.output
    assert "passkey accuracy" in result.output
    record = json.loads(out.read_text())
    assert record["contexts"] == [128, 384] and len(record["accuracy"][0]) == 3
    assert all(t <= c for t, c in zip(record["prompt_tokens"], [128, 384]))
    assert record["mean_accuracy"] >= 0.9
    assert record["kv_bytes"][1] == 3 * record["kv_bytes"][0]  # all full: KV grows with the context


def test_razor_scores_separate_the_committed_model_heads(tmp_path):
    scores = tmp_path / "razor.json"
    result = invoke("analyze", "kv-heads", "tiny-lm", "--method", "razor", "--length", 60, "--retrieval-ratio", 0.25,
                  "--sink", 16, "--recent", 64, "-o", tmp_path / "plan.json", "--json", scores)
    assert result.exit_code == 0, result.output
    induction = np.array(json.loads(scores.read_text())["induction"])
    assert induction.shape == (4, 4)
    assert induction.max() > 0.5 and np.median(induction) < 0.2


@pytest.mark.parametrize("args, message", [
    (["--context", "5000"], "contexts must lie in [63, 4084] for this model (the prompt without filler takes 63"),
    (["--context", "40"], "contexts must lie in [63, 4084]"),
    (["--depths", "0,1.5"], "depths must lie in [0, 1]"),
    (["--context", "12a"], "--context must be comma-separated whole numbers such as 1,2,3; '12a' is not a whole"),
])
def test_eval_passkey_errors_are_one_line(tiny_lm_onnx, tmp_path, args, message):
    out = tmp_path / "r.json"
    result = invoke("eval", "passkey", tiny_lm_onnx, *args, "--trials", 1, "--json", out)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and not out.exists()
