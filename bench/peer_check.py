"""Peer check: MiniLM exported by edgert (fused for ONNX Runtime CPU, its default, and
--no-optimize), by plain torch.onnx.export and by Optimum, checked against torch and timed
interleaved in one process against torch eager.

    .venv/bin/python bench/peer_check.py [--threads 2] [--iters 200] [--no-write]

Optimum runs in its own virtual environment (bench/.venv-optimum, created on first use)
because optimum-onnx pins transformers < 5. Writes its section of bench/RESULTS.md unless
--no-write (for smoke runs).
"""

from __future__ import annotations

import os

# Idle OpenMP threads (torch) spin like ONNX Runtime's and slow whatever runs next; set
# before torch is imported. ONNX Runtime sessions get allow_spinning=0 below, so all
# contenders wait passively and the interleaved ratios stay fair.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import importlib.metadata as md
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
from optimum_peer import minilm_dir, optimum_export  # noqa: E402
from results import machine, write_section  # noqa: E402

import edgert  # noqa: E402
from edgert.exporters import export  # noqa: E402
from edgert.latency import LatencyStats, time_interleaved  # noqa: E402
from edgert.session import Session, session_options  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"
# Held-out sentences: not the ones the exporter validates on.
SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "Stock markets fell sharply after the central bank raised interest rates again.",
    "How do I reset my password?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "Bonjour, comment allez-vous aujourd'hui ?",
    "A transformer layer has attention followed by a feed-forward network, each with a "
    "residual connection and layer normalisation.",
    "Yes.",
    "The 2026 final ended 3-2 after extra time.",
]
console = Console()


@dataclass
class Candidate:
    name: str
    export: str
    run: object  # () -> None, one timed inference
    agreement: str


def plain_torch_export(model: torch.nn.Module, feeds: dict[str, np.ndarray], path: Path) -> Path:
    """What a user writes by hand: torch.onnx.export with dynamic axes, defaults otherwise."""
    names = list(feeds)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(torch.from_numpy(feeds[n]) for n in names), str(path),
                          input_names=names, output_names=["last_hidden_state", "pooler_output"],
                          dynamic_axes=axes | {"last_hidden_state": {0: "batch", 1: "sequence"}})
    return path


