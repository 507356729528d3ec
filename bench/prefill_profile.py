"""Where one prefill chunk's time goes: ONNX Runtime's profiler over edgert's decoder graph,
grouped by op type and by purpose, plus the Generator's Python work around the graph run.

    .venv/bin/python bench/prefill_profile.py [--contexts 4096 16384] [--chunk 512] [--threads 2]
                                              [--label now] [--keep-denormals] [--portable]
                                              [--decode] [--model PATH] [--no-write]

For each context C the prompt is prefilled up to C tokens in chunks, then one more chunk runs
with the profiler on: that chunk reads a cache of C tokens. --decode profiles one-token steps
instead, as the Generator runs them (the whole cache buffers fed, unwritten slots masked):
the mean of DECODE_STEPS steps after the first two. Its node events are grouped by op
type, and by purpose from the torch module each node came from (the exporter's name scopes:
attention projections, attention arithmetic, masks, cache handling, RoPE, MLP, norms, lm head).
The Python side is timed around the same chunk: building the feeds (cache slices), the graph
run, and writing the new keys and values into the cache.

The model is bench/decode_check.py's reference Llama (all heads full), exported on first use
to bench/_work/decode/edgert-full.onnx (--portable: with --no-optimize, to
edgert-full-portable.onnx), or --model. Each --label is kept in
bench/_work/prefill_profile/LABEL.json and the section of bench/RESULTS.md shows every label
(e.g. "before" and "after" a change).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

from edgert.quant.inline import subgraphs

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "prefill_profile"
DEFAULT_MODEL = HERE / "_work" / "decode" / "edgert-full.onnx"
PORTABLE_MODEL = HERE / "_work" / "decode" / "edgert-full-portable.onnx"
DECODE_STEPS = 10
LAYOUT_OPS = {"Reshape", "Transpose", "Shape", "Unsqueeze", "Squeeze", "Cast", "Identity"}


def node_scopes(model: onnx.ModelProto) -> dict[str, tuple[str, list[str]]]:
    """Node name -> (op type, torch module scopes), for the main graph and every subgraph."""
    found = {}

    def walk(graph, outer: list[str]):
        for node in graph.node:
            scopes = next((ast.literal_eval(p.value) if p.value.startswith("[") else [p.value]
                           for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), [])
            scopes = outer + scopes  # a branch's nodes name scopes relative to their If
            found[node.name] = (node.op_type, scopes)
            for sub in subgraphs(node):
                walk(sub, scopes)

    walk(model.graph, [])
    return found


def purpose(op_type: str, scopes: list[str]) -> str:
    """What a node is for, from the torch module it was exported from (a heuristic: the
    exporter's name scopes say the module, the op type says its role inside attention)."""
    path = " ".join(scopes)
    if op_type in LAYOUT_OPS:
        return "layout (reshape, transpose, shape)"
    if "lm_head" in path:
        return "lm head"
    if ".mlp" in path:
        return "MLP"
    if "layernorm" in path or path.rstrip().endswith(".norm") or ".norm " in path:
        return "norms"
    if "embed_tokens" in path:
        return "embedding"
    if "rotary_emb" in path:
        return "RoPE"
    if "self_attn" in path:
        if any(p in path for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return "attention projections"
        if op_type in ("MatMul", "FusedMatMul", "Softmax", "Gemm") or op_type.startswith(("GroupQueryAttention", "ClippedSoftmax")):
            return "attention arithmetic"
        if op_type in ("Add", "Where", "Expand", "Equal", "Not", "And", "Less", "Greater", "GreaterOrEqual"):
            return "masks"
        if op_type in ("Concat", "Slice", "Gather", "Split"):
            return "cache handling"
        if op_type in ("Mul", "Neg", "Sub"):
            return "RoPE"
        return "other"
    if "layers." in path or not path.strip():
        return "other"  # residual adds; nodes the exporter made without a module
    return "masks"  # the graph's root builds the additive masks from the integer inputs


def run_events(profile: list[dict], runs: int = 1) -> list[dict]:
    """Node kernel events of the last `runs` graph runs in an ONNX Runtime profile."""
    model_runs = [e for e in profile if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start, end = model_runs[-runs]["ts"], model_runs[-1]["ts"] + model_runs[-1]["dur"]
    # An If's event spans its branch, whose nodes have events of their own: it is left out.
    return [e for e in profile if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")
            and e.get("args", {}).get("op_name") != "If" and start <= e["ts"] <= end]


def profile_chunk(model: Path, context: int, chunk: int, threads: int, denormal_as_zero: bool,
                  decode: bool = False) -> dict:
    """Prefill `context` tokens, then profile one chunk of `chunk` tokens (decode: one-token
    steps, averaged); see the module docstring."""
    import edgert
    from edgert.kv_cache import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, KVCache
    from edgert.session import session_options

    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(threads, denormal_as_zero=denormal_as_zero)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        generator = edgert.Generator(model, options=options, prefill_chunk=chunk)
        session = generator.session
        extra = DECODE_STEPS if decode else chunk
        ids = np.random.default_rng(0).integers(3, generator.vocab_size, size=(1, context + extra), dtype=np.int64)
        positions = np.arange(context + extra, dtype=np.int64)[None]
        cache = KVCache(generator.layout, 1, context + extra)
        times = defaultdict(list)

        def step(start: int, end: int, timed: bool) -> None:
            t0 = time.perf_counter()
            feeds = {INPUT_IDS: ids[:, start:end], POSITION_IDS: positions[:, start:end],
                     ATTENTION_MASK: np.ones((1, end - start), np.int64),
                     **cache.feeds(compact=end - start > 1)}
            t1 = time.perf_counter()
            outputs = dict(zip(session.output_names, session.run_unchecked(feeds)))
            t2 = time.perf_counter()
            cache.append(outputs, positions[:, start:end], feeds[ATTENTION_MASK])
            t3 = time.perf_counter()
            assert outputs[LOGITS].shape[0] == 1
            if timed:
                times["feeds (cache slices)"].append(t1 - t0)
                times["graph run"].append(t2 - t1)
                times["cache append"].append(t3 - t2)

        for start in range(0, context, chunk):
            step(start, min(start + chunk, context), timed=False)
        if decode:
            for i in range(DECODE_STEPS):
                step(context + i, context + i + 1, timed=i >= 2)  # the first steps warm the arena
        else:
            step(context, context + chunk, timed=True)
        profile_path = session._ort.end_profiling()
        profile = json.loads(Path(profile_path).read_text())
    runs = DECODE_STEPS - 2 if decode else 1
    scopes = node_scopes(onnx.load(str(model), load_external_data=False))
    by_op, by_purpose = defaultdict(float), defaultdict(float)
    for event in run_events(profile, runs):
        name = event["name"][: -len("_kernel_time")]
        if name not in scopes:  # a node ONNX Runtime fused at load: "original/FusionName/"
            name = name.split("/")[0]
        op_type = event.get("args", {}).get("op_name") or scopes.get(name, ("?", []))[0]
        by_op[op_type] += event["dur"] / 1e3 / runs
        by_purpose[purpose(op_type, scopes.get(name, (op_type, []))[1])] += event["dur"] / 1e3 / runs
    return {"context": context, "chunk": 1 if decode else chunk, "threads": threads,
            "cache_mb": generator.layout.cache_bytes(1, context) / 2**20,
            "denormal_as_zero": denormal_as_zero, "by_op_ms": dict(by_op), "by_purpose_ms": dict(by_purpose),
            "python_ms": {k: 1e3 * float(np.mean(v)) for k, v in times.items()}}


def table(rows: dict[str, float], total: float, top: int | None = None) -> list[str]:
    ordered = sorted(rows.items(), key=lambda kv: -kv[1])[:top]
    return [f"| {name} | {ms:.1f} | {100 * ms / total:.0f}% |" for name, ms in ordered]


def _cache_read(run: dict) -> list[str]:
    """For a decode step: how fast its attention reads the cache (every step reads all of it)."""
    attention = run["by_purpose_ms"].get("attention arithmetic", 0.0)
    if run["chunk"] != 1 or "cache_mb" not in run or not attention:
        return []
    return [(f"Each step reads the whole cache, {run['cache_mb']:.0f} MiB of keys and values: "
            f"{run['cache_mb'] / 1024 / (attention / 1e3):.1f} GiB/s over the attention arithmetic's "
            f"{attention:.1f} ms."), ""]


def render(results: dict[str, list[dict]]) -> str:
    """Markdown: per label and context, the purposes, the top op types and the Python side."""
    lines = []
    for label, runs in results.items():
        for run in runs:
            kernels = sum(run["by_op_ms"].values())
            python = run["python_ms"]
            step = "one-token decode step" if run["chunk"] == 1 else f"chunk {run['chunk']}"
            lines += [(f"**{label}**, context {run['context']}, {step}, {run['threads']} threads, "
                      f"denormals {'flushed' if run['denormal_as_zero'] else 'kept'}: graph run "
                      f"{python['graph run']:.0f} ms (kernels {kernels:.0f} ms), feeds "
                      f"{python['feeds (cache slices)']:.1f} ms, cache append {python['cache append']:.1f} ms"), "",
                      *_cache_read(run),
                      "| purpose | ms | share of kernel time |", "|---|---|---|",
                      *table(run["by_purpose_ms"], kernels), "",
                      "| op type (top 8) | ms | share |", "|---|---|---|",
                      *table(run["by_op_ms"], kernels, 8), ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--label", default="now", help="name of this measurement in RESULTS.md")
    parser.add_argument("--keep-denormals", action="store_true", help="profile with float32 denormals kept")
    parser.add_argument("--model", type=Path, default=None, help="an edgert decoder (default: the reference)")
    parser.add_argument("--portable", action="store_true",
                        help="profile the reference exported with --no-optimize (attention as plain ONNX ops)")
    parser.add_argument("--decode", action="store_true", help="profile one-token decode steps instead of a chunk")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    sys.path.insert(0, str(HERE))
    from decode_model import reference_model_dir
    from results import machine, write_section

    model = args.model or (PORTABLE_MODEL if args.portable else DEFAULT_MODEL)
    if not model.exists():
        from edgert.exporters import export

        print("exporting the reference model …", file=sys.stderr)
        export(str(reference_model_dir(HERE / "_work" / "decode" / "models")), model, optimize=not args.portable)
    runs = []
    for context in args.contexts:
        print(f"profiling {'decode steps' if args.decode else 'a chunk'} at context {context} …", file=sys.stderr)
        runs.append(profile_chunk(model, context, args.chunk, args.threads, not args.keep_denormals, args.decode))
    print(render({args.label: runs}))
    if args.no_write:
        return 0
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / f"{args.label}.json").write_text(json.dumps({"runs": runs, "command": " ".join(sys.argv[1:])}))
    results, commands = {}, []
    for path in sorted(WORK.glob("*.json"), key=lambda p: p.stat().st_mtime):
        saved = json.loads(path.read_text())
        results[path.stem] = saved["runs"]
        commands.append(f"`.venv/bin/python bench/prefill_profile.py {saved['command']}`")
    body = (f"### Where a prefill chunk's (and a decode step's) time goes\n\n{machine()}. ONNX Runtime's "
            "profiler over one chunk (or the mean of one-token steps) of the reference Llama's all-full graph "
            "at each context; purposes come from the torch "
            "module each node was exported from (nodes ONNX Runtime fused at load count under their "
            "first node's module). Python times are one run's wall clock.\n\n"
            f"{render(results)}\nCommands: " + ", ".join(commands))
    write_section("prefill_profile", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
