"""`edgert generate`, `edgert bench --decode` and edgert.profiler.profile_decode on tiny random
Llama decoders (exported once per module), and every bad input of issue 9 ending in one
`Error:` line with exit code 2."""

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgert import CacheLayout, EdgertError, Generator, InputError
from edgert.cli import cli
from edgert.memory import available_memory_bytes, format_bytes
from edgert.profiler import DecodeConfig, DecodeStats, bench_decode, profile_decode, total_decode_runs

from conftest import assert_one_error, invoke, make_embedding_model, run_cli, save_tiny_decoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPT = [5, 6, 7]
SUMMARY = re.compile(r"prompt (\d+) tokens, (\d+) new(?: \(stopped at id \d+\))?; first token [\d.]+ ms"
                     r"(?:, then [\d.]+ tokens/s)?; KV cache (.+)")


def save_tiny_llama(directory, *, tokenizer: bool) -> None:
    save_tiny_decoder(directory, tokenizer="words+bos" if tokenizer else None)


@pytest.fixture(scope="module")
def decoders(tmp_path_factory):
    """{"dir": the tiny Llama without tokenizer, "full": its export with a tokenizer (every kv
    head keeps every token), "headwise": 1 retrieval kv head, the 3 others sink 2 + recent 5,
    no tokenizer, "encoder": an embedding graph}."""
    from edgert.exporters import export
    from edgert.exporters.heads import Transform

    root = tmp_path_factory.mktemp("decoders")
    save_tiny_llama(root / "llama", tokenizer=False)
    shutil.copytree(root / "llama", root / "llama_tok")
    save_tiny_llama(root / "llama_tok", tokenizer=True)
    export(str(root / "llama"), root / "headwise.onnx", transform=Transform(retrieval=1, sink=2, recent=5))
    export(str(root / "llama_tok"), root / "full.onnx")
    return {"dir": root / "llama", "full": root / "full.onnx", "headwise": root / "headwise.onnx",
            "encoder": make_embedding_model(root / "encoder.onnx"), "root": root}


def ids_line(stdout: str) -> list[int]:
    return [int(t) for t in stdout.splitlines()[0].split()]


# --- generate ---------------------------------------------------------------------------------

def test_help_lists_generate_and_decode_options():
    assert "generate" in run_cli("--help").stdout
    for command, options in (("generate", ("--prompt-ids", "--prompt", "--max-new-tokens", "--top-p",
                                           "--stop-ids", "--no-stop", "--json")),
                             ("bench", ("--decode", "--context", "--new-tokens"))):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and all(o in result.stdout for o in options), result.stdout


@pytest.mark.parametrize("model", ["full", "headwise"])
def test_generate_by_ids_equals_the_api(decoders, model):
    result = run_cli("generate", str(decoders[model]), "--prompt-ids", "5, 6,7", "--max-new-tokens", "12",
                     "--no-stop", "--threads", "1")
    assert result.returncode == 0, result.stderr
    generator = Generator(decoders[model], threads=1)
    expected = generator.generate(PROMPT, 12, stop=())
    assert ids_line(result.stdout) == expected and len(expected) == 12
    summary = SUMMARY.fullmatch(result.stdout.splitlines()[-1])
    assert summary, result.stdout
    assert summary.groups() == ("3", "12", format_bytes(generator.cache_bytes()))


def test_generate_streams_each_token_before_the_next_is_made(decoders, monkeypatch):
    """Every id is written and flushed before the generator is asked for the next one."""
    class Recorder:
        def __init__(self):
            self.written, self.flushed = "", ""

        def write(self, text):
            self.written += text
            return len(text)

        def flush(self):
            self.flushed = self.written

    recorder = Recorder()
    shown_when_resumed = []
    stream = Generator.stream

    def spying_stream(self, *args, **kwargs):
        for token in stream(self, *args, **kwargs):
            yield token
            shown_when_resumed.append([int(t) for t in recorder.flushed.split()])

    monkeypatch.setattr(Generator, "stream", spying_stream)
    monkeypatch.setattr(sys, "stdout", recorder)
    cli.main(["generate", str(decoders["headwise"]), "--prompt-ids", "5,6,7", "--max-new-tokens", "9",
              "--no-stop", "--threads", "1"], standalone_mode=False)
    monkeypatch.undo()
    tokens = Generator(decoders["headwise"], threads=1).generate(PROMPT, 9, stop=())
    assert shown_when_resumed == [tokens[:k] for k in range(1, 10)]
    assert ids_line(recorder.written) == tokens


