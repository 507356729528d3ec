"""SIGINT and SIGTERM at several points of export, quantize and analyze, and full disks in every
command that writes: each ends in one `Error:` line and exit 2, and leaves no file behind (not in
the output folder, not in $TMPDIR) and its inputs unchanged."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, assert_one_error
from test_hostile import make_text_model, snapshot, user_env

CALIB = ROOT / "quant" / "data" / "minilm_calib.txt"
SIGNALS = [signal.SIGINT, signal.SIGTERM]


def temp_entries(tmpdir: Path) -> list[Path]:
    return list(tmpdir.iterdir())


def printed(text: str):
    """A point reached once the command has printed `text` on stderr (its progress lines)."""
    def reached(out: Path, tmp: Path, stderr: list[str]) -> bool:
        return any(text in line for line in stderr)
    reached.__name__ = f"printed {text!r}"
    return reached


def temp_output_exists(out: Path, tmp: Path, stderr: list[str]) -> bool:
    """export/analyze: the atomic output's temporary file is being written."""
    return any(p.name.startswith(".") and p.name.endswith(".tmp") for p in out.iterdir())


def temp_output_written(out: Path, tmp: Path, stderr: list[str]) -> bool:
    """export: the traced graph is in the temporary file (validation comes next)."""
    return any(p.name.endswith(".tmp") and p.stat().st_size > 2**20 for p in out.iterdir())


def work_files(count: int):
    """quantize/analyze: at least `count` files in edgert's temporary folder under $TMPDIR."""
    def reached(out: Path, tmp: Path, stderr: list[str]) -> bool:
        return sum(1 for d in temp_entries(tmp) if d.is_dir() for f in d.rglob("*") if f.is_file()) >= count
    reached.__name__ = f"work_files_{count}"
    return reached


def work_dir_exists(out: Path, tmp: Path, stderr: list[str]) -> bool:
    return any(p.is_dir() and p.name.startswith("edgert-") for p in temp_entries(tmp))


class Sandbox:
    """An output folder and a $TMPDIR of their own, and a snapshot of the inputs' folders."""

    def __init__(self, tmp_path: Path, inputs: list[Path]):
        self.out, self.tmpdir = tmp_path / "out", tmp_path / "tmp"
        self.out.mkdir()
        self.tmpdir.mkdir()
        self.watched = sorted({p.parent for p in inputs})
        self.before = snapshot(*self.watched)
        self.env = {**user_env(), "TMPDIR": str(self.tmpdir)}

    def argv(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "edgert", *[a.format(out=self.out) for a in args]]

    def check(self, returncode: int, stderr: str, last_line: str) -> None:
        """Exit 2, one Error: line (the last, starting with `last_line`), nothing left behind."""
        assert assert_one_error(subprocess.CompletedProcess([], returncode, "", stderr)).startswith(last_line), stderr
        assert list(self.out.iterdir()) == [], "files left in the output folder"
        assert temp_entries(self.tmpdir) == [], "files left in $TMPDIR"
        assert snapshot(*self.watched) == self.before, "an input changed"


def run_until(args: list[str], point, sig, tmp_path: Path, inputs: list[Path]):
    """Start `edgert ARGS`, send `sig` once `point(out, tmp, stderr lines)` holds, and check
    what is left."""
    box = Sandbox(tmp_path, inputs)
    proc = subprocess.Popen(box.argv(args), cwd=box.out, env=box.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not point(box.out, box.tmpdir, list(stderr)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the command ended before {point.__name__}: {''.join(stderr)}"
    proc.send_signal(sig)
    proc.wait(timeout=120)
    reader.join(timeout=30)
    proc.stdout.close()
    box.check(proc.returncode, "".join(stderr), "Error: interrupted; nothing was written")


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point", [printed("export: loading model"), temp_output_exists, temp_output_written],
                         ids=["loading", "tracing", "validating"])
def test_interrupted_export(tmp_path, sig, point):
    run_until(["export", "minilm", "-o", "{out}/m.onnx", "--json", "{out}/m.json"], point, sig, tmp_path, [CALIB])


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point", [work_dir_exists, work_files(1), work_files(3)],
                         ids=["preprocessing", "calibrating", "quantizing"])
def test_interrupted_quantize(minilm_st, tmp_path, sig, point):
    run_until(["quantize", str(minilm_st), "--int8", "--mode", "dynamic", "-o", "{out}/q.onnx",
               "--guard", "cosine>=0.99"], point, sig, tmp_path, [minilm_st])


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=["SIGINT", "SIGTERM"])
def test_interrupted_analyze_outliers(minilm_st, tmp_path, sig):
    run_until(["analyze", "outliers", str(minilm_st), "--calib", str(CALIB), "--calib-size", "64",
               "--json", "{out}/o.json"], work_files(1), sig, tmp_path, [minilm_st, CALIB])


