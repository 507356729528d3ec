"""Choosing retrieval heads (edgert analyze kv-heads): razor, duo and pattern scoring, the
plans they write, and their errors; passkey prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgert.errors import OptionError, PlanError
from edgert.passkey import FILLER, answer_is_correct, key_sentence, passkey_prompt
from edgert.plan import HeadPlan

from conftest import assert_one_error, invoke, save_tiny_decoder

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("kvheads") / "llama"
    save_tiny_decoder(directory, tokenizer="words+bos")
    return directory


def _loaded(directory):
    from edgert.exporters.decoder import load
    from edgert.models.sources import resolve_source

    return load(resolve_source(str(directory)))




def test_attention_function_reproduces_the_model(decoder_dir):
    from edgert.exporters.kv_heads import attend, attention_function, visible

    model = _loaded(decoder_dir).model
    ids = torch.randint(3, 128, (2, 40))
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
        with attention_function(model, lambda m, q, k, v: attend(m, q, k, v, visible(40))[1].transpose(1, 2)):
            got = model(input_ids=ids, use_cache=False).logits
        assert model.config._attn_implementation == "eager"  # restored on exit
        with attention_function(model, lambda m, q, k, v: attend(m, q, k, v, visible(40, 2, 4))[1].transpose(1, 2)):
            windowed = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(windowed[:, 10:], expected[:, 10:], atol=1e-3)  # the window really cuts
    torch.testing.assert_close(windowed[:, :7], expected[:, :7], atol=1e-4, rtol=1e-4)  # p - p' <= 4 or p' < 2


def test_visible_matches_the_exported_streaming_rule():
    from edgert.exporters.kv_heads import visible

    allowed = visible(10, sink=2, recent=3).numpy()
    for p in range(10):
        for q in range(10):
            assert allowed[p, q] == (q <= p and (q < 2 or p - q <= 3))


def test_razor_scores_are_probabilities_pooled_per_kv_head(decoder_dir):
    from edgert.exporters.kv_heads import razor_ranking, razor_scores

    model = _loaded(decoder_dir).model
    scores = razor_scores(model, length=16, repeats=3, seed=1, bos_token_id=1)
    assert set(scores.tables) == {"echo", "induction"}
    for table in scores.tables.values():
        assert np.array(table).shape == (2, 2)
        assert all(0 <= v <= 1 for row in table for v in row)
    assert scores.scores == scores.tables["induction"]
    again = razor_scores(model, length=16, repeats=3, seed=1, bos_token_id=1)
    assert again.scores == scores.scores
    ranked = razor_ranking(scores, echo_heads=1)
    echo = np.array(scores.tables["echo"])
    best_echo = np.unravel_index(echo.argmax(), echo.shape)
    assert np.array(ranked.scores)[best_echo] == max(max(r) for r in ranked.scores)


def test_razor_finds_the_induction_pattern_it_is_given():
    """A head attending exactly to the token after the previous occurrence of the current
    token scores induction 1; one attending to that occurrence itself scores echo 1."""
    from transformers import AttentionInterface

    from edgert.exporters.kv_heads import razor_scores

    class Fake(torch.nn.Module):  # one layer, two heads (kv head 0 induction, kv head 1 echo)
        config = type("Config", (), {"vocab_size": 5000, "_attn_implementation": "eager"})()

        def set_attn_implementation(self, name):
            self.config._attn_implementation = name

        def forward(self, input_ids, use_cache=False):
            ids, T = input_ids[0].tolist(), input_ids.shape[1]
            induction, echo = torch.full((T, T), -1e4), torch.full((T, T), -1e4)
            for p in range(T):
                earlier = [j for j in range(p) if ids[j] == ids[p]]
                induction[p, earlier[-1] + 1 if earlier else p] = 0
                echo[p, earlier[-1] if earlier else p] = 0
            # with identity keys, q @ k^T is q: each query row is its own score row
            query = torch.stack([induction, echo]).unsqueeze(0)
            keys = torch.eye(T).view(1, 1, T, T).expand(1, 2, T, T)
            module = type("Attention", (), {"layer_idx": 0, "scaling": 1.0})()
            AttentionInterface()[self.config._attn_implementation](module, query, keys, keys, None)

    scores = razor_scores(Fake(), length=12, repeats=3, seed=0)  # 12 of 5000 ids: no repeats
    assert scores.tables["induction"][0][0] == pytest.approx(1.0, abs=1e-3)
    assert scores.tables["echo"][0][1] == pytest.approx(1.0, abs=1e-3)
    assert scores.tables["echo"][0][0] < 1e-3 and scores.tables["induction"][0][1] < 1e-3


def test_duo_gates_stay_in_range_and_follow_the_penalty(decoder_dir):
    from edgert.exporters.kv_heads import duo_gates, passkey_batches
    from edgert.text import generation_tokenizer

    loaded = _loaded(decoder_dir)
    tokenizer = generation_tokenizer(loaded.tokenizer_json)
    with pytest.raises(OptionError, match="--context 64 is shorter than duo's passkey prompt and answer"):
        passkey_batches(tokenizer, context=64, batch_size=2, seed=0)
    batches = passkey_batches(tokenizer, context=96, batch_size=2, seed=0)
    ids, supervised = batches()
    assert ids.shape[0] == 2 and supervised.any(1).all()
    free = duo_gates(loaded.model, batches, sink=2, recent=4, steps=4, l1=0.0, learning_rate=0.05)
    assert free.history[0]["distill"] == 0.0  # gates start at 1: the mix is the full model
    pushed = duo_gates(loaded.model, batches, sink=2, recent=4, steps=4, l1=10.0, learning_rate=0.05)
    gates = np.array(pushed.scores)
    assert gates.shape == (2, 2) and ((gates >= 0) & (gates <= 1)).all()
    assert gates.mean() < np.array(free.scores).mean()


def test_choose_heads_ratio_threshold_and_shape():
    from edgert.exporters.kv_heads import HeadScores, choose_heads

    identity = HeadPlan.full(2, 4, 2)
    scores = HeadScores("pattern", [[0.1, 0.9], [0.5, 0.2]])
    plan = choose_heads(identity, scores, ratio=0.5, threshold=None, sink=2, recent=8)
    assert [[p.kind for p in layer.cache] for layer in plan.layers] == [["window", "full"], ["full", "window"]]
    assert choose_heads(identity, scores, ratio=0, threshold=None, sink=2, recent=8).retrieval_heads == 0
    assert choose_heads(identity, scores, ratio=1, threshold=None, sink=2, recent=8).retrieval_heads == 4
    assert choose_heads(identity, scores, ratio=None, threshold=0.4, sink=2, recent=8).retrieval_heads == 2
    with pytest.raises(PlanError, match="shape"):
        choose_heads(identity, HeadScores("razor", [[0.1, 0.2, 0.3]]), ratio=0.5, threshold=None, sink=2, recent=8)


def test_pattern_files_round_trip_and_bad_shapes(tmp_path):
    from edgert.exporters.kv_heads import read_pattern, write_pattern

    path = tmp_path / "full_attention_heads.tsv"
    write_pattern(path, [[0.25, 1.0], [0.0, 0.5]])
    assert read_pattern(path, 2, 2).scores == [[0.25, 1.0], [0.0, 0.5]]
    with pytest.raises(PlanError, match="2 rows .* 3 columns"):
        read_pattern(path, 2, 3)
    with pytest.raises(PlanError, match="3 rows"):
        read_pattern(path, 3, 2)
    path.write_text("0.1\tx\n")
    with pytest.raises(PlanError, match="not a tab-separated table"):
        read_pattern(path, 1, 2)


def test_cli_writes_a_plan_scores_and_pattern_export_accepts(decoder_dir, tmp_path):
    plan_path, scores_path, tsv = tmp_path / "plan.json", tmp_path / "scores.json", tmp_path / "p.tsv"
    result = invoke("analyze", "kv-heads", decoder_dir, "--method", "razor", "--retrieval-ratio", 0.5,
                  "--length", 16, "--repeats", 3, "--sink", 2, "--recent", 8, "-o", plan_path,
                  "--json", scores_path, "--save-pattern", tsv)
    assert result.exit_code == 0, result.output
    assert "kv heads by razor score" in result.output and "2 of 4 kv heads keep a full cache" in result.output
    plan = HeadPlan.load(plan_path)
    assert plan.retrieval_heads == 2
    assert {p.sink for layer in plan.layers for p in layer.cache if p.kind == "window"} == {2}
    raw = json.loads(scores_path.read_text())
    assert raw["method"] == "razor" and np.array(raw["induction"]).shape == (2, 2)
    again = tmp_path / "again.json"
    result = invoke("analyze", "kv-heads", decoder_dir, "--method", "pattern", "--patterns", tsv,
                  "--retrieval-ratio", 0.5, "--sink", 2, "--recent", 8, "-o", again)
    assert result.exit_code == 0, result.output
    assert HeadPlan.load(again).to_dict() == plan.to_dict()


@pytest.mark.parametrize("args, message", [
    (["--method", "razor", "--retrieval-ratio", "1.5"], "--retrieval-ratio must lie in [0, 1], got 1.5"),
    (["--method", "razor", "--retrieval-ratio", "-0.1"], "--retrieval-ratio must lie in [0, 1]"),
    (["--method", "razor", "--sink", "0", "--recent", "0"], "--recent must be a whole number >= 1, got 0"),
    (["--method", "razor", "--retrieval-ratio", "0.5", "--threshold", "0.1"], "not both"),
    (["--method", "pattern"], "needs --patterns"),
    (["--method", "razor", "--repeats", "1"], "--repeats must be a whole number >= 2, got 1"),
    (["--method", "razor", "--length", "300"], "exceed the model's limit (512)"),
    (["--method", "duo", "--context", "100000"], "longer than the model's limit"),
    # issue 17: every number checked, every size against the model and the machine
    (["--method", "razor", "--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
    (["--method", "duo", "--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
    (["--method", "razor", "--echo-heads", "5"], "--echo-heads must lie in 0..4, got 5"),
    (["--method", "razor", "--threshold", "nan"], "--threshold must be a finite number, got nan"),
    (["--method", "duo", "--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--method", "duo", "--lr", "-1"], "--lr must be a finite number > 0, got -1"),
    (["--method", "duo", "--steps", "1", "--l1", "nan"], "--l1 must be a finite number >= 0, got nan"),
    (["--method", "duo", "--steps", "1", "--l1", "inf"], "--l1 must be a finite number >= 0, got inf"),
    (["--method", "duo", "--batch-size", "1000000000000"], "--batch-size must lie in 1..1024, got 1000000000000"),
    (["--method", "duo", "--context", "64", "--steps", "1"], "--context 64 is shorter than duo's passkey prompt"),
    (["--method", "razor", "--sink", "1000000000000"],
     "--sink/--recent: a window of sink 1000000000000 + recent 256 tokens is longer than the model's max_length (512)"),
    (["--method", "razor", "--sink", "300", "--recent", "256"], "longer than the model's max_length (512)"),
    (["--retrieval-ratio", "0.5"], "Missing option '--method'. Choose from: pattern, razor, duo"),
])
def test_cli_errors_are_one_line_and_leave_no_plan(decoder_dir, tmp_path, args, message):
    plan_path = tmp_path / "plan.json"
    assert_one_error(invoke("analyze", "kv-heads", decoder_dir, *args, "-o", plan_path), message)
    assert not plan_path.exists()


@pytest.mark.parametrize("available, args, message", [
    (2**30, ["--method", "duo", "--context", "512", "--batch-size", "128", "--steps", "1"],
     "a duo training step needs 2.0 GiB; 1.0 GiB of memory is available (use a shorter --context"),
    (2**20, ["--method", "razor", "--length", "255", "--repeats", "2"],
     "a razor scoring pass needs 8.0 MiB; 1.0 MiB of memory is available"),
])
def test_cli_refuses_attention_matrices_larger_than_memory(decoder_dir, tmp_path, monkeypatch, available, args,
                                                           message):
    """Sizes are checked against the machine before the model is loaded: duo holds 2 x 2 layers of
    128 x 4 heads x 512^2 float32 probabilities (2 GiB), razor one layer's 4 heads x 511^2 and
    the masks (8 MiB)."""
    import edgert.exporters.kv_heads as kv

    monkeypatch.setattr("edgert.memory.available_memory_bytes", lambda: available)
    monkeypatch.setattr(kv, "score_heads", lambda *a, **k: pytest.fail("the model was used"))
    assert_one_error(invoke("analyze", "kv-heads", decoder_dir, *args, "-o", tmp_path / "plan.json"), message)


def test_cli_refuses_a_pattern_of_the_wrong_shape(decoder_dir, tmp_path):
    tsv = tmp_path / "full_attention_heads.tsv"
    tsv.write_text("1\t0\t1\n0\t1\t0\n")  # 3 columns: the model has 2 kv heads
    assert_one_error(invoke("analyze", "kv-heads", decoder_dir, "--method", "pattern", "--patterns", tsv,
                          "-o", tmp_path / "plan.json"), "2 rows (layers) x 2 columns (kv heads)")
    assert not (tmp_path / "plan.json").exists()


def test_passkey_prompt_fits_the_context_and_places_the_key():
    words = lambda text: len(text.split())  # noqa: E731
    rng = np.random.default_rng(0)
    for depth in (0.0, 0.5, 1.0):
        prompt = passkey_prompt(words, 300, depth, rng, key="12345")
        assert prompt.tokens <= 300 and prompt.tokens > 300 - max(map(words, FILLER)) - 1
        before, after = prompt.text.split(key_sentence("12345"))
        filler_before = sum(before.count(s) for s in FILLER)
        filler_after = sum(after.count(s) for s in FILLER)
        assert filler_before == pytest.approx(depth * (filler_before + filler_after), abs=1)
    assert answer_is_correct(" 1 2 3 4 5 . remember", "12345")
    assert not answer_is_correct("1 2 3 4", "12345")


@pytest.mark.parametrize("ratio, kept", [(0, 0), (1, 4)])
def test_cli_ratio_zero_and_one_are_legal(decoder_dir, tmp_path, ratio, kept):
    plan_path = tmp_path / "plan.json"
    result = invoke("analyze", "kv-heads", decoder_dir, "--method", "razor", "--length", 8, "--repeats", 2,
                  "--retrieval-ratio", ratio, "--sink", 2, "--recent", 4, "-o", plan_path)
    assert result.exit_code == 0, result.output
    assert f"{kept} of 4 kv heads keep a full cache" in result.output
    assert HeadPlan.load(plan_path).retrieval_heads == kept


def test_cli_refuses_an_encoder(tmp_path):
    assert_one_error(invoke("analyze", "kv-heads", "minilm", "--method", "razor", "-o", tmp_path / "plan.json"),
                     "not a supported decoder")
    assert not (tmp_path / "plan.json").exists()


def test_a_tokenizer_that_drops_the_filler_is_an_error_not_a_hang():
    from edgert.errors import InputError

    with pytest.raises(InputError, match="no tokens"):
        passkey_prompt(lambda text: 0, 100, 0.5, np.random.default_rng(0))


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_razor_and_duo_run_other_families(tmp_path, family):
    from edgert.exporters.kv_heads import attend, attention_function, duo_gates, razor_scores, visible

    model = save_tiny_decoder(tmp_path / family, family)
    ids = torch.randint(3, 128, (1, 24))
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
        with attention_function(model, lambda m, q, k, v: attend(m, q, k, v, visible(24))[1].transpose(1, 2)):
            got = model(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert np.array(razor_scores(model, length=8, repeats=2).scores).shape == (2, 2)
    supervised = torch.zeros(2, 24, dtype=torch.bool)
    supervised[:, -4:] = True
    gates = duo_gates(model, lambda: (torch.randint(3, 128, (2, 24)), supervised), sink=2, recent=4, steps=2)
    assert np.array(gates.scores).shape == (2, 2)


def test_weights_that_do_not_fit_the_config_are_named_not_left_to_a_hidden_report(decoder_dir, tmp_path):
    """transformers raised "... look at the above report!" about a load report edgert keeps quiet."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(decoder_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "intermediate_size": 96}))
    result = invoke("analyze", "kv-heads", bad, "--method", "razor", "--length", 8, "--repeats", 2,
                  "-o", tmp_path / "plan.json")
    line = assert_one_error(result, "do not fit its config.json")
    assert "in the checkpoint, [" in line and "in the model (and 5 more of another shape)" in line, line
    assert "report" not in line


def test_analyze_kv_heads_speaks_for_itself_not_for_export(tmp_path, recwarn):
    save_tiny_decoder(tmp_path / "plain")  # no tokenizer
    result = invoke("analyze", "kv-heads", tmp_path / "plain", "--method", "razor", "--length", 8, "--repeats", 2,
                  "-o", tmp_path / "plan.json")
    assert result.exit_code == 0, result.output
    shown = [str(w.message) for w in recwarn]
    assert any("has no tokenizer" in m for m in shown) and not any("export" in m for m in shown), shown


def test_a_failed_weight_conversion_is_not_left_to_a_hidden_report(tmp_path):
    from edgert.errors import SourceError
    from edgert.exporters.hf_loading import load_pretrained
    from edgert.models.sources import ModelSource

    class Converting:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise RuntimeError("We encountered some issues during automatic conversion of the weights. For details "
                               "look at the `CONVERSION` entries of the above report!")

    with pytest.raises(SourceError) as caught:
        (tmp_path / "model.safetensors").write_bytes(b"")  # a weight file to convert
        load_pretrained(Converting, ModelSource("m", "decoder", tmp_path, "llama"))
    assert "could not convert the checkpoint's weights" in str(caught.value) and "report" not in str(caught.value)