def test_sampling_with_a_seed_is_reproducible(decoders):
    sampling = ["--temperature", "0.8", "--top-k", "40", "--top-p", "0.95", "--no-stop", "--threads", "1"]
    runs = [run_cli("generate", str(decoders["full"]), "--prompt-ids", "5,6,7", "--max-new-tokens", "16",
                    *sampling, "--seed", seed) for seed in ("7", "7", "8")]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    first, again, other = (ids_line(r.stdout) for r in runs)
    generator = Generator(decoders["full"], threads=1)
    assert first == again == generator.generate(PROMPT, 16, temperature=0.8, top_k=40, top_p=0.95, seed=7,
                                                stop=())
    assert other == generator.generate(PROMPT, 16, temperature=0.8, top_k=40, top_p=0.95, seed=8, stop=())
    assert other != first
    assert first != generator.generate(PROMPT, 16, stop=())  # sampled, not greedy


def test_generate_text_prompt_and_json(decoders, tmp_path):
    out = tmp_path / "gen.json"
    result = run_cli("generate", str(decoders["full"]), "--prompt", "w5 w6 w7", "--max-new-tokens", "10",
                     "--json", str(out), "--threads", "1")
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert set(data) == {"prompt_ids", "tokens", "text", "seconds", "ttft_s", "kv_bytes"}
    assert data["prompt_ids"] == [1, *PROMPT]  # the tokenizer's <s> first
    generator = Generator(decoders["full"], threads=1)
    assert data["tokens"] == generator.generate([1, *PROMPT], 10) == ids_line(result.stdout)
    assert data["text"] == " ".join(f"w{t}" for t in data["tokens"] if t >= 3)  # specials skipped
    assert f"text: {data['text']!r}" in result.stdout.splitlines()
    assert data["kv_bytes"] == generator.cache_bytes() == CacheLayout.from_dict(
        generator.session.manifest.decoder["cache"]).cache_bytes(1, 4 + 10)
    assert 0 < data["ttft_s"] <= data["seconds"]
    # without a tokenizer the JSON has no text
    result = run_cli("generate", str(decoders["headwise"]), "--prompt-ids", "5,6,7", "--max-new-tokens", "3",
                     "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert set(json.loads(out.read_text())) == {"prompt_ids", "tokens", "seconds", "ttft_s", "kv_bytes"}


def test_generate_stop_ids_end_generation(decoders):
    tokens = Generator(decoders["full"], threads=1).generate(PROMPT, 12, stop=())
    stop = tokens[4]
    first = min(tokens.index(t) for t in (stop, 127) if t in tokens)
    result = run_cli("generate", str(decoders["full"]), "--prompt-ids", "5,6,7", "--max-new-tokens", "12",
                     "--stop-ids", f"{stop},127")
    assert result.returncode == 0, result.stderr
    assert ids_line(result.stdout) == tokens[:first + 1]
    assert f"{first + 1} new (stopped at id {tokens[first]})" in result.stdout


# --- bench --decode and profile_decode ------------------------------------------------------------

def test_bench_decode_two_models_table_and_json(decoders, tmp_path):
    out = tmp_path / "bench.json"
    result = run_cli("bench", str(decoders["full"]), str(decoders["headwise"]), "--decode", "--context", "64",
                     "--new-tokens", "8", "--iters", "2", "--warmup", "1", "--threads", "1",
                     "--json", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), result.stdout
    for text in ("decode ms: cpu, batch 1, context 64, 8 new tokens", "prefill", "p50", "p99", "tok/s",
                 "KV cache", "RSS MB", "speedup", "full.onnx", "headwise.onnx"):
        assert text in result.stdout, text
    report = json.loads(out.read_text())
    assert report["interleaved"] and report["device"] == "cpu"
    assert report["config"]["context"] == 64 and report["config"]["new_tokens"] == 8
    full, headwise = report["models"]
    for model in (full, headwise):
        assert (model["context"], model["new_tokens"], model["batch"]) == (64, 8, 1)
        for stats in ("prefill_ms", "decode_ms", "alone_decode_ms"):
            s = model[stats]
            assert 0 < s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["max"], (stats, s)
        assert model["tokens_per_s"] == pytest.approx(1e3 / model["decode_ms"]["mean"])
        assert model["peak_rss_mb"] > 0 and model["session_s"] > 0
    layouts = [CacheLayout.from_dict(Generator(decoders[m]).session.manifest.decoder["cache"])
               for m in ("full", "headwise")]
    # full: 4 kv heads x 72 tokens; headwise: 1 x 72 + 3 x (2 + 5), each 2 x 16 floats
    assert [full["kv_bytes"], headwise["kv_bytes"]] == [l.cache_bytes(1, 72) for l in layouts] == [36864, 11904]
    assert full["speedup_vs_first"] == 1.0


def test_bench_decode_one_model_alone(decoders):
    seen = []
    config = DecodeConfig(context=8, new_tokens=4, batch=2, warmup=1, iters=3, threads=1)
    report = bench_decode([str(decoders["headwise"])], config, progress=seen.append)
    assert sum(seen) == total_decode_runs(1, config) == 4 and not report.interleaved
    (result,) = report.models
    assert result.decode_ms == result.alone_decode_ms and result.speedup_vs_first == 1.0
    assert result.tokens_per_s == pytest.approx(2 * 1e3 / result.decode_ms.mean)
    assert result.kv_bytes == Generator(decoders["headwise"]).layout.cache_bytes(2, 12)
    with pytest.raises(EdgertError, match="config must be a DecodeConfig"):
        bench_decode([str(decoders["headwise"])], {"context": 8})


def test_profile_decode(decoders):
    generator = Generator(decoders["headwise"], threads=1)
    prompts = []
    stream = generator.stream

    def spy(prompt, *args, **kwargs):
        prompts.append(prompt)
        return stream(prompt, *args, **kwargs)

    generator.stream = spy
    stats = profile_decode(generator, context=20, new_tokens=6, batch=2, seed=3, label="tiny")
    assert isinstance(stats, DecodeStats)
    assert (stats.model, stats.context, stats.new_tokens, stats.batch) == ("tiny", 20, 6, 2)
    assert len(stats.decode_ms) == 5 and stats.prefill_s > 0 and min(stats.decode_ms) > 0
    assert stats.kv_bytes == generator.cache_bytes() == generator.layout.cache_bytes(2, 26)
    assert min(stats.decode_ms) <= stats.p(50) <= stats.p(99) <= max(stats.decode_ms)
    assert stats.p(0) == min(stats.decode_ms) and stats.p(100) == max(stats.decode_ms)
    assert stats.tokens_per_s == pytest.approx(2 * 1e3 / np.mean(stats.decode_ms))
    rows = np.array(prompts[-1])
    assert rows.shape == (2, 20) and rows.min() >= 3 and rows.max() < 128 and (rows[0] != rows[1]).any()
    again = profile_decode(generator, context=20, new_tokens=6, batch=2, seed=3)
    assert prompts[-1] == prompts[-2] and again.model == str(decoders["headwise"])
    for kwargs, message in [({"context": 510, "new_tokens": 3}, "exceeds the limit of 512"),
                            ({"context": 10, "new_tokens": 1}, "new_tokens must be >= 2"),
                            ({"context": 0, "new_tokens": 3}, "context must be >= 1"),
                            ({"context": 10, "new_tokens": 3, "batch": 0}, "batch must lie in 1..65536"),
                            ({"context": 10, "new_tokens": 3, "seed": -1}, "seed must be >= 0")]:
        with pytest.raises(EdgertError, match=message):
            profile_decode(generator, **kwargs)
    with pytest.raises(EdgertError, match="percentile must be a number in 0..100"):
        stats.p(101)
    with pytest.raises(EdgertError, match="must be an edgert.Generator"):
        profile_decode(generator.session, context=4, new_tokens=3)


# --- every bad input: one Error line, exit 2 ------------------------------------------------------

GENERATE_ERRORS = [
    (["--prompt-ids", ",".join(["5"] * 513), "--max-new-tokens", "1"], "prompt has 513 tokens; the limit is 512"),
    (["--prompt-ids", ",".join(["5"] * 510), "--max-new-tokens", "3"],
     "prompt (510 tokens) + max_new_tokens (3) exceeds the limit of 512 tokens"),
    (["--prompt-ids", "5,128", "--max-new-tokens", "3"], "prompt token id 128 is outside the vocabulary [0, 128)"),
    (["--prompt-ids", "5,-1", "--max-new-tokens", "3"], "prompt token id -1 is outside the vocabulary [0, 128)"),
    (["--prompt-ids", "5", "--max-new-tokens", "0"], "--max-new-tokens must be a whole number >= 1, got 0"),
    (["--prompt-ids", "5", "--max-new-tokens", "-3"], "--max-new-tokens must be a whole number >= 1, got -3"),
    (["--prompt-ids", "1,x", "--max-new-tokens", "3"],
     "--prompt-ids must be comma-separated whole numbers such as 1,2,3; 'x' is not a whole number"),
    (["--prompt-ids", "", "--max-new-tokens", "3"], "'' is not a whole number"),
    (["--prompt-ids", "1,,2", "--max-new-tokens", "3"], "'' is not a whole number"),
    (["--prompt-ids", "5", "--max-new-tokens", "3", "--temperature", "nan"],
     "--temperature must be a finite number >= 0, got nan"),
    (["--prompt-ids", "5", "--max-new-tokens", "3", "--temperature", "inf"],
     "--temperature must be a finite number >= 0, got inf"),
    (["--prompt-ids", "5", "--max-new-tokens", "3", "--top-p", "nan"], "--top-p must lie in (0, 1]"),
    (["--prompt-ids", "5", "--max-new-tokens", "3", "--stop-ids", "2,"], "--stop-ids must be comma-separated"),
    (["--max-new-tokens", "3"], "give the prompt either as --prompt-ids 1,2,3 or as --prompt TEXT"),
    (["--prompt-ids", "5", "--prompt", "w5", "--max-new-tokens", "3"], "give the prompt either as"),
    (["--prompt-ids", "5", "--max-new-tokens", "3", "--stop-ids", "2", "--no-stop"],
     "give --stop-ids or --no-stop, not both"),
    (["--prompt-ids", "5", "--max-new-tokens", "3", "--stop-ids", "128"],
     "--stop-ids: token id 128 is outside the vocabulary [0, 128)"),
    (["--prompt-ids", "5", "--max-new-tokens", "3", "--temperature", "-1"], "temperature must be a finite number >= 0"),
    (["--prompt-ids", "5", "--max-new-tokens", "3", "--temperature", "1", "--top-p", "1.5"],
     "--top-p must lie in (0, 1], got 1.5"),
    (["--prompt-ids", "5", "--max-new-tokens", "3", "--temperature", "1", "--top-k", "0"],
     "--top-k must be a whole number >= 1, got 0"),
    (["--prompt-ids", "5", "--max-new-tokens", "3", "--temperature", "1", "--seed", "-1"], "seed must be a whole number >= 0"),
    (["--prompt-ids", "5", "--max-new-tokens", "3", "--threads", "0"], "threads must lie in 1.."),
]


@pytest.mark.parametrize("args, message", GENERATE_ERRORS)
def test_generate_bad_input(decoders, tmp_path, args, message):
    out = tmp_path / "g.json"
    assert_one_error(run_cli("generate", str(decoders["full"]), *args, "--json", str(out)), message)
    assert not out.exists()


def test_generate_bad_models(decoders):
    assert_one_error(run_cli("generate", str(decoders["headwise"]), "--prompt", "w5 w6", "--max-new-tokens", "3"),
                     "headwise.onnx carries no tokenizer, so --prompt cannot be tokenized; give the prompt as "
                     "token ids with --prompt-ids")
    assert_one_error(run_cli("generate", str(decoders["encoder"]), "--prompt-ids", "5", "--max-new-tokens", "3"),
                     "encoder.onnx is not a decoder exported by edgert (feature-extraction)")
    assert_one_error(run_cli("generate", str(decoders["root"] / "none.onnx"), "--prompt-ids", "5",
                             "--max-new-tokens", "3"), "model not found")


@pytest.mark.parametrize("args, message", [
    (["{encoder}", "--decode", "--context", "8", "--new-tokens", "4"], "encoder.onnx is not a decoder exported by edgert"),
    (["{full}", "{encoder}", "--decode", "--context", "8", "--new-tokens", "4"], "encoder.onnx is not a decoder"),
    (["{full}", "--decode", "--context", "500", "--new-tokens", "20"],
     "context (500 tokens) + new_tokens (20) exceeds the limit of 512 tokens"),
    (["{full}", "--decode", "--context", "8", "--new-tokens", "1"], "new_tokens must be >= 2"),
    (["{full}", "--decode", "--context", "0"], "context must be >= 1, got 0"),
    (["{full}", "--decode", "--batch", "0"], "batch must lie in 1..65536, got 0"),
    (["{full}", "--decode", "--iters", "0"], "iters must lie in 1..100000, got 0"),
    (["{full}", "--decode", "--seq", "8"], "--seq does not apply to --decode (use --context and --new-tokens)"),
    (["{full}", "--decode", "--no-spin"], "--no-spin does not apply to --decode"),
    (["{full}", "--context", "8"], "--context needs --decode"),
    (["{full}"], "full.onnx is a decoder (text-generation graph): time its generation with `edgert bench --decode`"),
])
def test_bench_decode_bad_input(decoders, tmp_path, args, message):
    out = tmp_path / "b.json"
    args = [a.format(**{k: str(v) for k, v in decoders.items()}) for a in args]
    assert_one_error(run_cli("bench", *args, "--iters" if "--iters" not in args else "--warmup", "1",
                             "--json", str(out)), message)
    assert not out.exists()


def run_cli_within(address_space_mib: int, *args: str) -> subprocess.CompletedProcess:
    """run_cli with the process's address space limited, so that a command which allocates what
    it should have refused fails (MemoryError: internal error, exit 1) instead of swapping."""
    limit = address_space_mib * 2**20
    return subprocess.run([sys.executable, "-m", "edgert", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"},
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)))


