"""edgert eval passkey MODEL --context 256,512 --depths 0,0.5,1 --trials N"""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from edgert._io import check_outputs, write_text_atomic
from edgert.cli.options import CommaList, WholeNumber
from edgert.cli.progress import counted
from edgert.devices import DEVICES
from edgert.generator import Generator
from edgert.passkey import MAX_TRIALS, check_request, evaluate


@click.group("eval")
def command() -> None:
    """Evaluate an exported model's accuracy."""


@command.command("passkey")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--context", "contexts", type=CommaList(whole=True, low=1), default="256,512,1024,2048",
              show_default=True, help="Prompt lengths in tokens.")
@click.option("--depths", type=CommaList(whole=False, low=0, high=1), default="0,0.25,0.5,0.75,1",
              show_default=True, help="Where the key sits in the filler: 0 = start, 1 = just before the question.")
@click.option("--trials", type=WholeNumber(1, MAX_TRIALS), default=10, show_default=True,
              help="Prompts (random keys) per context and depth, decoded as one batch.")
@click.option("--seed", type=WholeNumber(0), default=0, show_default=True, help="Seed of keys and filler.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the accuracies, prompt lengths and KV bytes as JSON.")
def passkey(model: str, contexts: list[int], depths: list[float], trials: int, seed: int, device: str,
            threads: int | None, json_path: str | None) -> None:
    """Passkey retrieval accuracy of a decoder exported by `edgert export`, through the same
    edgert.Generator applications use: a 5-digit key hidden in filler text at each depth,
    asked for at the end, greedy decoding."""
    check_outputs([json_path], inputs=[model])
    generator = Generator(model, device=device, threads=threads)
    contexts, depths, trials, seed = check_request(generator, contexts, depths, trials, seed)
    with counted("eval passkey", trials * len(contexts) * len(depths)) as advance:
        result = evaluate(generator, contexts, depths, trials, seed=seed, progress=advance)
    Console().print(passkey_table(result, model))
    if json_path:
        write_text_atomic(json_path, json.dumps({"model": model, **result.to_dict()}, indent=1), inputs=[model])


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
