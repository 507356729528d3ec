"""Decode check: edgert's per-head KV cache decoding against ONNX Runtime GenAI and
transformers (with its KV cache), on one random-init Llama-style reference model (hidden 512,
8 layers, 8 query / 2 kv heads, head dim 64, FFN 1408, vocab 32000, fp32).

    .venv/bin/python bench/decode_check.py [--contexts 1024 4096 16384 32768] [--new-tokens 32]
                                           [--threads 2] [--stream-tokens 10000] [--no-write]

Every measurement runs in a fresh process (so peak RSS is its own), variants alternate within
each context, and all runtimes get the same prompt (random ids, fixed seed). edgert variants:
every head full; 25% and 50% retrieval heads (the rest sink 64 + recent 256); dynamic INT8 of
the full model. Peers: GenAI fp32 and int4 (built by its model builder from the same weights;
bench/decode_peers.py) and transformers (sdpa). Then a streaming-only model generates
--stream-tokens tokens to show its memory stays flat. Writes its section of bench/RESULTS.md,
the raw results to bench/_work/decode/results.json and a plot to bench/decode_check.png
(matplotlib: `pip install -e ".[export,bench]"`). --merge re-measures some contexts and keeps the
others from the last run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from edgert.memory import proc_status_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_model import REFERENCE, REFERENCE_SMALL_INIT, model_dir  # noqa: E402
from decode_peers import PEERS, PeerError, measure_peer, prompt_ids  # noqa: E402

# --model: the reference decoder's two regimes. initializer_range 0.3 gives clear logit margins
# (greedy tokens comparable across runtimes) and float32 denormals in attention; 0.02 is the
# transformers default, whose activations stay normal.
MODELS = {"init0.3": REFERENCE, "init0.02": REFERENCE_SMALL_INIT}

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "decode"
PLOT = HERE / "decode_check.png"
SINK, RECENT = 64, 256
EDGERT_VARIANTS = {  # label -> (retrieval heads, INT8 guard or None for FP32)
    "edgert full": (None, None),
    "edgert 25% retrieval": (0.25, None),
    "edgert 50% retrieval": (0.5, None),
    # quantize's default decoder guard: the most damaging layers stay float until it holds
    "edgert full INT8 (top1>=0.9)": (None, "top1>=0.9"),
    # every weight MatMul in INT8, accuracy only reported (like GenAI int4, not guarded)
    "edgert full INT8 (all)": (None, "top1>=0"),
}
# The all-full model as edgert ran it before prefill attention was fused and denormals flushed:
# the portable graph (export --no-optimize), denormals kept, threads spinning. Not in the default
# run; --variants adds it, so before and after stand in one table.
BEFORE = "edgert full, before (portable graph, denormals kept)"
# The all-full model with its cache attention as plain ops in the graph, as exported before each
# layer's attention became one edgert::HeadwiseAttention node (A/B of the node's CPU cost).
INLINE = "edgert full, attention inline (no HeadwiseAttention node)"
ALL_VARIANTS = [*EDGERT_VARIANTS, BEFORE, INLINE]


def model_prefix(model: str) -> str:
    """The file-name prefix of a --model's edgert variants under bench/_work/decode."""
    return "edgert" if model == "init0.3" else f"edgert-{model}"


def variant_files(prefix: str, label: str) -> tuple[Path, Path | None]:
    """The FP32 export of an edgert variant and, for the INT8 ones, its quantized file."""
    retrieval, guard = EDGERT_VARIANTS[label]
    name = "full" if retrieval is None else f"retrieval{int(retrieval * 100)}"
    fp32 = WORK / f"{prefix}-{name}.onnx"
    return fp32, (WORK / f"{prefix}-{name}-int8-{'guarded' if guard != 'top1>=0' else 'all'}.onnx" if guard else None)