def test_bench_decode_checks_the_context_before_drawing_the_prompt(decoders):
    """Issue 17: `bench --decode --context 1000000000` drew the prompt (tens of GB of token ids)
    before comparing it with the model's limit; 1 GiB of address space is plenty for the check."""
    result = run_cli_within(1024, "bench", str(decoders["full"]), "--decode", "--context", "1000000000",
                            "--new-tokens", "4", "--iters", "1", "--warmup", "0", "--threads", "1")
    assert_one_error(result, "context (1000000000 tokens) + new_tokens (4) exceeds the limit of 512 tokens")
    generator = Generator(decoders["full"], threads=1)
    with pytest.raises(InputError, match=r"context \(10000000000000 tokens\) \+ new_tokens \(4\) exceeds"):
        profile_decode(generator, context=10**13, new_tokens=4)  # was numpy's MemoryError
    with pytest.raises(InputError, match="exceeds the limit of 512 tokens"):
        bench_decode([str(decoders["full"])], DecodeConfig(context=10**13, new_tokens=4, iters=1, warmup=0))




def test_export_bad_head_options(decoders, tmp_path):
    from edgert.plan import HeadPlan

    source, out = str(decoders["dir"]), tmp_path / "m.onnx"
    other = tmp_path / "plan3.json"
    HeadPlan.full(3, 4, head_dim=16).save(other)  # a plan of a 3-layer model
    wide = tmp_path / "plan8.json"
    HeadPlan.full(2, 8, head_dim=16).save(wide)  # 2 layers of 8 heads
    for args, message in [
        (["--retrieval-heads", "99"], "the plan asks for 99 retrieval heads; the model has 4 kv heads"),
        (["--retrieval-heads", "1", "--sink", "0", "--recent", "0"],
         "--sink/--recent: window cache needs sink >= 0 and recent >= 1"),
        (["--retrieval-heads", "0.5", "--sink", "-1"], "--sink/--recent"),
        (["--retrieval-heads", "1.5"], "a --retrieval-heads fraction must lie in [0, 1], got 1.5"),
        (["--retrieval-heads", "abc"], "--retrieval-heads takes a fraction (0.25) or a count (4), got 'abc'"),
        (["--retrieval-heads", "-1"], "--retrieval-heads must be >= 0, got -1"),
        (["--retrieval-heads", "1", "--sink", "1000000000000"],
         "--sink/--recent: a window of sink 1000000000000 + recent 256 tokens is longer than the 16777216 tokens"),
        (["--retrieval-heads", "1", "--sink", "500", "--recent", "20"],
         "a window of sink 500 + recent 20 tokens is longer than the model's max_length (512)"),
        (["--sink", "0", "--recent", "0"], "--sink and --recent shape the streaming heads of --retrieval-heads"),
        (["--plan", str(other)], "plan has 3 layers, model has 2"),
        (["--plan", str(wide)], "plan layer 0 has 8 heads, model has 4"),
    ]:
        assert_one_error(invoke("export", source, "-o", str(out), *args), message)
        assert not out.exists()


