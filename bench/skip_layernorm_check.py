"""Why edgert leaves residual Add + LayerNorm unfused: ONNX Runtime's CPU SkipLayerNormalization
kernel against the two ops it replaces, alone and inside MiniLM (FP32 and dynamic INT8), with
ONNX Runtime's own SkipLayerNormFusion on (its default) and off (edgert's sessions).

    .venv/bin/python bench/skip_layernorm_check.py [--threads 2] [--iters 300] [--no-write]

Each pair is timed interleaved in blocks in one process, idle threads not spinning. Writes its
section of bench/RESULTS.md (unless --no-write).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine, write_section  # noqa: E402

from edgert.exporters import export  # noqa: E402
from edgert.latency import LatencyStats, time_interleaved  # noqa: E402
from edgert.quant.quantize import Guard, QuantConfig, quantize_model  # noqa: E402
from edgert.session import ORT_DISABLED_OPTIMIZERS, Session, session_options  # noqa: E402
from edgert.synth import synthesize_inputs  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work"
HIDDEN, SEQ = 384, 128  # MiniLM's hidden size at the quantize speed check's sequence length


def residual_layernorm_graphs(folder: Path) -> dict[str, Path]:
    """y = LayerNorm(x + skip) as Add + LayerNormalization and as one SkipLayerNormalization."""
    rng = np.random.default_rng(0)
    gamma = numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32), "gamma")
    beta = numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32), "beta")
    shape = [1, SEQ, HIDDEN]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip")]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    forms = {
        "Add + LayerNormalization": [helper.make_node("Add", ["x", "skip"], ["sum"]),
                                     helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"],
                                                      axis=-1, epsilon=1e-12)],
        "SkipLayerNormalization": [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma", "beta"],
                                                    ["y"], domain="com.microsoft", epsilon=1e-12)],
    }
    paths = {}
    for name, nodes in forms.items():
        graph = helper.make_graph(nodes, "residual_layernorm", inputs, [output], [gamma, beta])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                        helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 8
        paths[name] = folder / f"{name.split()[0].lower()}_layernorm.onnx"
        onnx.save(model, str(paths[name]))
    return paths


def ort_default_options(threads: int) -> ort.SessionOptions:
    """ONNX Runtime's own defaults (SkipLayerNormFusion on), threads and spinning as edgert's."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def timed_pair(sessions: dict[str, ort.InferenceSession], feeds: dict, iters: int) -> dict[str, LatencyStats]:
    runners = [lambda s=s: s.run(None, feeds) for s in sessions.values()]
    times = time_interleaved(runners, iters=iters, warmup=max(10, iters // 10))
    return {name: LatencyStats.from_seconds(t) for name, t in zip(sessions, times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(1)
    kernel_feeds = {n: rng.standard_normal((1, SEQ, HIDDEN)).astype(np.float32) for n in ("x", "skip")}
    # edgert's options for both: with ONNX Runtime's defaults the Add + LayerNormalization graph
    # would itself be fused into SkipLayerNormalization when the session loads.
    kernels = {name: ort.InferenceSession(str(path), session_options(args.threads, spin=False),
                                          providers=["CPUExecutionProvider"])
               for name, path in residual_layernorm_graphs(WORK).items()}
    kernel_stats = timed_pair(kernels, kernel_feeds, args.iters)

    fp32 = WORK / "skipln_minilm.onnx"
    export("minilm", fp32)
    int8 = WORK / "skipln_minilm.int8.onnx"
    quantize_model(fp32, int8, QuantConfig(mode="dynamic", guard=Guard.parse("cosine>=0.99")), threads=args.threads)
    model_rows = []
    for label, path in (("MiniLM FP32 (edgert export)", fp32), ("MiniLM dynamic INT8 (edgert quantize)", int8)):
        feeds = synthesize_inputs(Session(path), batch=1, seq=SEQ)
        sessions = {
            "SkipLayerNormFusion off (edgert)": ort.InferenceSession(
                str(path), session_options(args.threads, spin=False), providers=["CPUExecutionProvider"]),
            "SkipLayerNormFusion on (ONNX Runtime default)": ort.InferenceSession(
                str(path), ort_default_options(args.threads), providers=["CPUExecutionProvider"]),
        }
        stats = timed_pair(sessions, feeds, args.iters)
        model_rows.append((label, stats))

    off_name, on_name = "SkipLayerNormFusion off (edgert)", "SkipLayerNormFusion on (ONNX Runtime default)"
    lines = ["## Residual Add + LayerNorm: ONNX Runtime's SkipLayerNormalization vs the two ops", "",
             f"Machine: {machine()}. ONNX Runtime {ort.__version__} CPU, {args.threads} threads, "
             f"allow_spinning=0; each pair timed interleaved in blocks, {args.iters} runs each. "
             f"edgert's sessions disable {', '.join(ORT_DISABLED_OPTIMIZERS)}.", "",
             f"Command: `.venv/bin/python bench/skip_layernorm_check.py --threads {args.threads} --iters {args.iters}`",
             "", f"### One residual LayerNorm, [1, {SEQ}, {HIDDEN}]", "",
             "| form | p50 µs | mean µs | p90 µs |", "|---|---:|---:|---:|"]
    for name, s in kernel_stats.items():
        lines.append(f"| {name} | {s.p50 * 1000:.1f} | {s.mean * 1000:.1f} | {s.p90 * 1000:.1f} |")
    slow = kernel_stats["SkipLayerNormalization"].p50 / kernel_stats["Add + LayerNormalization"].p50
    lines += ["", f"SkipLayerNormalization takes {slow:.2f}x the time of Add + LayerNormalization.", "",
              f"### MiniLM at batch 1, seq {SEQ}", "",
              "| model | fusion off p50 ms | fusion on p50 ms | off is faster by |", "|---|---:|---:|---:|"]
    for label, stats in model_rows:
        off, on = stats[off_name].p50, stats[on_name].p50
        lines.append(f"| {label} | {off:.2f} | {on:.2f} | {on / off:.2f}x |")
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("skip_layernorm_check", body)


if __name__ == "__main__":
    main()
