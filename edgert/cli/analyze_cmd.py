"""edgert analyze outliers MODEL --calib PATH"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table


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
    import edgert
    from edgert._io import check_outputs, write_text_atomic
    from edgert.cli.progress import counted
    from edgert.quant.calib import load_calibration
    from edgert.quant.outliers import activation_stats
    from edgert.session import check_threads

    check_threads(threads)
    check_outputs([json_path], inputs=[model, calib_path])
    session = edgert.load(model, threads=threads)
    samples = load_calibration(calib_path, session, size=calib_size)
    with counted("analyze outliers: activation passes", 2 * len(samples)) as advance:
        stats = activation_stats(model, samples, threads=threads, progress=advance)
    console = Console()
    console.print(outlier_table(stats[:top], f"{len(stats)} activation tensors over "
                                             f"{len(samples)} examples, worst SQNR first"))
    if json_path:
        write_text_atomic(json_path, json.dumps([s.to_dict() for s in stats], indent=1))


def outlier_table(stats, title: str) -> Table:
    """A table of TensorStats rows, worst first as given."""
    table = Table(title=title)
    for column in ("tensor", "op", "module", "max |x|", "kurtosis", "SQNR dB"):
        table.add_column(column, justify="left" if column in ("tensor", "op", "module") else "right")
    for s in stats:
        table.add_row(s.name, s.op_type, s.where, f"{s.max_abs:.3g}", f"{s.kurtosis:.1f}", f"{s.sqnr_db:.1f}")
    return table


@command.command("heads")
@click.argument("source")
@click.option("--calib", "calib_path", type=click.Path(), default=None,
              help="Calibration data (.txt or .npz). Default: the built-in model's set.")
@click.option("--calib-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write the resulting HeadPlan JSON here (for `edgert export --plan`).")
@click.option("--prune", type=float, default=None, metavar="FRACTION",
              help="Drop this fraction of all heads, least important first.")
@click.option("--keep-per-layer", default=None, metavar="N,N,...",
              help="Keep this many of the most important heads in each layer (0 skips the layer's attention).")
@click.option("--random", "random_seed", type=int, default=None, metavar="SEED",
              help="Score heads at random instead (the baseline importance must beat).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the per-head scores as JSON.")
def heads(source: str, calib_path: str | None, calib_size: int, output: str | None, prune: float | None,
          keep_per_layer: str | None, random_seed: int | None, json_path: str | None) -> None:
    """Score every attention head of SOURCE (a built-in name or a Hugging Face directory) by
    the mask-gradient importance of Michel et al. (2019), normalised per layer then globally,
    and optionally turn the scores into a pruning plan."""
    from edgert._io import check_outputs, write_text_atomic
    from edgert.cli.progress import counted, show_steps
    from edgert.errors import PlanError
    from edgert.exporters.heads import Transform, identity_plan
    from edgert.exporters.importance import (
        head_importance,
        load_for_heads,
        random_scores,
    )
    from edgert.models.adapters import adapt
    from edgert.models.transforms import prune_by_score, prune_plan

    if prune is not None and keep_per_layer is not None:
        raise PlanError("give --prune or --keep-per-layer, not both")
    Transform(prune=prune).check()
    check_outputs([output, json_path], inputs=[calib_path])
    with show_steps("analyze heads", {}) as step:
        step("loading model and calibration data")
        model, samples, loss = load_for_heads(source, calib_path, calib_size)
    plan = identity_plan(model)
    counts = _parse_counts(keep_per_layer, plan) if keep_per_layer else None
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


def _parse_counts(text: str, plan) -> list[int]:
    from edgert.errors import PlanError

    try:
        counts = [int(v) for v in text.split(",")]
    except ValueError:
        raise PlanError(f"--keep-per-layer takes comma-separated integers, got {text!r}") from None
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
    from rich import box

    table = Table(title=f"{title} (x 100; -: pruned by the plan)", box=box.SIMPLE_HEAD, padding=(0, 1),
                  pad_edge=False)
    table.add_column("layer", justify="right", min_width=5, no_wrap=True)
    for h in range(scores.shape[1]):
        table.add_column(str(h), justify="right", min_width=3, no_wrap=True)
    for i, (row, layer) in enumerate(zip(scores, plan.layers)):
        cells = [("" if h in layer.kept_heads else "-") + f"{100 * v:.0f}" for h, v in enumerate(row)]
        table.add_row(str(i), *cells)
    return table