# --- the Python API ---------------------------------------------------------------------------

def test_generator_api_errors(decoders):
    with pytest.raises(EdgertError, match="is not a decoder exported by edgert"):
        Generator(decoders["encoder"])
    generator = Generator(decoders["full"], threads=1)
    with pytest.raises(EdgertError, match="max_length 600 exceeds the model's limit 512"):
        Generator(decoders["full"], max_length=600)
    for args, kwargs, message in [
        (([5, 128], 3), {}, r"prompt token id 128 is outside the vocabulary \[0, 128\)"),
        (([5, -1], 3), {}, r"prompt token id -1 is outside the vocabulary"),
        (([[5, 6], [7, 300]], 3), {}, "prompt token id 300"),
        ((PROMPT, 0), {}, "max_new_tokens must be a whole number >= 1, got 0"),
        ((PROMPT, -3), {}, "max_new_tokens must be a whole number >= 1"),
        (([5] * 500, 13), {}, r"prompt \(500 tokens\) \+ max_new_tokens \(13\) exceeds the limit of 512"),
        (([5] * 513, 1), {}, "prompt has 513 tokens; the limit is 512"),
        (([], 3), {}, "a prompt must hold at least one token id"),
        (("hello", 3), {}, "token ids"),
        ((PROMPT, 3), {"temperature": -0.5}, "temperature must be a finite number >= 0"),
        ((PROMPT, 3), {"temperature": float("nan")}, "temperature must be a finite number >= 0"),
        ((PROMPT, 3), {"temperature": 1.0, "top_p": 0}, r"top_p must lie in \(0, 1\]"),
        ((PROMPT, 3), {"temperature": 1.0, "top_p": 1.5}, r"top_p must lie in \(0, 1\]"),
        ((PROMPT, 3), {"temperature": 1.0, "top_k": 0}, "top_k must be a whole number >= 1"),
        ((PROMPT, 3), {"temperature": 1.0, "seed": -1}, "seed must be a whole number >= 0"),
        ((PROMPT, 3), {"temperature": 1.0, "seed": 1.5}, "seed must be a whole number >= 0"),
    ]:
        with pytest.raises(EdgertError, match=message):
            generator.generate(*args, **kwargs)
    limited = Generator(decoders["full"], max_length=16)
    with pytest.raises(EdgertError, match="exceeds the limit of 16 tokens"):
        limited.generate([5] * 10, 7)
    assert len(limited.generate([5] * 10, 6, stop=())) == 6


