"""INT8 check: edgert quantize (with the INT8 kernel configuration it chooses for this CPU's
instruction sets) vs ONNX Runtime's quantize_dynamic / quantize_static defaults and Optimum's
avx512_vnni static config on all-MiniLM-L6-v2 — held-out cosine to FP32 and speedup over FP32,
timed interleaved in one process.

    .venv/bin/python bench/quantize_check.py [--threads 2] [--iters 100] [--no-optimum] [--no-write]

Writes its section of bench/RESULTS.md (unless --no-write, for smoke runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from optimum_peer import optimum_export, optimum_quantize  # noqa: E402
from results import machine, write_section  # noqa: E402

from edgert.cpu import cpu_isa  # noqa: E402
from edgert.exporters import export  # noqa: E402
from edgert.latency import LatencyStats, time_interleaved  # noqa: E402
from edgert.quant.calib import BUNDLED, load_calibration  # noqa: E402
from edgert.quant.fuse import fuse_for_ort_cpu  # noqa: E402
from edgert.quant.quantize import Guard, QuantConfig, quantize_model  # noqa: E402
from edgert.session import Session, session_options  # noqa: E402
from edgert.synth import synthesize_inputs  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
CALIB, HELDOUT = BUNDLED["minilm"]
SHAPES = ((1, 128), (8, 128), (1, 32), (1, 256))
console = Console()


def ort_defaults(fp32: Path, calib_samples) -> dict[str, Path]:
    """What a user gets from ONNX Runtime's quantization API with default arguments."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._items = iter(calib_samples)

        def get_next(self):
            return next(self._items, None)

    dynamic, static = WORK / "ort_dynamic_default.onnx", WORK / "ort_static_default.onnx"
    quantize_dynamic(str(fp32), str(dynamic))
    quantize_static(str(fp32), str(static), Reader())
    return {"ORT quantize_dynamic (defaults)": dynamic, "ORT quantize_static (defaults)": static}


