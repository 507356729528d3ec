"""KV-heads check: passkey accuracy of edgert's tiny LM with retrieval heads chosen by each
method of `edgert analyze kv-heads`, against all-full attention, randomly chosen heads and
uniform streaming.

    .venv/bin/python bench/kv_heads_check.py [--contexts 128 256 384 512 1024 2048] [--trials 10]
                                             [--ratio 0.25] [--sink 16] [--recent 64] [--no-write]
                                             [--from-json]

Steps, all through edgert's CLI and runtime: score the kv heads with razor and duo (duo also
writes its gates as a full_attention_heads.tsv, which the pattern method then reads) and time
each; export one model per plan (`edgert export tiny-lm --plan`); run the passkey test
(edgert.passkey.evaluate through edgert.Generator, greedy, the same prompts for every model).
Plans: every head full; the top --ratio of kv heads by razor, duo and pattern; the same number
chosen at random (3 seeds); uniform streaming, where every kv head keeps sink + a window sized
so the cache holds the same bytes as the headwise plan at that context (one model per
context). Writes its section of bench/RESULTS.md, raw results to bench/_work/kv_heads/results.json
and the heat maps to bench/kv_heads_check.png (matplotlib: `pip install -e ".[export,bench]"`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "kv_heads"
PLOT = HERE / "kv_heads_check.png"
DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]
RANDOM_SEEDS = (1, 2, 3)


def edgert(*args) -> float:
    """Run the edgert CLI; return its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "edgert", *map(str, args)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def score(args) -> dict[str, dict]:
    """Run razor, duo and pattern; return {method: {"plan", "scores", "wall_s"}}."""
    common = ["--retrieval-ratio", args.ratio, "--sink", args.sink, "--recent", args.recent]
    runs = {
        "razor": ["--method", "razor", "--length", args.razor_length, "--echo-heads", args.echo_heads],
        "duo": ["--method", "duo", "--save-pattern", WORK / "duo_full_attention_heads.tsv",
                "--steps", args.duo_steps, "--context", args.duo_context],
        "pattern": ["--method", "pattern", "--patterns", WORK / "duo_full_attention_heads.tsv"],
    }
    results = {}
    for method, extra in runs.items():  # pattern reads the file duo writes: keep this order
        plan, raw = WORK / f"plan-{method}.json", WORK / f"scores-{method}.json"
        wall = edgert("analyze", "kv-heads", "tiny-lm", *extra, *common, "-o", plan, "--json", raw)
        results[method] = {"plan": plan, "scores": json.loads(raw.read_text()), "wall_s": wall}
        print(f"{method}: {wall:.1f} s")
    return results


def plans(args, scored: dict[str, dict], identity) -> dict[str, Path]:
    """Every plan to evaluate that does not depend on the context: label -> plan JSON."""
    paths = {"all full": WORK / "plan-full.json"}
    identity.save(paths["all full"])
    for method in ("razor", "duo", "pattern"):
        paths[f"headwise {method}"] = scored[method]["plan"]
    for seed in RANDOM_SEEDS:
        rng = np.random.default_rng(seed)
        random_scores = rng.random((len(identity.layers), identity.layers[0].num_kv_heads)).tolist()
        path = WORK / f"plan-random{seed}.json"
        identity.with_windows(args.ratio, args.sink, args.recent, scores=random_scores).save(path)
        paths[f"random (seed {seed})"] = path
    return paths


