"""edgert analyze outliers MODEL --calib PATH · edgert analyze heads SOURCE ·
edgert analyze kv-heads SOURCE --method ...

The torch side (head importance, adapters, plan transforms, Hugging Face loading) is imported
inside the command that uses it: `edgert analyze --help` must not load torch or transformers.
"""

from __future__ import annotations

import json

import click
from rich import box
from rich.console import Console
from rich.table import Table

from edgert._io import check_outputs, write_text_atomic
from edgert.cli.options import CommaList, FiniteFloat, WholeNumber
from edgert.cli.outlier_table import outlier_table
from edgert.cli.progress import counted, show_steps
from edgert.errors import OptionError, PlanError
from edgert.exporters import kv_heads as kv
from edgert.models.sources import resolve_source
from edgert.quant.calib import load_calibration
from edgert.quant.outliers import activation_stats
from edgert.session import check_threads, load


@click.group("analyze")
def command() -> None:
    """Analyze a model before quantizing or pruning it."""


@command.command("outliers")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--calib", "calib_path", required=True, type=click.Path(),
              help="Calibration data: a .txt file (one example per line) or an .npz of inputs.")
@click.option("--calib-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="Use at most this many examples.")
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True, help="Rows to print.")
@click.option("--threads", type=int, default=None)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write every tensor's statistics as JSON.")
def outliers(model: str, calib_path: str, calib_size: int, top: int, threads: int | None,
             json_path: str | None) -> None:
    """Per activation tensor: max |x|, kurtosis and SQNR after fake INT8 (uint8,
    per-tensor, min/max range), worst SQNR first."""
    check_threads(threads)
    check_outputs([json_path], inputs=[model, calib_path])
    session = load(model, threads=threads)
    samples = load_calibration(calib_path, session, size=calib_size)
    with counted("analyze outliers: activation passes", 2 * len(samples)) as advance:
        stats = activation_stats(model, samples, threads=threads, progress=advance)
    console = Console()
    console.print(outlier_table(stats[:top], f"{len(stats)} activation tensors over "
                                             f"{len(samples)} examples, worst SQNR first"))
    if json_path:
        write_text_atomic(json_path, json.dumps([s.to_dict() for s in stats], indent=1))


@command.command("heads")
@click.argument("source")
@click.option("--calib", "calib_path", type=click.Path(), default=None,
              help="Calibration data (.txt or .npz). Default: the built-in model's set.")
@click.option("--calib-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the resulting HeadPlan JSON here (for `edgert export --plan`).")
@click.option("--prune", type=float, default=None, metavar="FRACTION",
              help="Drop this fraction of all heads, least important first.")
@click.option("--keep-per-layer", type=CommaList(whole=True, low=0), default=None, metavar="N,N,...",
              help="Keep this many of the most important heads in each layer (0 skips the layer's attention).")
@click.option("--random", "random_seed", type=WholeNumber(0), default=None, metavar="SEED",
              help="Score heads at random instead (the baseline importance must beat).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the per-head scores as JSON.")
