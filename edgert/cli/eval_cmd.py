"""edgert eval passkey MODEL --context 256,512 --depths 0,0.5,1 --trials N"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from edgert.devices import DEVICES
from edgert.errors import InputError


@click.group("eval")
def command() -> None:
    """Evaluate an exported model's accuracy."""


def parse_numbers(text: str, what: str, kind: type) -> list:
    """'256,512' -> [256, 512]; InputError naming `what` otherwise."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"{what} takes comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise InputError(f"{what} is empty")
    return values


@command.command("passkey")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--context", "contexts", default="256,512,1024,2048", show_default=True, metavar="N,N,...",
              help="Prompt lengths in tokens.")
@click.option("--depths", default="0,0.25,0.5,0.75,1", show_default=True, metavar="D,D,...",
              help="Where the key sits in the filler: 0 = start, 1 = just before the question.")
@click.option("--trials", type=click.IntRange(min=1), default=10, show_default=True,
              help="Prompts (random keys) per context and depth.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of keys and filler.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the accuracies, prompt lengths and KV bytes as JSON.")
def passkey(model: str, contexts: str, depths: str, trials: int, seed: int, device: str,
            threads: int | None, json_path: str | None) -> None:
    """Passkey retrieval accuracy of a decoder exported by `edgert export`, through the same
    edgert.Generator applications use: a 5-digit key hidden in filler text at each depth,
    asked for at the end, greedy decoding."""
    from edgert._io import check_output_path, write_text_atomic
    from edgert.cli.progress import counted
    from edgert.generator import Generator
    from edgert.passkey import check_request, evaluate

    context_list = parse_numbers(contexts, "--context", int)
    depth_list = parse_numbers(depths, "--depths", float)
    if json_path:
        check_output_path(json_path, inputs=[model])
    generator = Generator(model, device=device, threads=threads)
    check_request(generator, context_list, depth_list, trials)
    with counted("eval passkey", trials * len(context_list) * len(depth_list)) as advance:
        result = evaluate(generator, context_list, depth_list, trials, seed=seed, progress=advance)
    Console().print(passkey_table(result, model))
    if json_path:
        write_text_atomic(json_path, json.dumps({"model": model, **result.to_dict()}, indent=1))


def passkey_table(result, title: str) -> Table:
    """Accuracy by context (rows) and depth (columns), with prompt tokens and KV bytes."""
    table = Table(title=f"passkey accuracy by context and key depth: {title} ({result.trials} trials per cell)")
    table.add_column("context", justify="right", no_wrap=True, min_width=7)
    for depth in result.depths:
        table.add_column(f"{depth:g}", justify="right")
    table.add_column("mean", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("KV MiB", justify="right")
    for c, context in enumerate(result.contexts):
        cells = [f"{result.accuracy(c, d):.0%}" for d in range(len(result.depths))]
        mean = sum(result.hits[c]) / (result.trials * len(result.depths))
        table.add_row(str(context), *cells, f"{mean:.0%}", f"{result.prompt_tokens[c]:.0f}",
                      f"{result.kv_bytes[c] / 2**20:.2f}")
    table.caption = (f"depth 0 = key right after the instruction, 1 = just before the question; "
                     f"mean accuracy {result.mean_accuracy:.1%}; {result.seconds:.1f} s")
    return table