def uniform_plan(args, identity, context: int, headwise_tokens: int) -> Path:
    """Every kv head sink + a window holding, in all, `headwise_tokens` (token, kv head) pairs."""
    heads = sum(layer.num_kv_heads for layer in identity.layers)
    recent = max(1, headwise_tokens // heads - args.sink)
    path = WORK / f"plan-uniform{context}.json"
    identity.with_windows(0, args.sink, recent, scores=None).save(path)
    return path


def export(plan: Path) -> Path:
    """The tiny LM exported with `plan`, cached by the plan's content."""
    import hashlib

    digest = hashlib.sha1(plan.read_bytes()).hexdigest()[:12]
    model = WORK / "models" / f"{plan.stem}-{digest}.onnx"
    if not model.exists():
        model.parent.mkdir(exist_ok=True)
        edgert("export", "tiny-lm", "--plan", plan, "-o", model)
    return model


def trained_length() -> int:
    """The longest row the tiny LM was trained on (its training record)."""
    from edgert.models.sources import resolve_source

    record = json.loads((resolve_source("tiny-lm").directory / "training.json").read_text())
    return record["config"]["train_context"][1]


def evaluate(model: Path, contexts: list[int], trials: int) -> dict:
    from edgert.generator import Generator
    from edgert.passkey import evaluate as passkey

    return passkey(Generator(model, threads=2), contexts, DEPTHS, trials, seed=0).to_dict()


def run(args) -> dict:
    WORK.mkdir(parents=True, exist_ok=True)
    from edgert.exporters.kv_heads import model_limits
    from edgert.models.sources import resolve_source

    identity, _ = model_limits(resolve_source("tiny-lm"))
    scored = score(args)
    results = {}
    for label, plan in plans(args, scored, identity).items():
        results[label] = evaluate(export(plan), args.contexts, args.trials)
        print(f"{label}: mean accuracy {results[label]['mean_accuracy']:.1%}")
    headwise = results["headwise duo"]
    uniform = {"contexts": args.contexts, "depths": DEPTHS, "trials": args.trials, "accuracy": [],
               "kv_bytes": [], "prompt_tokens": [], "recent": []}
    from edgert.plan import HeadPlan

    duo_plan = HeadPlan.load(scored["duo"]["plan"])
    for c, context in enumerate(args.contexts):
        plan = uniform_plan(args, identity, context, duo_plan.cache_tokens(context))
        one = evaluate(export(plan), [context], args.trials)
        uniform["accuracy"].append(one["accuracy"][0])
        uniform["kv_bytes"].append(one["kv_bytes"][0])
        uniform["prompt_tokens"].append(one["prompt_tokens"][0])
        uniform["recent"].append(HeadPlan.load(plan).layers[0].cache[0].recent)
        assert abs(one["kv_bytes"][0] - headwise["kv_bytes"][c]) <= 0.05 * headwise["kv_bytes"][c]
    uniform["mean_accuracy"] = float(np.mean(uniform["accuracy"]))
    results["uniform streaming"] = uniform
    return {"results": results, "trained_length": trained_length(),
            "scores": {m: s["scores"] for m, s in scored.items()},
            "wall_s": {m: s["wall_s"] for m, s in scored.items()},
            "options": {"ratio": args.ratio, "sink": args.sink, "recent": args.recent, "trials": args.trials,
                        "contexts": args.contexts, "depths": DEPTHS, "duo_steps": args.duo_steps,
                        "duo_context": args.duo_context, "razor_length": args.razor_length,
                        "echo_heads": args.echo_heads}}


def _random_mean(results: dict) -> np.ndarray:
    return np.mean([np.array(results[f"random (seed {s})"]["accuracy"]) for s in RANDOM_SEEDS], axis=0)


def plot(record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores, results = record["scores"], record["results"]
    maps = [("razor induction", scores["razor"]["induction"]), ("razor echo", scores["razor"]["echo"]),
            ("duo gate", scores["duo"]["gates"])]
    rows = [("all full", np.array(results["all full"]["accuracy"])),
            ("headwise razor", np.array(results["headwise razor"]["accuracy"])),
            ("headwise duo", np.array(results["headwise duo"]["accuracy"])),
            ("random (3 seeds)", _random_mean(results)),
            ("uniform streaming", np.array(results["uniform streaming"]["accuracy"]))]
    figure, axes = plt.subplots(2, 5, figsize=(20, 7.5))
    marks = {m: _retrieval_marks(m) for m in ("razor", "duo")}
    for ax, (title, table) in zip(axes[0], maps):
        image = ax.imshow(np.array(table), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        method = "duo" if title.startswith("duo") else "razor"
        for layer, head in marks[method]:
            ax.text(head, layer, "R", ha="center", va="center", color="red", fontsize=12, fontweight="bold")
        layers, heads = np.array(table).shape
        ax.set(title=f"{title} (R = retrieval head)", xlabel="kv head", ylabel="layer",
               xticks=range(heads), yticks=range(layers))
        figure.colorbar(image, ax=ax)
    trained = record["trained_length"]
    inside = [c <= trained for c in record["options"]["contexts"]]
    bars = axes[0][len(maps)]
    labels = [title for title, _ in rows]
    within = [accuracy[inside].mean() for _, accuracy in rows]
    overall = [accuracy.mean() for _, accuracy in rows]
    index = np.arange(len(rows))
    bars.barh(index - 0.2, within, height=0.4, label=f"contexts <= {trained} (trained)")
    bars.barh(index + 0.2, overall, height=0.4, label="all contexts")
    bars.set(yticks=index, yticklabels=labels, xlim=(0, 1), xlabel="passkey accuracy", title="mean accuracy")
    bars.invert_yaxis()
    bars.legend(loc="lower right", fontsize=8)
    axes[0][len(maps) + 1].axis("off")
    contexts, depths = record["options"]["contexts"], record["options"]["depths"]
    for ax, (title, accuracy) in zip(axes[1], rows):
        image = ax.imshow(accuracy.T, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        ax.set(title=f"{title}: {accuracy.mean():.0%}", xlabel="context (tokens)", ylabel="key depth",
               xticks=range(len(contexts)), xticklabels=contexts, yticks=range(len(depths)), yticklabels=depths)
        for i in range(len(contexts)):
            for j in range(len(depths)):
                ax.text(i, j, f"{accuracy[i, j]:.0%}", ha="center", va="center", fontsize=8)
    figure.suptitle("edgert tiny LM: kv-head scores (top) and passkey accuracy (bottom), "
                    f"{record['options']['ratio']:.0%} retrieval heads, sink {record['options']['sink']} + "
                    f"recent {record['options']['recent']}")
    figure.tight_layout()
    figure.savefig(PLOT, dpi=90)


def _retrieval_marks(method: str) -> list[tuple[int, int]]:
    from edgert.plan import HeadPlan

    plan = HeadPlan.load(WORK / f"plan-{method}.json")
    return [(i, k) for i, layer in enumerate(plan.layers) for k, p in enumerate(layer.cache) if p.kind == "full"]


def report(record: dict) -> str:
    from results import machine

    results, options = record["results"], record["options"]
    contexts, trained = options["contexts"], record["trained_length"]
    inside = [c <= trained for c in contexts]
    full = np.array(results["all full"]["accuracy"])

    def line(label: str, accuracy: np.ndarray, kv: list[int]) -> str:
        per_context = " | ".join(f"{a:.0%}" for a in accuracy.mean(axis=1))
        within = accuracy[inside].mean()
        return (f"| {label} | {per_context} | {within:.1%} | {100 * (within - full[inside].mean()):+.1f} | "
                f"{accuracy.mean():.1%} | {100 * (accuracy.mean() - full.mean()):+.1f} | "
                f"{' / '.join(f'{b / 1024:.0f}' for b in kv)} |")

    head = (f"| plan | {' | '.join(f'{c} tok' for c in contexts)} | mean ≤ {trained} | vs full | "
            f"mean, all | vs full | KV KiB at {' / '.join(map(str, contexts))} |\n"
            f"|---|{'---|' * len(contexts)}---|---|---|---|---|")
    lines = [line(label, np.array(results[label]["accuracy"]), results[label]["kv_bytes"])
             for label in ("all full", "headwise razor", "headwise duo", "headwise pattern")]
    for seed in RANDOM_SEEDS:
        label = f"random (seed {seed})"
        lines.append(line(label, np.array(results[label]["accuracy"]), results[label]["kv_bytes"]))
    lines.append(line("random, mean of 3", _random_mean(results), results["random (seed 1)"]["kv_bytes"]))
    uniform = results["uniform streaming"]
    lines.append(line(f"uniform streaming (sink {options['sink']} + recent {'/'.join(map(str, uniform['recent']))})",
                      np.array(uniform["accuracy"]), uniform["kv_bytes"]))
    tokens = " / ".join(f"{t:.0f}" for t in results["all full"]["prompt_tokens"])
    wall = ", ".join(f"{m} {s:.1f} s" for m, s in record["wall_s"].items())
    own = ", ".join(f"{m} {record['scores'][m]['seconds']:.2f} s" for m in record["scores"])
    return f"""## kv_heads_check — choosing retrieval heads on edgert's tiny LM

Machine: {machine()}. Model: `tiny-lm` (models/weights/tiny-lm; 4 layers x 4 kv heads).
Passkey accuracy (edgert.Generator, greedy, {options['trials']} prompts per context and depth,
depths {', '.join(map(str, options['depths']))}; mean prompt lengths {tokens} tokens), with
{options['ratio']:.0%} of kv heads keeping a full cache and the rest sink {options['sink']} +
recent {options['recent']}. Uniform streaming: every kv head keeps sink + a window sized to the
headwise plan's KV bytes at that context.

{head}
{chr(10).join(lines)}

"vs full": percentage points against all-full attention, over the contexts up to the longest
row the tiny LM was trained on ({trained} tokens) and over all contexts.

Time to choose the heads (CLI wall time, model load included): {wall}; the scoring itself: {own}.
duo: {options['duo_steps']} steps at context {options['duo_context']}.
Heat maps: `bench/kv_heads_check.png`.

Command: `.venv/bin/python bench/kv_heads_check.py --contexts {' '.join(map(str, contexts))} --trials {options['trials']} --ratio {options['ratio']} --sink {options['sink']} --recent {options['recent']}`
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 256, 384, 512, 1024, 2048])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--sink", type=int, default=16)
    parser.add_argument("--recent", type=int, default=64)
    parser.add_argument("--razor-length", type=int, default=60,
                        help="razor: random tokens per repeat (60 distinct words of the tiny LM's 62)")
    parser.add_argument("--echo-heads", type=int, default=0, help="razor: echo heads kept first")
    parser.add_argument("--duo-steps", type=int, default=150)
    parser.add_argument("--duo-context", type=int, default=512)
    parser.add_argument("--no-write", action="store_true", help="Print only; leave RESULTS.md and the plot alone.")
    parser.add_argument("--from-json", action="store_true",
                        help="Measure nothing: rewrite the report and plot from the last run's results.json.")
    args = parser.parse_args()
    if args.from_json:
        record = json.loads((WORK / "results.json").read_text())
    else:
        record = run(args)
        (WORK / "results.json").write_text(json.dumps(record, indent=1, default=str))
    text = report(record)
    print(text)
    if not args.no_write:
        from results import write_section

        plot(record)
        write_section("kv_heads_check", text)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