# --- memory: checked before anything is allocated ---------------------------------------------------

def forbid_allocation(monkeypatch, available: int) -> None:
    """Pretend `available` bytes of memory are free, and fail loudly if a KV cache is made."""
    def no_cache(*args, **kwargs):
        raise AssertionError("a KV cache was allocated after all")

    monkeypatch.setattr("edgert.decode_memory.available_memory_bytes", lambda: available)
    monkeypatch.setattr("edgert.generator.KVCache", no_cache)


def test_generator_counts_prefill_activations_not_only_the_cache(decoders, monkeypatch):
    """Issue 17: only the KV cache was checked; batch 64 x 500 tokens needs 16 MiB of cache but
    a prefill working set of hundreds of MiB (masks [64, 1, 500, 500] per layer, hidden and MLP
    tensors; the scores too where prefill attention is not fused), which a machine with 100 MiB
    free must refuse before allocating anything."""
    generator = Generator(decoders["full"], threads=1)
    needed = generator.memory_needed(64, 500, 4)
    assert needed.cache == generator.layout.cache_bytes(64, 504) < 100 * 2**20 < needed.activations
    forbid_allocation(monkeypatch, 100 * 2**20)
    with pytest.raises(InputError, match=r"^batch 64 x 500 tokens of prompt \+ 4 new needs about "
                                         rf"{re.escape(format_bytes(needed.total))} \(KV cache {re.escape(format_bytes(needed.cache))}, "
                                         r"prefill activations about [\d.]+ [GM]iB, prompt and cache copies [\d.]+ MiB\), "
                                         r"more than the 100\.0 MiB of memory available"):
        generator.generate([[5] * 500] * 64, 4, stop=())
    with pytest.raises(InputError, match="prefill activations"):
        profile_decode(generator, context=500, new_tokens=4, batch=64)
    for args, message in [((0, 5, 1), "batch must be a whole number >= 1, got 0"),
                          ((1, 5.0, 1), "prompt_tokens must be a whole number >= 1, got 5.0"),
                          ((1, 5, -1), "max_new_tokens must be a whole number >= 0, got -1")]:
        with pytest.raises(InputError, match=re.escape(message)):
            generator.memory_needed(*args)