def heads(source: str, calib_path: str | None, calib_size: int, output: str | None, prune: float | None,
          keep_per_layer: list[int] | None, random_seed: int | None, json_path: str | None) -> None:
    """Score every attention head of SOURCE (a built-in name or a Hugging Face directory) by
    the mask-gradient importance of Michel et al. (2019), normalised per layer then globally,
    and optionally turn the scores into a pruning plan."""
    from edgert.exporters.heads import Transform, identity_plan
    from edgert.exporters.importance import head_importance, load_for_heads, random_scores
    from edgert.models.adapters import adapt
    from edgert.models.transforms import prune_by_score, prune_plan

    if prune is not None and keep_per_layer is not None:
        raise PlanError("give --prune or --keep-per-layer, not both")
    Transform(prune=prune).check()
    check_outputs([output, json_path], inputs=[source, calib_path])
    with show_steps("analyze heads", {}) as step:
        step("loading model and calibration data")
        model, samples, loss = load_for_heads(source, calib_path, calib_size)
    plan = identity_plan(model)
    counts = _parse_counts(keep_per_layer, plan) if keep_per_layer is not None else None
    if random_seed is not None:
        scores = random_scores(plan, random_seed)
    else:
        adapt(model)
        with counted("analyze heads: scoring on examples", len(samples)) as advance:
            scores = head_importance(model, samples, loss, progress=advance)
    if prune is not None:
        plan = prune_by_score(plan, scores, prune)
    elif counts is not None:
        keep = [sorted(sorted(range(len(row)), key=lambda h: -row[h])[:n]) for row, n in zip(scores, counts)]
        plan = prune_plan(plan, keep)
    Console().print(_scores_table(scores, plan, "random head scores" if random_seed is not None else
                                  f"head importance over {len(samples)} examples"))
    Console().print("heads kept per layer: " + ", ".join(str(len(layer.kept_heads)) for layer in plan.layers)
                    + f" ({plan.kept_heads} of {plan.original_heads})")
    if output:
        plan.save(output)
        Console().print(f"wrote {output}: {plan.kept_heads} of {plan.original_heads} heads kept")
    if json_path:
        write_text_atomic(json_path, json.dumps({"scores": scores.tolist()}, indent=1))


def _parse_counts(counts: list[int], plan) -> list[int]:
    """--keep-per-layer's counts, checked against the model: one per layer, each in [0, heads]."""
    if len(counts) != len(plan.layers):
        raise PlanError(f"--keep-per-layer needs {len(plan.layers)} counts (one per layer), got {len(counts)}")
    heads = plan.layers[0].num_heads
    if any(not 0 <= n <= heads for n in counts):
        raise PlanError(f"--keep-per-layer counts must lie in [0, {heads}]")
    if sum(counts) == 0:
        raise PlanError("--keep-per-layer keeps no head at all; nothing would be left")
    return counts


def _scores_table(scores, plan, title: str) -> Table:
    """One row per layer, one column per head, scores x 100; pruned heads are marked `-`."""
    table = Table(title=f"{title} (x 100; -: pruned by the plan)", box=box.SIMPLE_HEAD, padding=(0, 1),
                  pad_edge=False)
    table.add_column("layer", justify="right", min_width=5, no_wrap=True)
    for h in range(scores.shape[1]):
        table.add_column(str(h), justify="right", min_width=3, no_wrap=True)
    for i, (row, layer) in enumerate(zip(scores, plan.layers)):
        cells = [("" if h in layer.kept_heads else "-") + f"{100 * v:.0f}" for h, v in enumerate(row)]
        table.add_row(str(i), *cells)
    return table


@command.command("kv-heads")
@click.argument("source")
@click.option("--method", type=click.Choice(["pattern", "razor", "duo"]), required=True,
              help="pattern: read DuoAttention gates from --patterns; razor: RazorAttention echo and "
                   "induction scores on repeated random tokens (no training); duo: train DuoAttention "
                   "gates on passkey prompts (the model stays frozen).")
@click.option("--retrieval-ratio", type=FiniteFloat(0, 1), default=None,
              help="Fraction of all kv heads that keep a full cache, best scores first [default: 0.25].")
@click.option("--threshold", type=FiniteFloat(), default=None,
              help="Instead of a ratio: every kv head scoring at least this keeps a full cache.")
@click.option("--sink", type=WholeNumber(0), default=64, show_default=True, help="First tokens a streaming head keeps.")
@click.option("--recent", type=WholeNumber(1), default=256, show_default=True,
              help="Latest tokens a streaming head keeps.")
@click.option("--patterns", default=None, type=click.Path(dir_okay=False),
              help="pattern: a full_attention_heads.tsv (one row per layer, one value per kv head).")
@click.option("--length", type=WholeNumber(2), default=256, show_default=True, help="razor: random tokens per repeat.")
@click.option("--repeats", type=WholeNumber(2), default=4, show_default=True, help="razor: times the tokens repeat.")
@click.option("--echo-heads", type=WholeNumber(0), default=0, show_default=True,
              help="razor: the best echo heads that join the retrieval heads first (RazorAttention "
                   "keeps about 1%% of all heads for echo).")
