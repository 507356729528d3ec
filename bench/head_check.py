"""Head transforms on all-MiniLM-L6-v2 (real weights, no fine-tuning): pruning by importance vs
at random, MHA -> GQA by mean vs SVD, and activation outliers with standard vs clipped softmax.

    .venv/bin/python bench/head_check.py [--threads 2] [--iters 60] [--random-seeds 3]

Accuracy: cosine of the sentence embedding to the unpruned FP32 export over the bundled
held-out sentences. Latency: batch 1, seq 128, ONNX Runtime CPU, every model of a table timed
interleaved in one process. Graphs are exported unfused (--no-optimize) so every row compares
the same kind of graph. Writes its section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import machine, write_section  # noqa: E402

from edgert.exporters.export import export  # noqa: E402
from edgert.exporters.heads import Transform, identity_plan, parse_softmax  # noqa: E402
from edgert.exporters.importance import head_importance, load_for_heads, random_scores  # noqa: E402
from edgert.models.adapters import adapt  # noqa: E402
from edgert.models.transforms import prune_by_score  # noqa: E402
from edgert.latency import LatencyStats, time_interleaved  # noqa: E402
from edgert.quant.calib import BUNDLED  # noqa: E402
from edgert.quant.quantize import QuantConfig, quantize_model  # noqa: E402
from edgert.session import Session, session_options  # noqa: E402
from edgert.synth import synthesize_inputs  # noqa: E402

WORK = Path(__file__).resolve().parent / "_work" / "heads"
CALIB, HELDOUT = BUNDLED["minilm"]
FRACTIONS = (0.0, 0.125, 0.25, 0.5)
KV_HEADS = (6, 4, 2)
CLIPPED = ("clipped:-0.025,1", "clipped:-0.1,1")  # the authors' BERT preset, and a stronger clip
console = Console()


def embeddings(session: Session, texts: list[str]) -> np.ndarray:
    tokenize = session.tokenizer
    rows = [session.run(tokenize([t]), ["sentence_embedding"])["sentence_embedding"][0] for t in texts]
    return np.stack(rows)


def cosines(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    c = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    return float(c.mean()), float(c.min())


def p50_ms(paths: list[Path], threads: int, iters: int) -> list[float]:
    """p50 latency of each model at batch 1, seq 128, timed interleaved."""
    sessions = [Session(p, options=session_options(threads, spin=False)) for p in paths]
    runners = []
    for session in sessions:
        feeds = session.check_inputs(synthesize_inputs(session, batch=1, seq=128))
        runners.append(lambda s=session, f=feeds: s.run_unchecked(f))
    samples = time_interleaved(runners, iters=iters, warmup=10)
    return [LatencyStats.from_seconds(s).p50 for s in samples]


def outlier_metrics(path: Path, texts: list[str]) -> dict[str, float]:
    """Bondarenko et al.'s metrics on the ONNX graph: per example, the inf-norm of each layer's
    FFN output and output-LayerNorm output, averaged over examples, max over layers; and the
    kurtosis of the FFN output, mean over layers."""
    import onnx

    from edgert.quant.outliers import activation_names

    model = onnx.load(str(path))
    names = activation_names(model)
    ffn = sorted(n for n, (op, where) in names.items() if op == "Add" and where.endswith(".output.dense"))
    norm = sorted(n for n, (op, where) in names.items()
                  if op == "LayerNormalization" and where.endswith(".output.LayerNorm"))
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in ffn + norm)
    augmented = WORK / (path.stem + ".outliers.onnx")
    onnx.save(model, str(augmented))
    session = Session(augmented)
    tokenize = session.tokenizer
    ffn_inf, norm_inf, kurt = [], [], []
    for text in texts:
        out = session.run(tokenize([text]), ffn + norm)
        ffn_inf.append([np.abs(out[n]).max() for n in ffn])
        norm_inf.append([np.abs(out[n]).max() for n in norm])
        kurt.append([_kurtosis(out[n]) for n in ffn])
    return {"ffn_inf": float(np.mean(ffn_inf, axis=0).max()), "ln_inf": float(np.mean(norm_inf, axis=0).max()),
            "ffn_kurtosis": float(np.mean(kurt)), "layers": len(ffn)}


def _kurtosis(x: np.ndarray) -> float:
    x = x.astype(np.float64).ravel()
    centred = x - x.mean()
    return float((centred**4).mean() / (centred**2).mean() ** 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--random-seeds", type=int, default=3)
    parser.add_argument("--calib-size", type=int, default=64)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    texts = [line.strip() for line in HELDOUT.read_text().splitlines() if line.strip()]

    console.print("exporting the original …")
    original = export("minilm", WORK / "original.onnx", optimize=False).path
    want = embeddings(Session(original), texts)

    console.print("scoring heads …")
    model, samples, loss = load_for_heads("minilm", CALIB, args.calib_size)
    plan = identity_plan(model)
    adapt(model)
    scorers = {"importance": head_importance(model, samples, loss)}
    for seed in range(args.random_seeds):
        scorers[f"random {seed}"] = random_scores(plan, seed)

    prune_rows = []  # (fraction, scorer, heads kept, path)
    for fraction in FRACTIONS[1:]:
        for name, scores in scorers.items():
            pruned = prune_by_score(plan, scores, fraction)
            console.print(f"prune {fraction:.1%} by {name} …")
            path = export("minilm", WORK / f"prune_{fraction}_{name.replace(' ', '')}.onnx",
                          transform=Transform(plan=pruned), optimize=False).path
            prune_rows.append((fraction, name, pruned.kept_heads, path))

    accuracy = {row[3]: cosines(embeddings(Session(row[3]), texts), want) for row in prune_rows}
    importance_paths = [original] + [r[3] for r in prune_rows if r[1] == "importance"]
    console.print("timing FP32 …")
    fp32_ms = dict(zip(importance_paths, p50_ms(importance_paths, args.threads, args.iters)))
    int8_paths = {}
    for path in importance_paths:
        console.print(f"INT8 of {path.name} …")
        int8_paths[path] = quantize_model(path, WORK / (path.stem + ".int8.onnx"),
                                          QuantConfig(mode="dynamic"), threads=args.threads).path
    int8_accuracy = {p: cosines(embeddings(Session(q), texts), want) for p, q in int8_paths.items()}
    console.print("timing INT8 …")
    int8_ms = dict(zip(importance_paths, p50_ms(list(int8_paths.values()), args.threads, args.iters)))

    gqa_rows = []
    for kv in KV_HEADS:
        for method in ("mean", "svd"):
            console.print(f"GQA 12 -> {kv} kv heads by {method} …")
            path = export("minilm", WORK / f"gqa_{kv}_{method}.onnx", calib=CALIB, calib_size=args.calib_size,
                          transform=Transform(kv_heads=kv, gqa_method=method), optimize=False).path
            gqa_rows.append((kv, method, cosines(embeddings(Session(path), texts), want)))

    console.print("outlier metrics …")
    outliers = [("standard", original, (1.0, 1.0), outlier_metrics(original, texts))]
    for spec in CLIPPED:
        path = export("minilm", WORK / f"{spec.replace(':', '_').replace(',', '_')}.onnx",
                      transform=Transform(softmax=parse_softmax(spec)), optimize=False).path
        outliers.append((spec, path, cosines(embeddings(Session(path), texts), want),
                         outlier_metrics(path, texts)))

    body = render(args, len(texts), prune_rows, accuracy, fp32_ms, int8_ms, int8_accuracy,
                  original, gqa_rows, outliers)
    write_section("head_check", body)
    console.print(body)


def render(args, n_texts, prune_rows, accuracy, fp32_ms, int8_ms, int8_accuracy, original,
           gqa_rows, outliers) -> str:
    lines = ["## Head transforms on all-MiniLM-L6-v2, no fine-tuning", "",
             f"Machine: {machine()}. Cosine: sentence embedding vs the unpruned FP32 export over "
             f"{n_texts} bundled held-out sentences. Latency: p50 at batch 1, seq 128, "
             f"{args.threads} threads, ONNX Runtime CPU, allow_spinning=0, models of one column timed "
             f"interleaved. Importance: mask-gradient score over {args.calib_size} bundled calibration "
             "sentences (random-projection loss on the embedding). INT8: `edgert quantize --mode dynamic`.", "",
             f"Command: `.venv/bin/python bench/head_check.py --threads {args.threads} --iters {args.iters} "
             f"--random-seeds {args.random_seeds}`", "",
             "### Pruning: importance vs random", "",
             "| heads pruned | heads kept | by | cosine mean | cosine min | FP32 latency vs unpruned | "
             "INT8 latency vs unpruned INT8 | INT8 cosine mean / min |",
             "|---:|---:|---|---:|---:|---:|---:|---:|",
             f"| 0% | 72 | — | 1.0000 | 1.0000 | 1.00x ({fp32_ms[original]:.2f} ms) | "
             f"1.00x ({int8_ms[original]:.2f} ms) | {int8_accuracy[original][0]:.4f} / {int8_accuracy[original][1]:.4f} |"]
    for fraction, name, kept, path in prune_rows:
        mean, low = accuracy[path]
        speed = int8 = int8_cos = ""
        if path in fp32_ms:
            speed = f"{fp32_ms[original] / fp32_ms[path]:.2f}x ({fp32_ms[path]:.2f} ms)"
            int8 = f"{int8_ms[original] / int8_ms[path]:.2f}x ({int8_ms[path]:.2f} ms)"
            int8_cos = f"{int8_accuracy[path][0]:.4f} / {int8_accuracy[path][1]:.4f}"
        lines.append(f"| {fraction:.1%} | {kept} | {name} | {mean:.4f} | {low:.4f} | {speed} | {int8} | {int8_cos} |")
    lines += ["", "Latency ratios are unpruned p50 / pruned p50 (higher is faster); random-choice models "
              "are not timed (same head counts, same cost).", "",
              "### MHA -> GQA (12 query heads per layer)", "",
              "| kv heads | mean pooling cosine mean / min | SVD (low-rank) cosine mean / min |", "|---:|---:|---:|"]
    for kv in KV_HEADS:
        cells = {method: c for k, method, c in gqa_rows if k == kv}
        lines.append(f"| {kv} | {cells['mean'][0]:.4f} / {cells['mean'][1]:.4f} | "
                     f"{cells['svd'][0]:.4f} / {cells['svd'][1]:.4f} |")
    lines += ["", "### Activation outliers: standard vs clipped softmax on the same weights", "",
              "| softmax | cosine mean / min | FFN-output inf-norm (max over layers) | "
              "output-LayerNorm inf-norm (max over layers) | FFN-output kurtosis (mean over layers) |",
              "|---|---:|---:|---:|---:|"]
    for spec, _, (mean, low), m in outliers:
        lines.append(f"| {spec} | {mean:.4f} / {low:.4f} | {m['ffn_inf']:.1f} | {m['ln_inf']:.1f} | "
                     f"{m['ffn_kurtosis']:.0f} |")
    lines += ["", "Clipped softmax is meant to be trained with (Bondarenko et al. 2023); swapped into "
              "a model trained with the standard softmax it can only show what the pipeline measures, "
              "not the method's benefit."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