@pytest.mark.parametrize("args", [
    ["bench", "{full}", "--decode", "--batch", "64", "--context", "500", "--new-tokens", "4"],
    # passkey generates its trials as one batch: 200 prompts of 400 tokens
    ["eval", "passkey", "{full}", "--trials", "200", "--context", "400", "--depths", "0"],
])
def test_commands_refuse_generations_that_do_not_fit(decoders, monkeypatch, args):
    forbid_allocation(monkeypatch, 256 * 2**20)
    result = invoke(*(a.format(full=decoders["full"]) for a in args), "--threads", "1")
    assert_one_error(result, "prefill activations about")
    assert "more than the 256.0 MiB of memory available; use a smaller batch or a shorter prompt" in result.stderr


def test_bench_decode_batch_65536_is_refused_before_allocating(decoders):
    """Issue 17: `bench --decode --batch 65536` passed the KV cache check on a big machine and
    grew while prefilling; its estimate (about 0.7 TB) is refused, within 1 GiB of address space."""
    needed = Generator(decoders["full"]).memory_needed(65536, 256, 64, prompt_lists=True).total
    available = available_memory_bytes()
    if available is None or available >= needed:
        pytest.skip(f"this machine has {format_bytes(available or 0)} free, enough for the run")
    result = run_cli_within(1024, "bench", str(decoders["full"]), "--decode", "--batch", "65536",
                            "--iters", "1", "--warmup", "0", "--threads", "1")
    assert_one_error(result, f"batch 65536 x 256 tokens of prompt + 64 new needs about {format_bytes(needed)}")