@pytest.mark.slow
@pytest.mark.parametrize("sig", SIGNALS, ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("point", [printed("analyze heads: loading"), printed("scoring on examples: 16/")],
                         ids=["loading", "scoring"])
def test_interrupted_analyze_heads(tmp_path, sig, point):
    run_until(["analyze", "heads", "minilm", "--prune", "0.25", "-o", "{out}/plan.json"],
              point, sig, tmp_path, [CALIB])


# ---------------------------------------------------------------------------------------------
# full disks: a file-size limit (RLIMIT_FSIZE) makes every write past it fail with EFBIG, as a
# full disk fails with ENOSPC; both must end in one line with nothing left behind.

def limit_file_size(size: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def run_with_small_disk(args: list[str], tmp_path: Path, inputs: list[Path], size: int):
    box = Sandbox(tmp_path, inputs)
    result = subprocess.run(box.argv(args), cwd=box.out, env=box.env, capture_output=True, text=True,
                            timeout=600, preexec_fn=limit_file_size(size))
    box.check(result.returncode, result.stderr, "Error: no space left")


@pytest.fixture
def text_model(tmp_path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    return make_text_model(folder / "text.onnx")


@pytest.mark.parametrize("args", [
    ["inspect", "{model}", "--json", "{out}/info.json"],
    ["bench", "{model}", "--iters", "2", "--warmup", "0", "--seq", "8", "--json", "{out}/b.json"],
    ["run", "{model}", "--text", "hello world", "--out", "{out}/e.npy"],
    ["analyze", "outliers", "{model}", "--calib", "{calib}", "--json", "{out}/o.json"],
], ids=["inspect", "bench", "run", "analyze-outliers"])
def test_full_disk_small_outputs(text_model, tmp_path, args):
    calib = text_model.parent / "calib.txt"
    calib.write_text("hello world\nedge inference\n")
    args = [a.replace("{model}", str(text_model)).replace("{calib}", str(calib)) for a in args]
    run_with_small_disk(args, tmp_path, [text_model, calib], size=64)


@pytest.mark.slow
def test_full_disk_export(tmp_path):
    run_with_small_disk(["export", "minilm", "-o", "{out}/m.onnx"], tmp_path, [CALIB], size=2**20)


@pytest.mark.slow
def test_full_disk_quantize(minilm_st, tmp_path):
    run_with_small_disk(["quantize", str(minilm_st), "--int8", "--mode", "dynamic", "-o", "{out}/q.onnx"],
                        tmp_path, [minilm_st], size=2**20)


def test_written_files_get_umask_permissions(text_model, tmp_path):
    out = tmp_path / "info.json"
    old = os.umask(0o027)
    try:
        result = subprocess.run([sys.executable, "-m", "edgert", "inspect", str(text_model), "--json", str(out)],
                                capture_output=True, text=True, timeout=120)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------------------------------------
# a signal once the output is complete: the Error: line says so (issue 17)

LATE_SIGNAL = """
import os, signal, sys
{setup}
from edgert.cli import main
sys.argv = ["edgert", *sys.argv[1:]]
main()
"""
# os.replace renames the finished output into place; the signal lands right after it.
AFTER_RENAME = """
rename = os.replace
def rename_then_signal(src, dst):
    rename(src, dst)
    os.kill(os.getpid(), signal.SIGTERM)
os.replace = rename_then_signal
"""
# An object in __main__ is deleted while Python shuts down, after it has restored the default
# SIGTERM handler: a signal then ended the process with 143 and no Error: line.
DURING_SHUTDOWN = """
class Late:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
late = Late()
"""


def run_with_late_signal(setup: str, text_model: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "info.json"
    script = LATE_SIGNAL.format(setup=setup)
    result = subprocess.run([sys.executable, "-c", script, "inspect", str(text_model), "--json", str(out)],
                            capture_output=True, text=True, timeout=120, env=user_env())
    return result, out


def test_a_signal_after_the_output_is_renamed_says_it_is_complete(text_model, tmp_path):
    result, out = run_with_late_signal(AFTER_RENAME, text_model, tmp_path)
    assert_one_error(result, f"Error: interrupted after writing {out} (complete); nothing else was written")
    assert json.loads(out.read_text())["inputs"]  # the whole report is there
    assert sorted(p.name for p in tmp_path.iterdir()) == ["info.json", "inputs"]  # no temporary file left


def test_a_signal_during_shutdown_cannot_land(text_model, tmp_path):
    """A command ends without Python's shutdown (after flushing stdout and stderr), so no signal
    can arrive once Python has given up its handlers."""
    result, out = run_with_late_signal(DURING_SHUTDOWN, text_model, tmp_path)
    assert result.returncode == 0, (result.returncode, result.stderr)
    assert json.loads(out.read_text())["inputs"] and "Error" not in result.stderr
