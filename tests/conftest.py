"""Shared fixtures: tiny hand-built ONNX graphs (no torch) and exports made once per run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgert.trt_plugins.triton_support import INTERPRET_ENV, cuda_device_present

ROOT = Path(__file__).resolve().parents[1]
# Triton picks its interpreter when a kernel module is imported: without an NVIDIA GPU, the
# kernels in trt_plugins/ run on CPU tensors under it (set before any test imports them).
if not cuda_device_present():
    os.environ.setdefault(INTERPRET_ENV, "1")
# Fixtures that export real models (tens of seconds each): every test that uses one runs in the
# slow lane. `pytest -m "not slow"` is the fast lane for the inner loop; CI runs both. The fast
# lane keeps test_decoder's one tiny Llama export so the decoding runtime is exercised there too.
EXPORTED_MODEL_FIXTURES = {"minilm_st", "minilm_fe", "family_export", "decoders", "tiny_lm_onnx", "exports"}


def pytest_collection_modifyitems(items):
    gpu = None
    for item in items:
        if EXPORTED_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        if item.get_closest_marker("gpu"):
            if gpu is None:
                gpu = _cuda_available()
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def make_tiny_model(path: Path, *, dims=("batch", 4), with_ids: bool = True) -> Path:
    """y = x @ W + 1 (float), n = ReduceSum(ids) (int64): a model with named dynamic dims."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W")
    one = numpy_helper.from_array(np.ones(3, dtype=np.float32), "one")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "one"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 3])]
    if with_ids:
        nodes.append(helper.make_node("ReduceSum", ["ids"], ["n"], keepdims=0))
        inputs.append(helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"]))
        outputs.append(helper.make_tensor_value_info("n", TensorProto.INT64, []))
    graph = helper.make_graph(nodes, "tiny", inputs, outputs, [w, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return make_tiny_model(tmp_path / "tiny.onnx")


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", "world", "edge", "inference", "a", "b"]


def make_embedding_model(path: Path, *, vocab_size: int = len(WORDS), max_length: int = 16,
                         heads: int = 2, head_dim: int = 2, manifest: bool = True,
                         tokenizer: bool = False) -> Path:
    """last_hidden_state = E[input_ids] * attention_mask, E a [vocab_size, heads * head_dim]
    table: a text model's signature (int64 [batch, sequence] inputs) without torch.

    manifest: store an edgert manifest with text.vocab_size / text.max_length and a one-layer
    head plan (heads x head_dim); tokenizer: also store a word-level tokenizer over WORDS.
    """
    from edgert.plan import MANIFEST_KEY, TOKENIZER_KEY, HeadPlan, Manifest

    hidden = heads * head_dim
    table = np.random.default_rng(0).standard_normal((vocab_size, hidden)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["E", "input_ids"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["maskf", "axis"], ["mask3"]),
        helper.make_node("Mul", ["emb", "mask3"], ["last_hidden_state"]),
    ]
    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes, "embedding",
        [helper.make_tensor_value_info(n, TensorProto.INT64, dims) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*dims, hidden])],
        [numpy_helper.from_array(table, "E"), numpy_helper.from_array(np.array([2], np.int64), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    props = {}
    if manifest:
        props[MANIFEST_KEY] = Manifest(
            edgert_version="0.1.0", source="test-embedding", task="feature-extraction", opset=18,
            inputs={"input_ids": "input_ids", "attention_mask": "attention_mask"},
            dims={"batch": "batch", "sequence": "sequence"},
            text={"max_length": max_length, "vocab_size": vocab_size},
            plan=HeadPlan.full(1, heads, head_dim=head_dim)).to_json()
    if tokenizer:
        from tokenizers import Tokenizer
        from tokenizers.models import WordLevel
        from tokenizers.pre_tokenizers import Whitespace
        from tokenizers.processors import TemplateProcessing

        words = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
        words.pre_tokenizer = Whitespace()
        words.post_processor = TemplateProcessing(single="[CLS] $A [SEP]",
                                                  special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        props[TOKENIZER_KEY] = words.to_str()
    if props:
        helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def embedding_model(tmp_path) -> Path:
    """make_embedding_model with a manifest and a tokenizer."""
    return make_embedding_model(tmp_path / "embedding.onnx", tokenizer=True)


def assert_one_error(result, message: str = "") -> str:
    """The one check of a command that a user's mistake ended, for a subprocess.CompletedProcess
    (run_cli) and click's Result (CliRunner) alike: exit code 2, no traceback, exactly one
    `Error:` line, the last line on stderr, holding `message`. Returns that line."""
    code = result.returncode if hasattr(result, "returncode") else result.exit_code
    assert code == 2, (code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]  # progress lines may come first
    assert lines and [line for line in lines if line.startswith("Error:")] == lines[-1:], result.stderr
    assert lines[-1].startswith("Error: ") and message in lines[-1], lines[-1]
    return lines[-1]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m edgert ARGS` in a fresh process, as a user would (signals, exit codes,
    what is imported and left behind)."""
    return subprocess.run([sys.executable, "-m", "edgert", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def invoke(*args: object):
    """Run the `edgert` command in this process with click's runner (fast: torch and models
    stay loaded); each argument is turned into a string. An exception other than the exit the
    CLI chose (a bug) is raised, so the test shows its traceback."""
    from click.testing import CliRunner

    from edgert.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@pytest.fixture(scope="session")
def minilm_st(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 exported as sentence-embedding through the Python API."""
    from edgert.exporters import export

    path = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    export("minilm", path, task="sentence-embedding")
    return path


@pytest.fixture(scope="session")
def minilm_fe(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 exported as feature-extraction through the CLI."""
    path = tmp_path_factory.mktemp("minilm_fe") / "minilm_fe.onnx"
    result = run_cli("export", "minilm", "-o", str(path), "--task", "feature-extraction",
                     "--json", str(path.with_suffix(".json")))
    assert result.returncode == 0, result.stderr
    return path


# The tiny decoders' word-level tokenizer: <unk>, <s>, </s>, then one word per id ("w3" ... "w127").
TINY_WORDS = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 128)}}


def save_tiny_decoder(directory: Path, family: str = "llama", *, tokenizer: str | None = None, **overrides):
    """A random-init causal LM (hidden 64, 2 layers, 4 query / 2 kv heads, vocab 128) saved as a
    Hugging Face directory; initializer_range 0.3 gives clear logit margins, so greedy tokens
    agree across runtimes. tokenizer: None, "words" (the word-level TINY_WORDS) or "words+bos"
    (the same, starting every text with <s>). Returns the torch model."""
    import torch
    import transformers

    torch.manual_seed(0)
    options = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=128, max_position_embeddings=512, initializer_range=0.3)
    options.update(overrides)
    config = transformers.AutoConfig.for_model(family, **options)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(directory)
    if tokenizer:
        from tokenizers import Tokenizer
        from tokenizers.models import WordLevel
        from tokenizers.pre_tokenizers import Whitespace
        from tokenizers.processors import TemplateProcessing

        words = Tokenizer(WordLevel(TINY_WORDS, unk_token="<unk>"))
        words.pre_tokenizer = Whitespace()
        if tokenizer == "words+bos":
            words.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        transformers.PreTrainedTokenizerFast(tokenizer_object=words, bos_token="<s>", eos_token="</s>",
                                             unk_token="<unk>").save_pretrained(directory)
    return model


@pytest.fixture(scope="session")
def aot_compile_report() -> dict:
    """`python -m edgert.trt_plugins.compile_check --arch 90 89 --json`, run once per test run in
    a process without Triton's interpreter (which would replace the kernels it compiles)."""
    env = {k: v for k, v in os.environ.items() if k != INTERPRET_ENV}
    result = subprocess.run([sys.executable, "-m", "edgert.trt_plugins.compile_check", "--arch", "90", "89", "--json"],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    report = json.loads(result.stdout)
    report["returncode"], report["stderr"] = result.returncode, result.stderr
    return report