def embeddings(session: Session, texts: list[str], tokenize) -> np.ndarray:
    name = "sentence_embedding"
    rows = []
    for text in texts:
        feeds = tokenize([text])
        rows.append(session.run({s.name: feeds[s.name] for s in session.inputs}, [name])[name][0])
    return np.stack(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--calib-size", type=int, default=128)
    parser.add_argument("--no-optimum", action="store_true",
                        help="leave Optimum out (it needs its own virtual environment)")
    parser.add_argument("--no-write", action="store_true", help="print the table only (smoke runs)")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    options = lambda: session_options(args.threads, spin=False)  # noqa: E731

    isa = cpu_isa()
    console.print(f"CPU instruction sets: {', '.join(isa.names)} ({isa.int8_class})")
    console.print("exporting FP32 with edgert (--no-optimize: the portable, unfused graph) …")
    fp32 = export("minilm", WORK / "edgert_st.onnx", task="sentence-embedding", optimize=False).path
    reference = Session(fp32, options=options())
    tokenize = reference.tokenizer
    calib_samples = load_calibration(CALIB, reference, size=args.calib_size)
    heldout = [line.strip() for line in HELDOUT.read_text().splitlines() if line.strip()]

    models: dict[str, Path] = {}
    notes: dict[str, str] = {}
    guard = Guard.parse("cosine>=0.99")
    for label, config in (
        ("edgert dynamic per-channel {kernel}, guard cosine>=0.99",
         QuantConfig(mode="dynamic", guard=guard, calib_size=args.calib_size)),
        ("edgert dynamic per-channel {kernel}, --no-fuse",
         QuantConfig(mode="dynamic", fuse=False, calib_size=args.calib_size)),
        ("edgert static per-channel {kernel}, guard cosine>=0.99",
         QuantConfig(mode="static", guard=guard, calib_size=args.calib_size)),
        ("edgert static per-channel {kernel}, no guard", QuantConfig(mode="static", calib_size=args.calib_size)),
    ):
        console.print(f"{label.format(kernel='')} …")
        result = quantize_model(fp32, WORK / f"edgert_{len(models)}.onnx", config, threads=args.threads)
        label = label.format(kernel=result.kernel.label)
        models[label] = result.path
        notes[label] = f"{len(result.float_nodes)} nodes kept in float; {kernel_note(result)}"
        if any(result.fused.values()):
            notes[label] += "; fused " + ", ".join(f"{n} {op}" for op, n in result.fused.items())
    fused_fp32 = WORK / "edgert_st_fused_fp32.onnx"
    fuse_for_ort_cpu(fp32, fused_fp32, skip_layer_norm=False)
    models["FP32, fused as edgert export and quantize fuse (no INT8)"] = fused_fp32
    notes["FP32, fused as edgert export and quantize fuse (no INT8)"] = "how much of the speedup is fusion alone"
    models.update(ort_defaults(fp32, calib_samples))
    optimum_fp32 = None if args.no_optimum else optimum_export("sentence_transformers", WORK)
    if optimum_fp32:
        int8 = optimum_quantize(optimum_fp32[0].parent, CALIB, args.calib_size)
        if int8:
            models["Optimum ORTQuantizer avx512_vnni static (per-channel)"] = int8
            notes["Optimum ORTQuantizer avx512_vnni static (per-channel)"] = "its own export and op list"

    want = embeddings(reference, heldout, tokenize)
    sessions = {"FP32 (edgert export --no-optimize)": reference}
    accuracy = {}
    for label, path in models.items():
        session = Session(path, options=options())
        sessions[label] = session
        got = embeddings(session, heldout, tokenize)
        cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        accuracy[label] = (float(cosine.mean()), float(cosine.min()))

    timings = {}
    for batch, seq in SHAPES:
        iters = args.iters if batch == 1 else max(20, args.iters // 4)
        runners = []
        for session in sessions.values():
            feeds = session.check_inputs(synthesize_inputs(session, batch=batch, seq=seq))
            runners.append(lambda s=session, f=feeds: s.run_unchecked(f))
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"batch {batch} seq {seq}", total=len(runners) * (iters + 10))
            samples = time_interleaved(runners, iters=iters, warmup=10,
                                       progress=lambda n: progress.advance(task, n))
        timings[(batch, seq)] = [LatencyStats.from_seconds(s).p50 for s in samples]

    body = render(list(sessions), accuracy, notes, timings, args, isa)
    if not args.no_write:
        write_section("quantize_check", body)
    console.print(body)


def kernel_note(result) -> str:
    """Which INT8 kernel configuration edgert chose, and what it measured for each candidate."""
    measured = ", ".join(f"{c.kernel.label}{' (chosen)' if c.chosen else ''} cosine {c.accuracy.cosine_mean:.4f}"
                         + (f" {c.speedup:.2f}x" if c.speedup is not None else "") for c in result.candidates)
    return f"kernel candidates: {measured}; rule: {result.choice}"


def render(labels, accuracy, notes, timings, args, isa) -> str:
    lines = ["## INT8: edgert quantize vs ONNX Runtime and Optimum defaults", "",
             f"Machine: {machine()}; edgert chooses among the `{isa.int8_class}` "
             f"INT8 kernel configurations. ONNX Runtime CPU, {args.threads} threads, allow_spinning=0, "
             "all models timed interleaved in blocks in one process. Accuracy: cosine of the "
             f"sentence embedding to FP32 over the {sum(1 for _ in HELDOUT.read_text().splitlines() if _.strip())} "
             f"bundled held-out sentences (batch 1 each); calibration: {args.calib_size} bundled sentences.", "",
             f"Command: `.venv/bin/python bench/quantize_check.py --threads {args.threads} --iters {args.iters}"
             + (" --no-optimum" if args.no_optimum else "") + "`", "",
             "| model | cosine mean | cosine min | " + " | ".join(f"b{b} s{s} p50 ms (speedup)" for b, s in SHAPES)
             + " | note |",
             "|---|---:|---:|" + "---:|" * len(SHAPES) + "---|"]
    for i, label in enumerate(labels):
        mean, low = accuracy.get(label, (1.0, 1.0))
        cells = []
        for shape in SHAPES:
            p50 = timings[shape][i]
            cells.append(f"{p50:.2f} ({timings[shape][0] / p50:.2f}x)")
        lines.append(f"| {label} | {mean:.4f} | {low:.4f} | " + " | ".join(cells) + f" | {notes.get(label, '')} |")
    lines += ["", "Targets from the issue: ≥ 2.5x FP32 at batch 1, seq 128 with cosine mean ≥ 0.99 and "
              "min ≥ 0.98. Speedups are FP32 p50 / model p50 in the same interleaved run."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