def build_edgert_models(model_dir: Path, console, prefix: str = "edgert",
                        labels=tuple(EDGERT_VARIANTS)) -> dict[str, Path]:
    """Export (and quantize) the edgert variants `labels` once, and the streaming-only model;
    cached under bench/_work/decode as PREFIX-VARIANT.onnx."""
    from edgert.exporters import export
    from edgert.exporters.heads import Transform

    paths = {}
    for label, (retrieval, guard) in EDGERT_VARIANTS.items():
        if label not in labels:
            continue
        fp32, quantized = variant_files(prefix, label)
        if not fp32.exists():
            console.print(f"exporting {label} …")
            transform = None if retrieval is None else Transform(retrieval=retrieval, sink=SINK, recent=RECENT)
            export(str(model_dir), fp32, transform=transform)
        if quantized and not quantized.exists():
            from edgert.quant.quantize import Guard, QuantConfig, quantize_model

            console.print(f"quantizing {label} …")
            quantize_model(fp32, quantized, QuantConfig(mode="dynamic", guard=Guard.parse(guard)), threads=2)
        paths[label] = quantized or fp32
    if BEFORE in labels:
        portable = WORK / f"{prefix}-full-portable.onnx"
        if not portable.exists():
            console.print(f"exporting {BEFORE} …")
            export(str(model_dir), portable, optimize=False)
        paths[BEFORE] = portable
    if INLINE in labels:
        inline = WORK / f"{prefix}-full-inline.onnx"
        if not inline.exists():
            console.print(f"exporting {INLINE} …")
            from edgert.exporters import decoder as decoder_recipe

            node = decoder_recipe.use_headwise_node
            decoder_recipe.use_headwise_node = lambda model: None  # every layer's attention stays inline
            try:
                export(str(model_dir), inline)
            finally:
                decoder_recipe.use_headwise_node = node
        paths[INLINE] = inline
    streaming = WORK / f"{prefix}-streaming.onnx"
    if not streaming.exists():
        console.print("exporting the streaming-only model …")
        export(str(model_dir), streaming, transform=Transform(retrieval=0, sink=SINK, recent=RECENT))
    paths["streaming"] = streaming
    return paths


def measure_edgert(label: str, path: Path, prompt: list[int], new_tokens: int, threads: int) -> dict:
    """One edgert measurement in a fresh process."""
    job = {"mode": "decode", "label": label, "model": str(path), "prompt": prompt,
           "new_tokens": new_tokens, "threads": threads, "before": label == BEFORE}
    return _run_child(job)


def measure_streaming_memory(path: Path, tokens: int, threads: int) -> dict:
    """RSS while a streaming-only model generates `tokens` tokens, in a fresh process."""
    return _run_child({"mode": "stream", "model": str(path), "tokens": tokens, "threads": threads})


@contextlib.contextmanager
def busy_core(busy: bool):
    """While the block runs, one other process spins on the CPU (as an edge device always has
    other work), when `busy`."""
    if not busy:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it reach its loop
        yield
    finally:
        spinner.kill()
        spinner.wait()


def _run_child(job: dict) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    result = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child"],
                            input=json.dumps(job), capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"edgert child failed: {result.stderr.strip().splitlines()[-3:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _child() -> None:
    import numpy as np

    import edgert

    job = json.loads(sys.stdin.read())
    start = time.perf_counter()
    if job.get("before"):
        from edgert.session import session_options

        options = session_options(job["threads"], spin=True, denormal_as_zero=False)
        generator = edgert.Generator(job["model"], options=options)
    else:
        generator = edgert.Generator(job["model"], threads=job["threads"])
    load_s = time.perf_counter() - start
    generator.generate([3, 4, 5, 6, 7, 8, 9, 10], 2, stop=())  # warm-up
    if job["mode"] == "stream":
        rss, kv = [], []
        for i, _ in enumerate(generator.stream([3] * 64, job["tokens"], stop=())):
            if i % 250 == 0 or i == job["tokens"] - 1:
                rss.append((i, proc_status_bytes("VmRSS")))
                kv.append(generator.cache_bytes())
        print(json.dumps({"rss": rss, "kv_bytes": kv}))
        return
    times, tokens = [], []
    start = time.perf_counter()
    for token in generator.stream(job["prompt"], job["new_tokens"], stop=()):
        times.append(time.perf_counter())
        tokens.append(token)
    print(json.dumps({"peer": job["label"], "context": len(job["prompt"]), "new_tokens": job["new_tokens"],
                      "prefill_s": times[0] - start, "decode_ms": list(np.diff(times) * 1e3),
                      "kv_bytes": generator.cache_bytes(), "peak_rss_bytes": proc_status_bytes("VmHWM"),
                      "tokens": tokens, "load_s": load_s}))


