"""Vision check: EfficientViT-M0…M5 and SHViT-S1…S4 as edgert exports them (FP32 with edgert
attention ops, FP32 plain ONNX, INT8 from `edgert quantize`) against timm's own graphs
(timm + torch.onnx.export) and torch eager, with mobilenetv3_large_100 as the reference CNN;
then the two digit classifiers edgert trains (scripts/train_vision_digits.py), FP32 vs INT8.

    .venv/bin/python bench/vision_check.py [--threads 2] [--iters 300] [--models efficientvit-m0,...]

timm runs in its own environment (bench/.venv-timm, see bench/timm_vision_peer.py). Every ONNX
Runtime graph of one model is timed in the same process, interleaved in blocks, at each batch;
ratios are against the timm-exported FP32 graph. The random-init models get the same weights
in edgert and timm (BatchNorm statistics randomised, so every branch contributes), and the
check prints how far edgert's graph is from timm's forward. Writes its section of
bench/RESULTS.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine, write_section  # noqa: E402

from edgert.cpu import cpu_isa  # noqa: E402
from edgert.exporters.export import export  # noqa: E402
from edgert.models.vision import create_model, randomize_statistics  # noqa: E402
from edgert.models.vision_configs import VARIANTS  # noqa: E402
from edgert.latency import LatencyStats, time_interleaved  # noqa: E402
from edgert.quant.quantize import QuantConfig, quantize_model  # noqa: E402
from edgert.session import Session, session_options  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / "_work" / "vision"
TIMM_PYTHON = HERE / ".venv-timm" / "bin" / "python"
TIMM_INSTALL = ("PIP_FIND_LINKS=' ' PIP_CONSTRAINT=' ' bench/.venv-timm/bin/pip install torch==2.13.0 torchvision timm "
                "onnxscript")
DIGITS = ROOT / "examples" / "digits"
REFERENCE_CNN = "mobilenetv3_large_100"
RESOLUTION = 224
BATCHES = (1, 16)
EAGER_ITERS = 30  # torch eager is 2-4x slower than ONNX Runtime here; its median settles sooner than that matters
KINDS = ("edgert FP32", "edgert FP32 plain", "edgert INT8", "timm export FP32")
console = Console()


def build(name: str, threads: int) -> dict:
    """Export `name` three ways (weights randomised once and shared with timm through a
    safetensors file) and quantize it with the digit calibration images; returns paths and
    the INT8 report."""
    from safetensors.torch import save_file

    model = randomize_statistics(create_model(VARIANTS[name], seed=0), seed=0)
    weights = WORK / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    paths = graph_paths(name)
    start = time.perf_counter()
    export(name, paths["edgert FP32"], checkpoint=weights, resolution=RESOLUTION)
    export(name, paths["edgert FP32 plain"], checkpoint=weights, resolution=RESOLUTION, custom_ops=False)
    export_s = time.perf_counter() - start
    result = quantize_model(paths["edgert FP32"], paths["edgert INT8"], QuantConfig(calib_size=64),
                            calib=DIGITS / "calib", heldout=DIGITS / "heldout", threads=threads)
    return {"paths": paths, "export_s": export_s, "int8": result}


def timm_peer(names: list[str], threads: int, iters: int) -> dict:
    """timm's exports, logits and eager timings from bench/.venv-timm (one JSON line)."""
    if not TIMM_PYTHON.exists():
        sys.exit(f"timm's environment is missing; create it with:\n  python3 -m venv bench/.venv-timm && {TIMM_INSTALL}")
    np.save(WORK / "pixels.npy", np.random.default_rng(0).standard_normal((4, 3, RESOLUTION, RESOLUTION),
                                                                          dtype=np.float32))
    for stale in WORK.glob("*.safetensors"):
        if stale.stem not in names:
            stale.unlink()
    command = [str(TIMM_PYTHON), str(HERE / "timm_vision_peer.py"), str(WORK), "--threads", str(threads),
               "--iters", str(min(iters, EAGER_ITERS)), "--batches", ",".join(map(str, BATCHES)), "--resolution", str(RESOLUTION)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"timm peer failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def graph_paths(name: str) -> dict[str, Path]:
    """Where build() and the timm peer put `name`'s graphs."""
    if name == REFERENCE_CNN:
        return {"timm export FP32": WORK / f"{name}.timm.onnx"}
    return {"edgert FP32": WORK / f"{name}.onnx", "edgert FP32 plain": WORK / f"{name}.plain.onnx",
            "edgert INT8": WORK / f"{name}.int8.onnx", "timm export FP32": WORK / f"{name}.timm.onnx"}


def time_in_fresh_process(name: str, threads: int, iters: int) -> dict[int, dict[str, LatencyStats]]:
    """time_graphs for `name` in a new Python process. In the process that has just exported
    and quantized ten models, whichever session was created first ran 5-12% slower than the
    same graph timed in a fresh process (where edgert's and timm's FP32 graphs tie)."""
    done = subprocess.run([sys.executable, __file__, "--time-model", name, "--threads", str(threads),
                           "--iters", str(iters)], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"timing {name} failed:\n{done.stderr[-2000:]}")
    timings = json.loads(done.stdout.strip().splitlines()[-1])
    return {int(b): {k: LatencyStats(**v) for k, v in per.items()} for b, per in timings.items()}


def time_graphs(paths: dict[str, Path], threads: int, iters: int) -> dict[int, dict[str, LatencyStats]]:
    """p50 etc. of every graph at each batch, all of one model interleaved in blocks."""
    sessions = {kind: Session(path, options=session_options(threads, spin=False))
                for kind, path in paths.items() if path.exists()}
    timings = {}
    for batch in BATCHES:
        pixels = np.random.default_rng(batch).standard_normal((batch, 3, RESOLUTION, RESOLUTION), dtype=np.float32)
        runners = [partial(s.run_unchecked, {s.input_names[0]: pixels}) for s in sessions.values()]
        count = iters if batch == 1 else max(10, iters // 8)
        samples = time_interleaved(runners, iters=count, warmup=3)
        timings[batch] = {kind: LatencyStats.from_seconds(s) for kind, s in zip(sessions, samples)}
    return timings


def relative_diff(path: Path, logits: list) -> float:
    """max |edgert - timm| / max |timm| on the peer's pixels."""
    want = np.asarray(logits, np.float32)
    got = Session(path).run({"pixel_values": np.load(WORK / "pixels.npy")})["logits"]
    return float(np.abs(got - want).max() / np.abs(want).max())


def trained(name: str, threads: int, iters: int) -> dict:
    """A digit classifier edgert trained: FP32 vs INT8 accuracy and speed at its resolution."""
    checkpoint = DIGITS / f"{name}.safetensors"
    fp32, int8 = WORK / f"{name}.digits.onnx", WORK / f"{name}.digits.int8.onnx"
    exported = export(name, fp32, checkpoint=checkpoint)
    result = quantize_model(fp32, int8, QuantConfig(calib_size=64), calib=DIGITS / "calib",
                            heldout=DIGITS / "heldout", threads=threads)
    resolution = exported.manifest.extra["image"]["resolution"]
    sessions = [Session(p, options=session_options(threads, spin=False)) for p in (fp32, int8)]
    speed = {}
    for batch in BATCHES:
        pixels = np.random.default_rng(batch).standard_normal((batch, 3, resolution, resolution), dtype=np.float32)
        fp, q = time_interleaved([partial(s.run_unchecked, {"pixel_values": pixels}) for s in sessions],
                                 iters=iters, warmup=3)
        speed[batch] = LatencyStats.from_seconds(fp).p50 / LatencyStats.from_seconds(q).p50
    return {"resolution": resolution, "accuracy": result.accuracy, "speedup": speed,
            "float_nodes": len(result.float_nodes), "kernel": result.kernel.label}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--models", default=",".join(VARIANTS), help="comma-separated variants")
    parser.add_argument("--no-write", action="store_true", help="print the tables only (smoke runs)")
    parser.add_argument("--time-model", help=argparse.SUPPRESS)  # internal: time one model's graphs, print JSON
    args = parser.parse_args()
    if args.time_model:
        from dataclasses import asdict

        timings = time_graphs(graph_paths(args.time_model), args.threads, args.iters)
        print(json.dumps({b: {k: asdict(v) for k, v in per.items()} for b, per in timings.items()}))
        return
    names = args.models.split(",")
    WORK.mkdir(parents=True, exist_ok=True)
    isa = cpu_isa()
    console.print(f"CPU instruction sets: {', '.join(isa.names)} ({isa.int8_class}); {args.threads} threads")

    built = {}
    for name in names:
        console.print(f"[bold]{name}[/]: export x2 + quantize")
        built[name] = build(name, args.threads)
    console.print("[bold]timm[/]: export + eager timing in bench/.venv-timm")
    peer = timm_peer(names, args.threads, args.iters)
    rows = {}
    for name in [*names, REFERENCE_CNN]:
        console.print(f"[bold]{name}[/]: timing")
        rows[name] = time_in_fresh_process(name, args.threads, args.iters)
    digits = {name: trained(name, args.threads, args.iters) for name in ("efficientvit-m0", "shvit-s1")
              if (DIGITS / f"{name}.safetensors").exists()}

    body = report(names, built, peer, rows, digits, args)
    console.print(body)
    (WORK / "vision_check.json").write_text(json.dumps(raw(names, built, peer, rows, digits), indent=1))
    if not args.no_write:
        write_section("vision_check", body)


def report(names, built, peer, rows, digits, args) -> str:
    """The RESULTS.md section: latency table, INT8 accuracy, the trained models."""
    lines = ["## Vision: EfficientViT-M / SHViT vs timm (ONNX Runtime CPU)", "",
             f"Machine: {machine()}. {args.threads} threads, {RESOLUTION} px, p50 latency in ms; every "
             "ONNX Runtime graph of a model timed in one fresh process, interleaved in blocks "
             f"({args.iters} calls at batch 1, {max(10, args.iters // 8)} at batch 16); torch eager "
             f"(timm, {min(args.iters, EAGER_ITERS)} calls) timed in timm's own process right after its export. Ratio: timm export p50 / "
             "this graph's p50 (above 1: faster than timm's graph). Random-init weights, identical in "
             "edgert and timm.", "",
             "Command: `.venv/bin/python bench/vision_check.py` "
             f"(timm {next(iter(peer.values()))['timm_version']} in bench/.venv-timm).", ""]
    header = "| model | batch | " + " | ".join(f"{k} ms (x)" for k in KINDS) + " | torch eager ms |"
    lines += [header, "|" + "---|" * (len(KINDS) + 3)]
    for name in [*names, REFERENCE_CNN]:
        for batch in BATCHES:
            stats = rows[name][batch]
            timm_ms = stats["timm export FP32"].p50
            cells = [f"{stats[k].p50:.2f} ({timm_ms / stats[k].p50:.2f}x)" if k in stats else "—" for k in KINDS]
            eager = float(np.median(peer[name]["eager_ms"][str(batch)]))
            lines.append(f"| {name} | {batch} | " + " | ".join(cells) + f" | {eager:.2f} |")
    lines += ["", "INT8 (`edgert quantize`, 64 calibration images from examples/digits/calib, "
              "resized to 224 px; judged on the 360 held-out digit images): speedup over edgert FP32 "
              "at each batch, top-1 agreement with FP32, logits SQNR; and edgert FP32 vs timm's "
              "forward (max relative difference of the logits, 4 random images).", "",
              "| model | INT8 speedup b1 | INT8 speedup b16 | top-1 agreement | SQNR dB | nodes kept float "
              "| edgert vs timm rel. diff |", "|---|---|---|---|---|---|---|"]
    for name in names:
        acc, stats = built[name]["int8"].accuracy, rows[name]
        speedups = [stats[b]["edgert FP32"].p50 / stats[b]["edgert INT8"].p50 for b in BATCHES]
        diff = relative_diff(built[name]["paths"]["edgert FP32"], peer[name]["logits"])
        lines.append(f"| {name} | {speedups[0]:.2f}x | {speedups[1]:.2f}x | {acc.top1_agreement:.4f} | "
                     f"{acc.sqnr_db:.1f} | {len(built[name]['int8'].float_nodes)} | {diff:.1e} |")
    if digits:
        lines += ["", "Trained digit classifiers (examples/digits, 10 classes, 360 held-out images "
                  "in examples/digits/heldout), FP32 vs INT8 at their own resolution:", "",
                  "| model | px | FP32 top-1 | INT8 top-1 | top-1 agreement | SQNR dB | INT8 speedup b1 "
                  "| INT8 speedup b16 |", "|---|---|---|---|---|---|---|---|"]
        for name, d in digits.items():
            acc = d["accuracy"]
            lines.append(f"| {name} | {d['resolution']} | {acc.fp32_top1:.4f} | {acc.int8_top1:.4f} | "
                         f"{acc.top1_agreement:.4f} | {acc.sqnr_db:.1f} | {d['speedup'][1]:.2f}x | "
                         f"{d['speedup'][16]:.2f}x |")
    return "\n".join(lines)


def raw(names, built, peer, rows, digits) -> dict:
    """Everything measured, for bench/_work/vision/vision_check.json."""
    from dataclasses import asdict

    return {"latency_ms": {name: {b: {k: asdict(s) for k, s in stats.items()} for b, stats in per.items()}
                           for name, per in rows.items()},
            "eager_ms": {name: p["eager_ms"] for name, p in peer.items()},
            "int8": {name: asdict(built[name]["int8"].accuracy) for name in names},
            "digits": {name: {**d, "accuracy": asdict(d["accuracy"])} for name, d in digits.items()}}


if __name__ == "__main__":
    main()