def test_a_loop_of_generations_reuses_what_the_last_one_held(decoders, monkeypatch):
    """After one generation ONNX Runtime's arena and the KV cache hold its memory; the next
    generation of the same size reuses it, so the check must not refuse a loop (passkey trials,
    bench iterations) on the second run because the first one's memory is no longer free."""
    generator = Generator(decoders["full"], threads=1)
    needed = generator.memory_needed(16, 500, 4)
    tight = needed.total - needed.activations  # enough only once the activations are held
    prompts = [[5] * 500] * 16
    monkeypatch.setattr("edgert.decode_memory.available_memory_bytes", lambda: tight)
    with pytest.raises(InputError, match="prefill activations"):
        generator.generate(prompts, 4, stop=())
    monkeypatch.undo()
    first = generator.generate(prompts, 4, stop=())
    monkeypatch.setattr("edgert.decode_memory.available_memory_bytes", lambda: tight - needed.cache)
    assert generator.generate(prompts, 4, stop=()) == first


def test_the_memory_estimate_bounds_what_generation_takes(decoders):
    """The estimate is an upper bound of the resident set a process grows by over three
    prefills of 16 x 500 tokens, and not absurdly above it (at most 2.5x; measured 1.45x)."""
    code = textwrap.dedent(f"""
        from edgert import Generator
        from edgert.memory import peak_rss_mb, reset_peak_rss, rss_mb
        generator = Generator({str(decoders["full"])!r}, threads=1)
        generator.generate([5, 6, 7], 2, stop=())
        prompts = [[(7 * i + j) % 125 + 3 for j in range(500)] for i in range(16)]
        before = rss_mb()
        reset_peak_rss()
        for _ in range(3):
            generator.generate(prompts, 4, stop=())
        print((peak_rss_mb() - before) * 2**20, generator.memory_needed(16, 500, 4).total)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    grown, estimate = map(float, result.stdout.split())
    assert grown <= estimate <= 2.5 * grown, (grown, estimate)


# --- issue 17: numbers checked, API errors only EdgertError ------------------------------------

def test_a_tiny_temperature_is_the_greedy_limit_without_overflow(decoders):
    """softmax(logits / 1e-320) is the greedy choice; dividing first overflowed to inf - inf = nan
    and sampled token 0 every time, with numpy's overflow warnings."""
    result = run_cli("generate", str(decoders["full"]), "--prompt-ids", "5,6,7", "--max-new-tokens", "8",
                     "--temperature", "1e-320", "--seed", "0", "--no-stop", "--threads", "1")
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr, result.stderr
    greedy = Generator(decoders["full"], threads=1).generate(PROMPT, 8, stop=())
    assert ids_line(result.stdout) == greedy and set(greedy) != {0}


def test_generator_arguments_raise_only_edgert_errors(decoders):
    from fractions import Fraction

    from edgert.errors import InputError, OptionError

    generator = Generator(decoders["full"], threads=1)
    assert generator.generate(PROMPT, 4, temperature=Fraction(1, 2), seed=3, stop=()) == \
        generator.generate(PROMPT, 4, temperature=0.5, seed=3, stop=())
    for call, error, message in [
        (lambda: generator.decode([-1]), InputError, r"token_ids: token id -1 is outside the vocabulary \[0, 128\)"),
        (lambda: generator.decode([10**12]), InputError, "token id 1000000000000 is outside the vocabulary"),
        (lambda: generator.decode([5], skip_special_tokens="no"), OptionError, "skip_special_tokens must be"),
        (lambda: generator.generate(PROMPT, 3, temperature=10**400), OptionError, "temperature must be a finite"),
        (lambda: generator.generate(PROMPT, 3, temperature="0.5"), OptionError, "temperature must be a finite"),
        (lambda: generator.generate(PROMPT, 3, stop=[10**30]), InputError, "stop: token id"),
        (lambda: generator.generate(PROMPT, 3.0), OptionError, "max_new_tokens must be a whole number >= 1"),
        (lambda: generator.next_token_logits(PROMPT, [5, 999]), InputError, "continuation: token id 999"),
    ]:
        with pytest.raises(error, match=message):
            call()


def test_session_run_on_a_decoder_stops_at_its_max_length(decoders):
    """Session.run on a decoder graph checks positions and the past against max_length (512;
    the headwise model has no tokenizer, so the limit comes from its decoder manifest)."""
    from edgert import Session
    from edgert.errors import InputError
    from edgert.exporters.decoder import step_inputs

    session = Session(decoders["headwise"], threads=1)
    layout = CacheLayout.from_dict(session.manifest.decoder["cache"])
    feeds = step_inputs(layout, 128, batch=1, seq=1, past=4, seed=0)
    assert session.run(feeds)["logits"].shape == (1, 128)
    late = {**feeds, "position_ids": np.array([[512]], np.int64)}
    with pytest.raises(InputError, match=r"positions must lie in \[0, 512\) \(the model's max_length\)"):
        session.run(late)
    with pytest.raises(InputError, match="past length 600 .* is longer than the model's max_length 512"):
        session.run(step_inputs(layout, 128, batch=1, seq=1, past=600, seed=0))


def test_passkey_api_raises_only_edgert_errors(decoders):
    from edgert.errors import OptionError
    from edgert.passkey import evaluate

    generator = Generator(decoders["full"], threads=1)
    for args, kwargs, message in [
        ((None, [64], [0.5], 1), {}, "generator must be an edgert.Generator, got None"),
        ((generator, [64], [0.5], "2"), {}, "trials must lie in 1..10000 (a whole number), got '2'"),
        ((generator, [64], [0.5], 1.5), {}, "trials must lie in 1..10000 (a whole number), got 1.5"),
        ((generator, [64], [0.5], 10**6), {}, "trials must lie in 1..10000, got 1000000"),
        ((generator, [64], ["a"], 1), {}, "depths[0] must lie in [0, 1] (a finite number), got 'a'"),
        ((generator, [64], "0.5", 1), {}, "depths must be a list"),
        ((generator, [], [0.5], 1), {}, "contexts is empty"),
        ((generator, [64.5], [0.5], 1), {}, "contexts[0] must be a whole number >= 1"),
        ((generator, [64], [0.5], 1), {"seed": -1}, "seed must be a whole number >= 0, got -1"),
        ((generator, [64], [0.5], 1), {"progress": 3}, "progress must be a function"),
        ((generator, [10], [0.5], 1), {}, "500] for this model (the prompt without filler takes"),
    ]:
        with pytest.raises(OptionError, match=re.escape(message)):
            evaluate(*args, **kwargs)


def test_eval_passkey_checks_its_options_and_the_memory_of_its_trials(decoders, monkeypatch):
    model = str(decoders["full"])
    for args, message in [
        (["--context", "128,,256"], "--context must be comma-separated whole numbers such as 1,2,3; '' is not"),
        (["--context", "10"], "contexts must lie in ["),
        (["--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
        (["--trials", "100000"], "--trials must lie in 1..10000, got 100000"),
        (["--depths", "0,nan"], "--depths must lie in [0, 1] (a finite number), got nan"),
    ]:
        assert_one_error(invoke("eval", "passkey", model, *args), message)
    # 10 prompts' caches: 2 (keys, values) x 10 x 4 kv heads x (128 + 12) tokens x 16 x 4 bytes = 700 KiB
    monkeypatch.setattr("edgert.memory.available_memory_bytes", lambda: 2**19)
    monkeypatch.setattr("edgert.passkey.passkey_prompt", lambda *a, **k: pytest.fail("a prompt was built"))
    assert_one_error(invoke("eval", "passkey", model, "--context", "128", "--trials", "10"),
                     "the KV cache of 10 trials (decoded as one batch) at context 128 needs 700.0 KiB; "
                     "512.0 KiB of memory is available (use fewer trials)")


def test_a_manifest_with_bad_special_tokens_is_a_load_error(decoders, tmp_path):
    import onnx

    from edgert.errors import ModelLoadError
    from edgert.plan import MANIFEST_KEY

    model = onnx.load(str(decoders["headwise"]))
    entry = next(p for p in model.metadata_props if p.key == MANIFEST_KEY)
    manifest = json.loads(entry.value)
    manifest["decoder"]["eos_token_ids"] = ["2"]
    entry.value = json.dumps(manifest)
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(ModelLoadError, match="manifest decoder.eos_token_ids must be a list of integers >= 0"):
        Generator(tmp_path / "bad.onnx")