# ---------------------------------------------------------------- report

def _p50(result: dict) -> float:
    import numpy as np

    return float(np.median(result["decode_ms"]))


def _first_difference(tokens: list[int], reference: list[int] | None) -> str:
    if reference is None:
        return "-"
    first = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), None)
    return "yes" if first is None else f"no (from token {first})"


def report(results: list[dict], stream: dict | None, contexts: list[int]) -> tuple[str, list[str]]:
    """Markdown table + target lines."""
    by = {(r["peer"], r["context"]): r for r in results}
    lines = ["| context | runtime | prefill s | decode ms/token p50 | KV MiB | peak RSS MiB | tokens = transformers' |",
             "|---|---|---|---|---|---|---|"]
    for context in contexts:
        reference = by.get(("transformers", context), {}).get("tokens")
        for label in [*ALL_VARIANTS, *PEERS]:
            r = by.get((label, context))
            if r is None:
                continue
            lines.append(f"| {context} | {label} | {r['prefill_s']:.2f} | {_p50(r):.2f} | "
                         f"{r['kv_bytes'] / 2**20:.1f} | {r['peak_rss_bytes'] / 2**20:.0f} | "
                         f"{_first_difference(r['tokens'], reference) if label != 'transformers' else '-'} |")
    targets = []
    for context in contexts:
        full, genai = by.get(("edgert full", context)), by.get(("ort-genai-fp32", context))
        torch_peer = by.get(("transformers", context))
        for label in (BEFORE, INLINE):
            before = by.get((label, context))
            if full and before:
                targets.append(f"- {context}: edgert full vs {label}: prefill "
                               f"{before['prefill_s'] / full['prefill_s']:.2f}x, per-token {_p50(before) / _p50(full):.2f}x")
        if full and torch_peer:
            targets.append(f"- {context}: edgert full vs transformers: prefill {torch_peer['prefill_s'] / full['prefill_s']:.2f}x, "
                           f"per-token {_p50(torch_peer) / _p50(full):.2f}x")
        for name, peer in (("GenAI fp32", genai), ("GenAI fp32 with denormals off", by.get(("ort-genai-fp32-ftz", context)))):
            if full and peer:
                targets.append(f"- {context}: edgert full vs {name}: prefill {peer['prefill_s'] / full['prefill_s']:.2f}x, "
                               f"per-token {_p50(peer) / _p50(full):.2f}x")
        quarter = by.get(("edgert 25% retrieval", context))
        if full and quarter:
            targets.append(f"- {context}: 25% retrieval vs full: KV {100 * (1 - quarter['kv_bytes'] / full['kv_bytes']):.0f}% "
                           f"smaller, per-token {_p50(full) / _p50(quarter):.2f}x faster"
                           + (f" ({_p50(genai) / _p50(quarter):.2f}x GenAI fp32)" if genai else ""))
        int4 = by.get(("ort-genai-int4", context))
        for label in ("edgert full INT8 (top1>=0.9)", "edgert full INT8 (all)"):
            int8 = by.get((label, context))
            if int8 and full:
                targets.append(f"- {context}: {label} per-token {_p50(full) / _p50(int8):.2f}x edgert fp32"
                               + (f", {_p50(int4) / _p50(int8):.2f}x GenAI int4 (above 1 = edgert INT8 faster)"
                                  if int4 else ""))
    if stream:
        rss = stream["rss"]
        warm = [b for i, b in rss if i >= 1000]
        if warm:
            spread = (max(warm) - min(warm)) / warm[0] * 100
            targets.append(f"- streaming-only, {rss[-1][0] + 1} tokens: RSS after 1000 tokens ranges "
                           f"{min(warm) / 2**20:.1f}-{max(warm) / 2**20:.1f} MiB ({spread:.2f}% spread); "
                           f"KV bytes {min(stream['kv_bytes'])}-{max(stream['kv_bytes'])}")
    return "\n".join(lines), targets