def masked_diff_and_cosine(hidden: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Max |diff| over real tokens, and the min cosine of mean-pooled vectors."""
    keep = mask.astype(bool)
    diff = float(np.abs(hidden[keep] - reference[keep]).max())
    m = mask[..., None].astype(np.float64)
    a, b = (hidden * m).sum(1) / m.sum(1), (reference * m).sum(1) / m.sum(1)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return diff, float(cosine.min())


def embedding_cosine(got: np.ndarray, reference: np.ndarray) -> float:
    cosine = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    return float(cosine.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--skip-optimum", action="store_true")
    parser.add_argument("--no-write", action="store_true",
                        help="print the section but leave bench/RESULTS.md alone (smoke runs)")
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    torch.set_num_threads(args.threads)

    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModel.from_pretrained(minilm_dir()).eval()

    console.print("exporting with edgert (fused, and --no-optimize) …")
    edgert_paths = {(task, optimize): export("minilm", WORK / f"edgert_{task}{suffix}.onnx", task=task,
                                             optimize=optimize).path
                    for task in ("feature-extraction", "sentence-embedding")
                    for optimize, suffix in ((True, ""), (False, "_plain"))}
    tokenize = edgert.load(edgert_paths["feature-extraction", True]).tokenizer
    held_out = tokenize(SENTENCES)
    console.print("exporting with plain torch.onnx.export …")
    plain = plain_torch_export(model, held_out, WORK / "torch_plain.onnx")
    optimum = {} if args.skip_optimum else {
        lib: optimum_export(lib, WORK) for lib in ("transformers", "sentence_transformers")}

    # --- agreement on held-out sentences (batch 8, padded) ---
    with torch.inference_mode():
        reference = model(**{k: torch.from_numpy(v) for k, v in held_out.items()}).last_hidden_state.numpy()
    st_reference = SentenceTransformer(str(minilm_dir()), device="cpu").encode(SENTENCES)
    mask = held_out["attention_mask"]
    onnx_models = {}
    for task, output in (("feature-extraction", "last_hidden_state"), ("sentence-embedding", "sentence_embedding")):
        onnx_models[f"edgert {task}"] = (edgert_paths[task, True], output,
                                         "edgert export (default: fused for ONNX Runtime CPU)")
        onnx_models[f"edgert {task} --no-optimize"] = (edgert_paths[task, False], output,
                                                       "edgert export --no-optimize")
        if task == "feature-extraction":
            onnx_models["torch.onnx.export (plain)"] = (plain, "last_hidden_state",
                                                        "torch.onnx.export, dynamic_axes")
    if optimum.get("transformers"):
        onnx_models["Optimum feature-extraction"] = (optimum["transformers"][0], "last_hidden_state",
                                                     "optimum main_export")
    if optimum.get("sentence_transformers"):
        onnx_models["Optimum sentence-transformers"] = (optimum["sentence_transformers"][0],
                                                        "sentence_embedding", "optimum main_export")
    agreement = {"torch eager (transformers)": "reference"}
    sessions = {}
    for name, (path, output, _) in onnx_models.items():
        session = Session(path, options=session_options(args.threads, spin=False))
        sessions[name] = session
        feeds = {s.name: held_out[s.name] for s in session.inputs}
        got = session.run(feeds, [output])[output]
        if output == "last_hidden_state":
            diff, cosine = masked_diff_and_cosine(got, reference, mask)
            agreement[name] = f"max abs diff {diff:.2e} vs torch; pooled cosine min {cosine:.7f}"
        else:
            agreement[name] = f"cosine to sentence-transformers encode, min {embedding_cosine(got, st_reference):.7f}"

    # --- timing: each alone, then all interleaved in blocks ---
    sections = []
    for batch, seq, iters in ((1, 128, args.iters), (8, 128, max(20, args.iters // 4))):
        rng = np.random.default_rng(0)
        feeds = {"input_ids": rng.integers(1000, 30000, (batch, seq)).astype(np.int64),
                 "attention_mask": np.ones((batch, seq), np.int64),
                 "token_type_ids": np.zeros((batch, seq), np.int64)}
        torch_feeds = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def eager(m=model, f=torch_feeds):
            with torch.inference_mode():
                m(**f)

        runners = {"torch eager (transformers)": eager}
        for name, session in sessions.items():
            f = session.check_inputs({s.name: feeds[s.name] for s in session.inputs})
            runners[name] = lambda s=session, f=f: s.run_unchecked(f)
        names = list(runners)
        total = len(names) * (args.warmup + iters) * 2
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"timing batch {batch} seq {seq}", total=total)
            step = lambda n: progress.advance(task, n)  # noqa: E731
            alone = [time_interleaved([runners[n]], iters=iters, warmup=args.warmup, progress=step)[0]
                     for n in names]
            together = time_interleaved([runners[n] for n in names], iters=iters,
                                        warmup=args.warmup, progress=step)
        stats = {n: (LatencyStats.from_seconds(a), LatencyStats.from_seconds(t))
                 for n, a, t in zip(names, alone, together)}
        sections.append((batch, seq, iters, stats))

    versions = {p: md.version(p) for p in ("torch", "transformers", "onnxruntime", "onnx", "sentence-transformers")}
    optimum_versions = next((v[1]["versions"] for v in optimum.values() if v), None)
    body = render(sections, agreement, onnx_models, versions, optimum_versions, args,
                  optimum_skipped=args.skip_optimum or not all(optimum.values()))
    if not args.no_write:
        write_section("peer_check", body)
    console.print(body, soft_wrap=True, markup=False, highlight=False)  # copyable markdown


def render(sections, agreement, onnx_models, versions, optimum_versions, args, *, optimum_skipped) -> str:
    lines = ["## Peer check: exporting all-MiniLM-L6-v2", "",
             f"Machine: {machine()}. ONNX Runtime CPU, {args.threads} intra-op threads, "
             f"allow_spinning=0; torch eager with torch.set_num_threads({args.threads}), "
             "OMP_WAIT_POLICY=PASSIVE. Versions: "
             + ", ".join(f"{k} {v}" for k, v in versions.items())
             + ("; Optimum venv: " + ", ".join(f"{k} {v}" for k, v in optimum_versions.items())
                if optimum_versions else "") + ".",
             "",
             f"Command: `.venv/bin/python bench/peer_check.py --threads {args.threads} --iters {args.iters} "
             f"--warmup {args.warmup}`",
             "",
             "edgert's default export fuses attention and bias+GELU into ONNX Runtime "
             "CPU kernels (com.microsoft ops) and edgert sessions keep ONNX Runtime from fusing "
             "Add+LayerNorm into its slower SkipLayerNormalization; `--no-optimize` rows are the portable graph.",
             ""]
    if optimum_skipped:
        lines += ["Optimum: not measured in this run (skipped or failed to install/export).", ""]
    lines += ["### Agreement on 8 held-out sentences (batch 8, padded)", "",
              "| model | how exported | agreement |", "|---|---|---|"]
    for name, text in agreement.items():
        how = onnx_models[name][2] if name in onnx_models else "transformers AutoModel"
        lines.append(f"| {name} | {how} | {text} |")
    for batch, seq, iters, stats in sections:
        base = stats["torch eager (transformers)"][1].p50
        lines += ["", f"### Latency, batch {batch}, seq {seq} ({iters} timed runs each; "
                      "interleaved in blocks, alone for the check)", "",
                  "| model | p50 ms | mean | p90 | p99 | std | p50 alone | speedup vs torch eager (p50) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, (alone, mixed) in stats.items():
            drift = mixed.p50 / alone.p50 - 1
            flag = "" if abs(drift) <= 0.15 else f" ({drift:+.0%}!)"
            lines.append(f"| {name} | {mixed.p50:.2f} | {mixed.mean:.2f} | {mixed.p90:.2f} | "
                         f"{mixed.p99:.2f} | {mixed.std:.2f} | {alone.p50:.2f}{flag} | {base / mixed.p50:.2f}x |")
    lines += ["", "A `(+x%!)` mark means alone and interleaved medians differ by more than 15%: "
              "that row's ratio is less trustworthy (noisy machine or ONNX Runtime thread spinning)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
