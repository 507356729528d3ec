"""Paths a hostile user gives (issue 17): an output that is an input or lies inside an input
folder, names the OS refuses, symlink loops, no usable temporary folder, and files that ONNX
Runtime's telemetry would leave behind. Each ends in one clean error (or no trace at all)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from edgert._io import atomic_output, check_output_path, check_outputs, input_file, reserve_temporary
from edgert.errors import OutputPathError, PlanError

from conftest import assert_one_error, invoke
from test_hostile import make_text_model, snapshot, user_env


@pytest.fixture
def source(tmp_path) -> Path:
    """A model folder as a user has it: config.json and weights."""
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_an_output_inside_an_input_folder_is_refused(source, tmp_path):
    (source / "sub").mkdir()
    for output in (source / "config.json", source / "model.safetensors", source / "new.json",
                   source / "sub" / ".." / "plan.json"):
        with pytest.raises(OutputPathError, match="lies inside input folder .*llama; choose a path outside it"):
            check_output_path(output, inputs=[source])
    assert check_output_path(tmp_path / "plan.json", inputs=[source]) == tmp_path / "plan.json"
    sibling = tmp_path / "llama2"  # a name that merely starts like the input folder's
    sibling.mkdir()
    assert check_output_path(sibling / "plan.json", inputs=[source])


def test_symlinks_are_resolved_before_outputs_and_inputs_are_compared(source, tmp_path):
    (tmp_path / "link").symlink_to(source)  # the input named through a link
    with pytest.raises(OutputPathError, match="lies inside input folder"):
        check_output_path(source / "plan.json", inputs=[tmp_path / "link"])
    with pytest.raises(OutputPathError, match="lies inside input folder"):
        check_output_path(tmp_path / "link" / "plan.json", inputs=[source])
    (tmp_path / "out.json").symlink_to(source / "config.json")  # an output that points into the input
    with pytest.raises(OutputPathError, match="lies inside input folder"):
        check_output_path(tmp_path / "out.json", inputs=[source])
    with pytest.raises(OutputPathError, match="is the same file as input"):
        check_output_path(tmp_path / "out.json", inputs=[source / "config.json"])
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(OutputPathError, match="same file"):  # a loop is compared as written, never resolved
        check_outputs([tmp_path / "a.json"], inputs=[loop, tmp_path / "a.json"])


def test_analyze_kv_heads_will_not_write_into_its_source(source):
    before = snapshot(source)
    result = invoke("analyze", "kv-heads", source, "--method", "razor", "-o", source / "config.json")
    assert_one_error(result, f"output {source / 'config.json'} lies inside input folder {source}")
    assert snapshot(source) == before


def test_analyze_outliers_will_not_write_into_its_calibration_folder(tmp_path):
    model = make_text_model(tmp_path / "text.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    result = invoke("analyze", "outliers", model, "--calib", calib, "--json", calib / "o.json")
    assert_one_error(result, "lies inside input folder")
    assert list(calib.iterdir()) == []


@pytest.mark.parametrize("name", ["x" * 300, "x" * 250, "é" * 200])
def test_names_the_os_refuses_and_legal_long_ones(tmp_path, name):
    """A component over 255 bytes is one error naming the path; a 250-byte one is written (its
    temporary twin carries a shortened name)."""
    path = tmp_path / f"{name}.json"
    legal = len(os.fsencode(path.name)) <= 255
    if legal:
        with atomic_output(path) as tmp:
            tmp.write_text("{}")
        assert path.read_text() == "{}"
    else:
        with pytest.raises(OutputPathError, match="cannot write .*: File name too long"):
            with atomic_output(path):
                pass
    assert [p.name for p in tmp_path.iterdir()] == ([path.name] if legal else [])


def test_temporary_files_in_a_folder_the_os_refuses(tmp_path):
    with pytest.raises(OutputPathError, match="cannot create a temporary file in .*: No such file or directory"):
        reserve_temporary(tmp_path / "missing", ".x.")


def test_input_files_name_what_is_wrong(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for path, message in [(tmp_path / "none", "pattern file not found"),
                          (tmp_path, "pattern file is a folder, not a file"),
                          (loop, "cannot read pattern file .*loop: Too many levels of symbolic links"),
                          (tmp_path / ("x" * 300), "cannot read pattern file .*: File name too long"),
                          ("/dev/zero", "pattern file is not a regular file")]:
        with pytest.raises(PlanError, match=message):
            input_file(path, "pattern file", PlanError)


# ---------------------------------------------------------------------------------------------
# the whole command, as a user's shell starts it

def run(args: list[str], tmp_path: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgert", *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, **kwargs)


def test_a_file_size_limit_of_zero_is_no_traceback(tmp_path):
    """`ulimit -f 0` makes every temporary-folder candidate unusable (tempfile writes a byte to
    each): a command that needs none still runs; one that needs one says so in one line."""
    model = make_text_model(tmp_path / "text.onnx")
    (tmp_path / "calib.txt").write_text("hello world\n")
    no_writes = dict(preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0)), env=user_env())
    result = run(["inspect", str(model)], tmp_path, **no_writes)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    result = run(["analyze", "outliers", str(model), "--calib", "calib.txt"], tmp_path, **no_writes)
    assert_one_error(result, "no usable folder for temporary files")


def test_onnx_runtime_leaves_no_telemetry_files(tmp_path):
    """ONNX Runtime's telemetry wrote $TMPDIR/.ses and ~/.cache/Microsoft/DeveloperTools/... on
    every command that imports it; commands switch it off unless the user chose otherwise."""
    model = make_text_model(tmp_path / "text.onnx")
    home, tmpdir = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmpdir.mkdir()
    env = {k: v for k, v in user_env().items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), TMPDIR=str(tmpdir))
    result = run(["run", str(model), "--text", "hello world"], tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert sorted(home.rglob("*")) == [] and sorted(tmpdir.rglob("*")) == []


@pytest.mark.parametrize("args", [["--version"], ["--help"], ["inspect", "{model}"],
                                  ["run", "{model}", "--text", "hi"]], ids=["version", "help", "inspect", "run"])
def test_a_full_disk_under_stdout_is_one_error_line(tmp_path, args):
    """stdout redirected to a full disk (/dev/full): --version and --help wrote outside every
    error handler and ended in a traceback."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    model = make_text_model(tmp_path / "text.onnx")
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "edgert", *[a.format(model=model) for a in args]],
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=300, env=user_env())
    assert_one_error(subprocess.CompletedProcess(result.args, result.returncode, "", result.stderr),
                     "no space left on the device")