def int8_accuracy(paths: dict[str, Path]) -> list[str]:
    """What `quantize` measured for each INT8 variant (from its manifest)."""
    import edgert

    lines = []
    for label, (_, guard) in EDGERT_VARIANTS.items():
        if guard and label in paths:
            quant = edgert.load(paths[label]).manifest.extra["quantization"]
            acc = quant["accuracy"]
            lines.append(f"- {label}: next-token top-1 agreement with FP32 {acc['top1']:.3f}, KL mean "
                         f"{acc['kl_mean']:.4f} over {acc['positions']} positions; "
                         f"{len(quant['float_nodes'])} MatMul nodes kept in float")
    return lines


def plot(results: list[dict], contexts: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (kv_axis, latency_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in [*EDGERT_VARIANTS, *PEERS]:
        points = sorted((r["context"], r) for r in results if r["peer"] == label)
        if not points:
            continue
        xs = [c for c, _ in points]
        style = "-o" if label.startswith("edgert") else "--s"
        kv_axis.plot(xs, [r["kv_bytes"] / 2**20 for _, r in points], style, label=label)
        latency_axis.plot(xs, [_p50(r) for _, r in points], style, label=label)
    for axis, title in ((kv_axis, "KV cache (MiB)"), (latency_axis, "decode latency per token, p50 (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(contexts, [f"{c // 1024}k" for c in contexts])
        axis.set_xlabel("context (tokens)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    kv_axis.set_yscale("log")
    latency_axis.legend(fontsize=7)
    figure.suptitle("Llama-style 55M reference model, fp32 unless named, 2 threads")
    figure.tight_layout()
    tmp = PLOT.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=110)
    os.replace(tmp, PLOT)


RUN_TITLES = {"init0.3": "initializer_range 0.3 (denormals in attention)",
              "init0.3-busy": "initializer_range 0.3, one core busy with another process",
              "init0.02": "initializer_range 0.02 (transformers' default)",
              "init0.02-busy": "initializer_range 0.02, one core busy with another process"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", choices=MODELS, default="init0.3",
                        help="the reference decoder's initializer_range")
    parser.add_argument("--busy-core", action="store_true",
                        help="keep one core busy with another process (a spin loop) during every measurement")
    parser.add_argument("--stream-tokens", type=int, default=10_000)
    parser.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS))
    parser.add_argument("--variants", nargs="*", choices=ALL_VARIANTS, default=list(EDGERT_VARIANTS))
    parser.add_argument("--merge", action="store_true",
                        help="keep the other contexts (and the streaming run, unless --stream-tokens) "
                             "of the last run of this --model and --busy-core: re-measure some rows")
    parser.add_argument("--no-write", action="store_true", help="print only (smoke runs)")
    args = parser.parse_args()

    from results import machine, write_section
    from rich.console import Console

    console = Console()
    WORK.mkdir(parents=True, exist_ok=True)
    run = args.model + ("-busy" if args.busy_core else "")
    saved = WORK / f"results-{run}.json"
    directory = model_dir(MODELS[args.model], WORK / "models")
    paths = build_edgert_models(directory, console, model_prefix(args.model), args.variants)
    vocab = json.loads((directory / "config.json").read_text())["vocab_size"]
    results = []
    runners = [*args.variants, *args.peers]
    for context in args.contexts:
        prompt = prompt_ids(context, vocab)
        # Rotate the order per context so no runtime always runs first or last.
        shift = args.contexts.index(context) % len(runners)
        for label in runners[shift:] + runners[:shift]:
            console.print(f"context {context}: {label} …")
            try:
                with busy_core(args.busy_core):
                    if label in ALL_VARIANTS:
                        r = measure_edgert(label, paths[label], prompt, args.new_tokens, args.threads)
                    else:
                        r = measure_peer(label, directory, context, args.new_tokens, args.threads)
                        r["peer"] = label
            except (PeerError, RuntimeError, ValueError) as exc:
                console.print(f"[red]{label} at {context} failed:[/] {exc}")
                continue
            console.print(f"  prefill {r['prefill_s']:.2f} s, per-token p50 {_p50(r):.2f} ms, "
                          f"KV {r['kv_bytes'] / 2**20:.1f} MiB, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} MiB")
            results.append(r)
    stream, commands = None, []
    if args.merge and saved.exists():
        previous = json.loads(saved.read_text())
        measured = {(r["peer"], r["context"]) for r in results}
        results = [r for r in previous["results"] if (r["peer"], r["context"]) not in measured] + results
        stream = previous.get("stream")
        commands = previous.get("commands", [])
    contexts = sorted({r["context"] for r in results})
    if args.stream_tokens:
        console.print(f"streaming-only model, {args.stream_tokens} tokens …")
        with busy_core(args.busy_core):
            stream = measure_streaming_memory(paths["streaming"], args.stream_tokens, args.threads)
    commands.append("python bench/decode_check.py " + " ".join(sys.argv[1:]))
    saved.write_text(json.dumps({"results": results, "stream": stream, "commands": commands,
                                 "machine": machine(), "threads": args.threads, "new_tokens": args.new_tokens}))
    table, targets = report(results, stream, contexts)
    targets += int8_accuracy(paths)
    console.print(table)
    console.print("\n".join(targets))
    if args.no_write:
        return 0
    if run == "init0.3":
        plot(results, contexts)
    write_section("decode_check", render_runs())
    return 0


def render_runs() -> str:
    """The RESULTS.md section: one table per saved run (model x busy core), each with the
    machine and the commands that measured it."""
    parts = [f"### Decoding with a per-head KV cache\n\nGreedy decoding; prefill = time to the first token. "
             f"Headwise variants keep sink {SINK} + recent {RECENT} tokens in their streaming heads. Each row "
             "is one fresh process; runtimes alternate within each context. Per-token ratios above 1 mean "
             "edgert is faster; so do prefill ratios."]
    for run, title in RUN_TITLES.items():
        path = WORK / f"results-{run}.json"
        if not path.exists():
            continue
        saved = json.loads(path.read_text())
        paths = {label: p for label, p in _variant_paths(run).items() if p.exists()}
        table, targets = report(saved["results"], saved.get("stream"), sorted({r["context"] for r in saved["results"]}))
        targets += int8_accuracy(paths)
        commands = saved.get("commands", [])
        parts.append(f"#### {title}\n\n{saved.get('machine', '')}; {saved.get('threads', 2)} threads; "
                     f"{saved.get('new_tokens', 32)} new tokens per run.\n\n{table}\n\n" + "\n".join(targets)
                     + ("\n\n![KV bytes and per-token latency against context](decode_check.png)" if run == "init0.3" else "")
                     + "\n\n" + ("Commands, in order (a later one re-measured the rows it names): "
                                  if len(commands) > 1 else "Command: ")
                     + ", ".join(f"`.venv/bin/{c}`" for c in commands))
    return "\n\n".join(parts)


def _variant_paths(run: str) -> dict[str, Path]:
    """Where build_edgert_models put each variant of a run's model (the INT8 file for the INT8 ones)."""
    prefix = model_prefix(run.removesuffix("-busy"))
    return {label: quantized or fp32 for label in EDGERT_VARIANTS
            for fp32, quantized in [variant_files(prefix, label)]}


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        _child()
    else:
        sys.exit(main())
