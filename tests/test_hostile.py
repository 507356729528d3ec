"""Hostile inputs, generated and tabled.

Property-based (hypothesis) feeds, texts, paths, plans and option values go to the Python API
and the CLI; a table of CLI cases covers every command. Each must end cleanly: an EdgertError
(API), or exit code 2 with exactly one `Error:` line, no traceback, no new file anywhere (the
working folder, the inputs' folders, $TMPDIR) and the input files unchanged (CLI).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import edgert
from conftest import assert_one_error, invoke, make_embedding_model
from edgert.errors import EdgertError
from edgert.plan import HeadPlan

# ONNX Runtime's C++ log lines ("2026-... [W:onnxruntime:...]") and torch's glog-style ones.
ORT_OR_TORCH_LOG = re.compile(r"\[[VIWEF]:onnxruntime|^[IWEF]\d{4} \d\d:\d\d")
MAX_LENGTH = 16
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def make_text_model(path: Path) -> Path:
    """A tiny text model (no torch) with an edgert manifest (max_length 16) and a tokenizer."""
    return make_embedding_model(path, max_length=MAX_LENGTH, tokenizer=True)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    return make_text_model(tmp_path_factory.mktemp("hostile") / "text.onnx")


@pytest.fixture(scope="module")
def session(text_model):
    return edgert.load(text_model, threads=1)


def assert_one_line(exc: EdgertError) -> None:
    assert str(exc).strip() and "\n" not in str(exc).strip(), repr(exc)


# ---------------------------------------------------------------------------------------------
# Python API, property-based

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                    st.binary(max_size=8), st.complex_numbers(), st.builds(object))
arrays = hnp.arrays(
    dtype=st.sampled_from([np.int64, np.int32, np.int8, np.uint8, np.float32, np.float64, np.float16,
                           np.bool_, np.complex64, np.str_, np.object_]),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=24))
int64_ids = hnp.arrays(np.int64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=40),
                       elements=st.integers(-2**63, 2**63 - 1))
values = st.one_of(scalars, arrays, int64_ids,
                   st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12))
feeds = st.one_of(
    values,
    st.dictionaries(st.sampled_from(["input_ids", "attention_mask", "x", ""]) | st.text(max_size=6),
                    values, max_size=3),
    st.fixed_dictionaries({"input_ids": values, "attention_mask": values}),
    st.fixed_dictionaries({"input_ids": int64_ids, "attention_mask": int64_ids}),
)


@pytest.mark.slow
@SETTINGS
@given(feeds=feeds, outputs=st.one_of(st.none(), st.text(max_size=5), st.lists(scalars, max_size=2),
                                      st.just(["last_hidden_state"]), st.integers()))
def test_session_run_raises_only_edgert_errors(session, feeds, outputs):
    try:
        result = session.run(feeds, outputs)
    except EdgertError as exc:
        assert_one_line(exc)
    else:
        assert isinstance(result, dict) and all(isinstance(v, np.ndarray) for v in result.values())


texts = st.one_of(st.text(max_size=40), st.lists(st.one_of(st.text(max_size=30), scalars), max_size=4),
                  scalars, st.just("word " * 5000), st.just([]), st.just([""]))


@SETTINGS
@given(texts=texts)
def test_run_text_raises_only_edgert_errors(session, texts):
    try:
        result = session.run_text(texts)
    except EdgertError as exc:
        assert_one_line(exc)
    else:
        assert result["last_hidden_state"].shape[1] <= MAX_LENGTH


hostile_paths = st.one_of(
    scalars, st.text(max_size=30),
    st.sampled_from(["", " ", "/", ".", "/dev/null", "/dev/zero", "/proc/self/status", "/etc",
                     "missing.onnx", "a\0b.onnx", "x" * 5000]))


@SETTINGS
@given(path=hostile_paths,
       device=st.one_of(st.sampled_from(["cpu", "cuda", "tensorrt", "auto"]), scalars),
       threads=st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=3), st.booleans()))
def test_load_raises_only_edgert_errors(path, device, threads):
    try:
        edgert.load(path, device=device, threads=threads)
    except EdgertError as exc:
        assert_one_line(exc)


@SETTINGS
@given(device=st.one_of(st.sampled_from(["cpu", "auto"]), scalars),
       threads=st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=3), st.booleans()))
def test_load_options_on_a_real_model(text_model, device, threads):
    try:
        session = edgert.load(text_model, device=device, threads=threads)
    except EdgertError as exc:
        assert_one_line(exc)
    else:
        assert session.input_names == ["input_ids", "attention_mask"]


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                           | st.text(max_size=6),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4),
                           max_leaves=20)
PLAN = HeadPlan.full(2, 4, num_kv_heads=2, head_dim=8).to_dict()


def mutated_plans():
    """A valid plan with one field, at any depth, replaced by a hostile value."""
    def mutate(args):
        path, value = args
        plan = json.loads(json.dumps(PLAN))
        node = plan
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return plan
    fields = [("format",), ("head_dim",), ("layers",), ("layers", 0), ("layers", 0, "num_heads"),
              ("layers", 0, "kept_heads"), ("layers", 0, "kept_heads", 1), ("layers", 0, "kv_heads"),
              ("layers", 0, "kv_heads", 0), ("layers", 0, "num_kv_heads"), ("layers", 0, "softmax"),
              ("layers", 0, "softmax", "kind"), ("layers", 0, "softmax", "gamma"), ("layers", 1, "gated"),
              ("layers", 1, "cache"), ("layers", 1, "cache", 0), ("layers", 1, "cache", 0, "kind"),
              ("layers", 1, "cache", 0, "sink"), ("layers", 1, "cache", 0, "recent")]
    return st.tuples(st.sampled_from(fields), json_values).map(mutate)


@SETTINGS
@given(data=st.one_of(json_values, mutated_plans()))
def test_head_plan_json_raises_only_plan_errors(data):
    try:
        plan = HeadPlan.from_json(json.dumps(data))
    except EdgertError as exc:
        assert_one_line(exc)
    else:
        assert HeadPlan.from_json(plan.to_json()) == plan


@SETTINGS
@given(text=st.text(max_size=60) | st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
def test_head_plan_text_raises_only_plan_errors(text):
    try:
        HeadPlan.from_json(text)
    except EdgertError as exc:
        assert_one_line(exc)


# ---------------------------------------------------------------------------------------------
# CLI option values and input files, property-based (in process: click's runner)



def assert_clean_exit(result, *, allow_success: bool = True) -> None:
    """Success (when allowed) or assert_one_error."""
    if result.exit_code == 0 and allow_success:
        assert "Traceback" not in result.stderr, result.stderr
        return
    assert_one_error(result)


option_values = st.one_of(st.integers(max_value=0), st.integers(min_value=10**7, max_value=2**70),
                          st.text(max_size=6), st.floats().map(repr), st.just(""))


@pytest.mark.slow
@SETTINGS
@given(option=st.sampled_from(["--batch", "--seq", "--threads", "--iters", "--warmup"]), value=option_values)
def test_bench_option_values(text_model, tmp_path, option, value):
    value = str(value)
    if option == "--warmup" and value.lstrip("+").isdigit() and int(value) == 0:
        value = "-1"  # zero warmup is legitimate; everything else generated here is not
    before = snapshot(tmp_path)
    result = invoke("bench", str(text_model), "--iters", "2", "--warmup", "1", option, value)
    assert_clean_exit(result, allow_success=False)
    assert snapshot(tmp_path) == before


@SETTINGS
@given(arrays=st.dictionaries(st.sampled_from(["input_ids", "attention_mask", "x"]),
                              st.one_of(arrays, int64_ids), max_size=3))
def test_run_with_generated_npz(text_model, tmp_path_factory, arrays):
    folder = tmp_path_factory.mktemp("npz")
    path = folder / "feeds.npz"
    try:
        np.savez(path, **arrays)
    except Exception:  # noqa: BLE001  numpy cannot pickle some generated objects: no file to test
        return
    before = snapshot(folder)
    result = invoke("run", str(text_model), "--inputs", str(path))
    assert_clean_exit(result)
    assert snapshot(folder) == before


@SETTINGS
@given(texts=st.lists(st.text(min_size=0, max_size=40).filter(lambda t: "\0" not in t), min_size=1, max_size=3))
def test_run_with_generated_text(text_model, texts):
    args = [a for t in texts for a in ("--text", t)]
    assert_clean_exit(invoke("run", str(text_model), *args))


# ---------------------------------------------------------------------------------------------
# CLI, a table of cases run as a user would (fresh process, own cwd and $TMPDIR)

def user_env() -> dict[str, str]:
    """The environment a user's shell would give edgert: torch sets TORCHINDUCTOR_CACHE_DIR in
    this test process once it has exported, which would hide where edgert puts torch's cache."""
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    return {**env, "HF_HUB_OFFLINE": "1"}


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under `folders` with its content hash (ONNX Runtime's telemetry file $TMPDIR/.ses
    included: commands switch the telemetry off)."""
    files = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


@pytest.fixture
def inputs(tmp_path):
    """The input files the table refers to, in their own folder (new for every case)."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    text_model = make_text_model(folder / "text.onnx")
    files = {"model": text_model}
    (folder / "notes.txt").write_text("hello world\nedge inference\n")
    files["notes"] = folder / "notes.txt"
    (folder / "junk.onnx").write_bytes(b"\x08\x07" + os.urandom(200))
    files["junk"] = folder / "junk.onnx"
    files["truncated"] = folder / "cut.onnx"
    files["truncated"].write_bytes(text_model.read_bytes()[:-40])
    (folder / "empty.onnx").write_bytes(b"")
    files["empty"] = folder / "empty.onnx"
    np.savez(folder / "long.npz", input_ids=np.full((1, 5000), 4, np.int64),
             attention_mask=np.ones((1, 5000), np.int64))
    files["long"] = folder / "long.npz"
    np.savez(folder / "big_id.npz", input_ids=np.array([[2, 4, 99999, 3]], np.int64),
             attention_mask=np.ones((1, 4), np.int64))
    files["big_id"] = folder / "big_id.npz"
    np.savez(folder / "negative_id.npz", input_ids=np.array([[2, -1, 3]], np.int64),
             attention_mask=np.ones((1, 3), np.int64))
    files["negative_id"] = folder / "negative_id.npz"
    np.savez(folder / "wrong_dtype.npz", input_ids=np.ones((1, 3), np.float32),
             attention_mask=np.ones((1, 3), np.int64))
    files["wrong_dtype"] = folder / "wrong_dtype.npz"
    (folder / "plan.json").write_text("{not json")
    files["bad_plan"] = folder / "plan.json"
    (folder / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 50)
    files["binary"] = folder / "binary.txt"
    files["loop"] = folder / "loop"
    files["loop"].symlink_to(files["loop"])
    files["source"] = folder / "llama"  # a model folder: only what is read before its outputs are checked
    files["source"].mkdir()
    (files["source"] / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    files["folder"] = folder
    return files


LONG = "{out}/" + "x" * 300 + ".json"  # a name the OS refuses (ENAMETOOLONG)


# (case id, argv with {name} placeholders for input files and {out} for an output folder,
#  text the Error: line must contain)
CLI_CASES = [
    ("inspect-missing", ["inspect", "{out}/nope.onnx"], "model not found"),
    ("inspect-junk", ["inspect", "{junk}"], "junk.onnx"),
    ("inspect-empty", ["inspect", "{empty}"], "empty.onnx"),
    ("inspect-folder", ["inspect", "{folder}"], "is a directory"),
    ("inspect-json-is-model", ["inspect", "{model}", "--json", "{model}"], "same file"),
    ("inspect-json-devnull", ["inspect", "{model}", "--json", "/dev/null"], "not a regular file"),
    ("inspect-json-folder", ["inspect", "{model}", "--json", "{out}"], "is a directory"),
    ("run-neither", ["run", "{model}"], "--text"),
    ("run-both", ["run", "{model}", "--text", "hi", "--inputs", "{long}"], "--text"),
    ("run-truncated", ["run", "{truncated}", "--text", "hello"], "cut.onnx"),
    ("run-empty-model", ["run", "{empty}", "--text", "hello"], "empty"),
    ("run-long-sequence", ["run", "{model}", "--inputs", "{long}"], f"{MAX_LENGTH}"),
    ("run-token-id-too-big", ["run", "{model}", "--inputs", "{big_id}"], "99999"),
    ("run-token-id-negative", ["run", "{model}", "--inputs", "{negative_id}"], "-1"),
    ("run-wrong-dtype", ["run", "{model}", "--inputs", "{wrong_dtype}"], "int64"),
    ("run-npz-is-text", ["run", "{model}", "--inputs", "{notes}"], "notes.txt"),
    ("run-missing-npz", ["run", "{model}", "--inputs", "{out}/none.npz"], "none.npz"),
    ("run-out-is-model", ["run", "{model}", "--text", "hello", "--out", "{model}"], "same file"),
    ("run-out-is-inputs", ["run", "{model}", "--inputs", "{big_id}", "--out", "{big_id}"], "same file"),
    ("run-out-devnull", ["run", "{model}", "--text", "hello", "--out", "/dev/null"], "not a regular file"),
    ("run-out-missing-dir", ["run", "{model}", "--text", "hi", "--out", "{out}/no/e.npy"], "does not exist"),
    ("run-unknown-output", ["run", "{model}", "--text", "hi", "--output", "nope"], "nope"),
    ("run-threads-zero", ["run", "{model}", "--text", "hi", "--threads", "0"], "threads"),
    ("run-threads-huge", ["run", "{model}", "--text", "hi", "--threads", "100000"], "threads"),
    ("bench-threads-huge", ["bench", "{model}", "--threads", "100000"], "threads"),
    ("bench-threads-negative", ["bench", "{model}", "--threads", "-3"], "threads"),
    ("bench-seq-too-long", ["bench", "{model}", "--seq", "5000"], f"{MAX_LENGTH}"),
    ("bench-batch-zero", ["bench", "{model}", "--batch", "0"], "batch"),
    ("bench-batch-huge", ["bench", "{model}", "--batch", "100000000000"], "batch"),
    ("bench-iters-zero", ["bench", "{model}", "--iters", "0"], "iters"),
    ("bench-json-is-model", ["bench", "{model}", "--iters", "1", "--json", "{model}"], "same file"),
    ("bench-json-devnull", ["bench", "{model}", "--iters", "1", "--json", "/dev/null"], "not a regular file"),
    ("bench-bad-shape", ["bench", "{model}", "--shape", "input_ids:1xfoo"], "--shape"),
    ("bench-junk", ["bench", "{junk}"], "junk.onnx"),
    ("quantize-no-precision", ["quantize", "{model}", "-o", "{out}/q.onnx"], "--int8"),
    ("quantize-out-is-model", ["quantize", "{model}", "--int8", "-o", "{model}", "--calib", "{notes}"],
     "same file"),
    ("quantize-out-is-calib", ["quantize", "{model}", "--int8", "-o", "{notes}", "--calib", "{notes}"],
     "same file"),
    ("quantize-out-devnull", ["quantize", "{model}", "--int8", "-o", "/dev/null", "--calib", "{notes}"],
     "not a regular file"),
    ("quantize-guard-impossible", ["quantize", "{model}", "--int8", "-o", "{out}/q.onnx", "--calib", "{notes}",
                                   "--guard", "cosine>=2"], "cosine"),
    ("quantize-guard-garbage", ["quantize", "{model}", "--int8", "-o", "{out}/q.onnx", "--calib", "{notes}",
                                "--guard", "speed>=9"], "guard"),
    ("quantize-missing-heldout", ["quantize", "{model}", "--int8", "-o", "{out}/q.onnx", "--calib", "{notes}",
                                  "--heldout", "{out}/held.txt"], "held-out"),
    ("quantize-missing-calib", ["quantize", "{model}", "--int8", "-o", "{out}/q.onnx", "--calib",
                                "{out}/calib.txt"], "calibration"),
    ("quantize-binary-calib", ["quantize", "{model}", "--int8", "-o", "{out}/q.onnx", "--calib", "{binary}"],
     "binary.txt"),
    ("quantize-no-calib", ["quantize", "{model}", "--int8", "-o", "{out}/q.onnx"], "--calib"),
    ("quantize-calib-size-zero", ["quantize", "{model}", "--int8", "-o", "{out}/q.onnx", "--calib", "{notes}",
                                  "--calib-size", "0"], "calib"),
    ("quantize-exclude-nothing", ["quantize", "{model}", "--int8", "-o", "{out}/q.onnx", "--calib", "{notes}",
                                  "--exclude", "NoSuchNode"], "NoSuchNode"),
    ("quantize-threads-huge", ["quantize", "{model}", "--int8", "-o", "{out}/q.onnx", "--calib", "{notes}",
                               "--threads", "100000"], "threads"),
    ("analyze-outliers-json-is-calib", ["analyze", "outliers", "{model}", "--calib", "{notes}", "--json",
                                        "{notes}"], "same file"),
    ("analyze-outliers-missing-calib", ["analyze", "outliers", "{model}", "--calib", "{out}/c.txt"], "c.txt"),
    ("analyze-outliers-junk", ["analyze", "outliers", "{junk}", "--calib", "{notes}"], "junk.onnx"),
    ("analyze-heads-unknown", ["analyze", "heads", "no-such-model"], "unknown model"),
    ("analyze-heads-same-outputs", ["analyze", "heads", "minilm", "-o", "{out}/p.json", "--json",
                                    "{out}/p.json", "--prune", "0.5"], "same file"),
    ("analyze-heads-prune-all", ["analyze", "heads", "minilm", "--prune", "1"], "prune"),
    ("export-unknown", ["export", "no-such-model", "-o", "{out}/m.onnx"], "unknown model"),
    ("export-folder-source", ["export", "{folder}", "-o", "{out}/m.onnx"], "config.json"),
    ("export-out-devnull", ["export", "minilm", "-o", "/dev/null"], "not a regular file"),
    ("export-out-is-folder", ["export", "minilm", "-o", "{out}"], "is a directory"),
    ("export-json-is-output", ["export", "minilm", "-o", "{out}/m.onnx", "--json", "{out}/m.onnx"], "same file"),
    ("export-out-is-plan", ["export", "minilm", "-o", "{bad_plan}", "--plan", "{bad_plan}"], "same file"),
    ("export-bad-plan", ["export", "minilm", "-o", "{out}/m.onnx", "--plan", "{bad_plan}"], "plan"),
    ("export-opset-old", ["export", "minilm", "-o", "{out}/m.onnx", "--opset", "9"], "opset"),
    ("export-atol-negative", ["export", "minilm", "-o", "{out}/m.onnx", "--atol", "-1"], "atol"),
    ("export-bad-softmax", ["export", "minilm", "-o", "{out}/m.onnx", "--softmax", "clipped:1,1"], "gamma"),
    ("export-kv-heads-zero", ["export", "minilm", "-o", "{out}/m.onnx", "--kv-heads", "0"], "kv"),
    # issue 17: paths the OS refuses, outputs inside input folders, unchecked numbers
    ("inspect-json-name-too-long", ["inspect", "{model}", "--json", LONG], "File name too long"),
    ("run-out-name-too-long", ["run", "{model}", "--text", "hi", "--out", LONG], "File name too long"),
    ("bench-json-name-too-long", ["bench", "{model}", "--iters", "1", "--json", LONG], "File name too long"),
    ("generate-json-name-too-long", ["generate", "{model}", "--prompt-ids", "4", "--max-new-tokens", "1",
                                     "--json", LONG], "File name too long"),
    ("eval-json-name-too-long", ["eval", "passkey", "{model}", "--json", LONG], "File name too long"),
    ("kv-heads-out-name-too-long", ["analyze", "kv-heads", "{source}", "--method", "razor", "-o", LONG],
     "File name too long"),
    ("kv-heads-save-pattern-name-too-long", ["analyze", "kv-heads", "{source}", "--method", "razor", "-o",
                                             "{out}/p.json", "--save-pattern", LONG], "File name too long"),
    ("kv-heads-out-in-source", ["analyze", "kv-heads", "{source}", "--method", "razor", "-o",
                                "{source}/config.json"], "lies inside input folder"),
    ("kv-heads-patterns-loop", ["analyze", "kv-heads", "{source}", "--method", "pattern", "--patterns", "{loop}",
                                "-o", "{out}/p.json"], "Too many levels of symbolic links"),
    ("kv-heads-no-method", ["analyze", "kv-heads", "{source}", "-o", "{out}/p.json"],
     "Missing option '--method'. Choose from: pattern, razor, duo"),
    ("kv-heads-seed-negative", ["analyze", "kv-heads", "{source}", "--method", "duo", "--seed", "-1", "-o",
                                "{out}/p.json"], "--seed must be a whole number >= 0, got -1"),
    ("analyze-outliers-calib-loop", ["analyze", "outliers", "{model}", "--calib", "{loop}"], "loop"),
    ("analyze-heads-random-negative", ["analyze", "heads", "minilm", "--random", "-1"],
     "--random must be a whole number >= 0, got -1"),
    ("export-plan-loop", ["export", "minilm", "-o", "{out}/m.onnx", "--plan", "{loop}"],
     "Too many levels of symbolic links"),
    ("export-checkpoint-loop", ["export", "efficientvit-m0", "-o", "{out}/v.onnx", "--checkpoint", "{loop}"],
     "loop"),
    ("quantize-calib-loop", ["quantize", "{model}", "--int8", "-o", "{out}/q.onnx", "--calib", "{loop}"], "loop"),
    ("eval-trials-huge", ["eval", "passkey", "{model}", "--trials", "100000"], "--trials must lie in 1..10000"),
    ("eval-context-empty-item", ["eval", "passkey", "{model}", "--context", "128,,256"], "'' is not a whole number"),
    ("run-npz-loop", ["run", "{model}", "--inputs", "{loop}"], "Too many levels of symbolic links"),
    ("run-top-zero", ["run", "{model}", "--image", "{notes}", "--top", "0"], "--top must be a whole number >= 1"),
]


def _lane(case: tuple) -> object:
    """A case whose command loads torch in its fresh process (export, analyze heads / kv-heads)
    takes seconds: it runs in the slow lane."""
    torch_side = case[1][0] == "export" or case[1][:2] in (["analyze", "heads"], ["analyze", "kv-heads"])
    return pytest.param(*case, id=case[0], marks=pytest.mark.slow if torch_side else ())


@pytest.mark.parametrize("case, argv, message", [_lane(c) for c in CLI_CASES])
def test_cli_case_ends_cleanly(inputs, tmp_path, case, argv, message):
    out, tmpdir = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    tmpdir.mkdir()
    args = [a.format(out=out, **inputs) for a in argv]
    watched = (inputs["folder"], inputs["model"].parent, out, tmpdir)
    before = snapshot(*watched)
    result = subprocess.run([sys.executable, "-m", "edgert", *args], capture_output=True, text=True,
                            cwd=out, timeout=300,
                            env={**user_env(), "TMPDIR": str(tmpdir), "COLUMNS": "80"})
    assert_one_error(result, message)
    assert not [line for line in result.stderr.splitlines() if ORT_OR_TORCH_LOG.search(line)], result.stderr
    assert snapshot(*watched) == before, "a file was created, changed or removed"