@click.option("--seed", type=WholeNumber(0), default=0, show_default=True, help="razor/duo: seed of the random data.")
@click.option("--steps", type=WholeNumber(1), default=100, show_default=True, help="duo: optimisation steps.")
@click.option("--context", type=WholeNumber(2), default=512, show_default=True,
              help="duo: passkey prompt length in tokens.")
@click.option("--batch-size", type=WholeNumber(1, kv.MAX_DUO_BATCH), default=4, show_default=True,
              help="duo: prompts per step.")
@click.option("--lr", "learning_rate", type=FiniteFloat(0, low_open=True), default=0.02, show_default=True,
              help="duo: Adam learning rate.")
@click.option("--l1", type=FiniteFloat(0), default=0.05, show_default=True,
              help="duo: weight of the gates' L1 penalty.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The HeadPlan JSON to write.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the raw scores (and duo's training history) as JSON.")
@click.option("--save-pattern", type=click.Path(dir_okay=False), default=None,
              help="Write the ranking scores as a full_attention_heads.tsv (DuoAttention's format).")
def kv_heads(source: str, method: str, retrieval_ratio: float | None, threshold: float | None, sink: int,
             recent: int, patterns: str | None, length: int, repeats: int, echo_heads: int, seed: int,
             steps: int, context: int, batch_size: int, learning_rate: float, l1: float, output: str,
             json_path: str | None, save_pattern: str | None) -> None:
    """Choose the retrieval heads (full KV cache) and streaming heads (sink + recent tokens)
    of a decoder; writes a HeadPlan for `edgert export --plan`. SOURCE: a built-in name
    (e.g. tiny-lm) or a Hugging Face model directory."""
    from edgert.exporters.hf_loading import quiet_libraries

    if retrieval_ratio is not None and threshold is not None:
        raise OptionError("give --retrieval-ratio or --threshold, not both")
    if retrieval_ratio is None and threshold is None:
        retrieval_ratio = 0.25
    resolved = resolve_source(source)
    check_outputs([output, json_path, save_pattern], inputs=[resolved.directory, patterns])
    options = kv.AnalyzeOptions(method, sink, recent, patterns, length, repeats, echo_heads, seed, steps,
                                context, batch_size, learning_rate, l1)
    identity, max_length = kv.model_limits(resolved)
    options.check(identity, max_length)
    if method != "pattern":
        quiet_libraries()
    units = len(identity.layers) if method == "razor" else steps if method == "duo" else 1
    with counted(f"analyze kv-heads ({method})", units) as advance:
        scores = kv.score_heads(resolved, options, identity, progress=lambda: advance(1))
    plan = kv.choose_heads(identity, scores, ratio=retrieval_ratio, threshold=threshold, sink=sink, recent=recent,
                           max_length=max_length)
    Console().print(kv_head_table(scores, plan))
    plan.save(output)
    if json_path:
        write_text_atomic(json_path, json.dumps(scores.to_dict(), indent=1))
    if save_pattern:
        kv.write_pattern(save_pattern, scores.scores)
    total = sum(layer.num_kv_heads for layer in plan.layers)
    click.echo(f"{plan.retrieval_heads} of {total} kv heads keep a full cache, the others sink {sink} + "
               f"recent {recent}; {method} took {scores.seconds:.2f} s -> {output}")


def kv_head_table(scores, plan) -> Table:
    """One row per layer: each kv head's score(s), retrieval heads marked with *."""
    tables = scores.tables
    table = Table(title=f"kv heads by {scores.method} score (* = retrieval: full cache)")
    table.add_column("layer", justify="right")
    num_kv = len(scores.scores[0])
    for k in range(num_kv):
        table.add_column(f"kv {k}", justify="right")
    shown = "/".join(tables) if len(tables) > 1 else next(iter(tables), "score")
    for i, layer in enumerate(plan.layers):
        cells = []
        for k in range(num_kv):
            values = "/".join(f"{t[i][k]:.2f}" for t in tables.values()) if tables else f"{scores.scores[i][k]:.2f}"
            cells.append(("*" if layer.cache[k].kind == "full" else "") + values)
        table.add_row(str(i), *cells)
    table.caption = f"cells: {shown}"
    return table
