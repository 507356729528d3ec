"""edgert generate MODEL (--prompt-ids 1,2,3 | --prompt TEXT) --max-new-tokens N"""

from __future__ import annotations

import json
import sys
import time

import click

from edgert._io import check_outputs, write_text_atomic
from edgert.cli.options import CommaList, FiniteFloat, WholeNumber
from edgert.devices import DEVICES
from edgert.errors import InputError
from edgert.generator import Generator
from edgert.memory import format_bytes


@click.command("generate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--prompt-ids", type=CommaList(whole=True), default=None, metavar="ID,ID,...",
              help="The prompt as token ids, e.g. 1,2,3.")
@click.option("--prompt", default=None, metavar="TEXT",
              help="The prompt as text, tokenized with the model's own tokenizer.")
@click.option("--max-new-tokens", type=WholeNumber(1), required=True, help="Tokens to generate at most.")
@click.option("--temperature", type=FiniteFloat(0), default=0.0, show_default=True,
              help="0 is greedy; otherwise sample from softmax(logits / temperature).")
@click.option("--top-k", type=WholeNumber(1), default=None, help="Sample among the K likeliest tokens only.")
@click.option("--top-p", type=FiniteFloat(0, 1, low_open=True), default=None,
              help="Sample among the smallest set of tokens whose probability reaches P (0 < P <= 1).")
@click.option("--seed", type=WholeNumber(0), default=None, help="Seed of the sampler (reproducible sampling).")
@click.option("--stop-ids", type=CommaList(whole=True), default=None, metavar="ID,ID,...",
              help="Token ids that end generation (kept in the output). Default: the model's "
                   "end-of-sequence ids.")
@click.option("--no-stop", is_flag=True, help="Never stop early: generate exactly --max-new-tokens.")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write prompt_ids, tokens, text, seconds, ttft_s and kv_bytes as JSON.")
def command(model: str, prompt_ids: list[int] | None, prompt: str | None, max_new_tokens: int,
            temperature: float, top_k: int | None, top_p: float | None, seed: int | None,
            stop_ids: list[int] | None, no_stop: bool, device: str, threads: int | None,
            json_path: str | None) -> None:
    """Generate tokens after a prompt with a decoder exported by `edgert export`.

    Prints the new token ids on one line as they are generated, then the text when the
    model carries a tokenizer, then a summary: prompt and new tokens, time to first
    token, tokens/s after it, and the KV cache's size.
    """
    if (prompt_ids is None) == (prompt is None):
        raise InputError("give the prompt either as --prompt-ids 1,2,3 or as --prompt TEXT")
    if stop_ids is not None and no_stop:
        raise InputError("give --stop-ids or --no-stop, not both")
    ids = prompt_ids
    stop = () if no_stop else stop_ids
    check_outputs([json_path], inputs=[model])
    generator = Generator(model, device=device, threads=threads)
    if ids is None:
        if not generator.has_tokenizer:
            raise InputError(f"{generator.session.path.name} carries no tokenizer, so --prompt cannot "
                             "be tokenized; give the prompt as token ids with --prompt-ids")
        ids = generator.encode(prompt)
    for token in stop or ():
        if not 0 <= token < generator.vocab_size:
            raise InputError(f"--stop-ids: token id {token} is outside the vocabulary "
                             f"[0, {generator.vocab_size})")

    tokens, ttft, seconds = print_stream(generator.stream(
        ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop))
    text = generator.decode(tokens) if generator.has_tokenizer else None
    if text is not None:
        click.echo(f"text: {text!r}")
    stopped = tokens[-1] if len(tokens) < max_new_tokens else None
    kv_bytes = generator.cache_bytes()
    click.echo(summary(len(ids), len(tokens), ttft, seconds, kv_bytes, stopped))
    if json_path:
        result = {"prompt_ids": ids, "tokens": tokens, **({"text": text} if text is not None else {}),
                  "seconds": seconds, "ttft_s": ttft, "kv_bytes": kv_bytes}
        write_text_atomic(json_path, json.dumps(result, indent=1), inputs=[model])
        click.echo(f"wrote {json_path}")


def print_stream(stream) -> tuple[list[int], float, float]:
    """Print each token id of `stream` on one line as soon as it exists; return the ids, the
    seconds to the first one and the seconds to the last (both from this call: stream only
    starts working when first iterated)."""
    start = time.perf_counter()
    tokens: list[int] = []
    ttft = 0.0
    for token in stream:
        if not tokens:
            ttft = time.perf_counter() - start
        tokens.append(token)
        sys.stdout.write(f"{' ' if len(tokens) > 1 else ''}{token}")
        sys.stdout.flush()  # shown on a terminal, or handed to a pipe's reader, at once
    seconds = time.perf_counter() - start
    sys.stdout.write("\n")
    return tokens, ttft, seconds


def summary(prompt_tokens: int, new_tokens: int, ttft: float, seconds: float, kv_bytes: int,
            stopped_by: int | None) -> str:
    """One line: prompt and new tokens, time to first token, decode tokens/s, KV cache size."""
    line = (f"prompt {prompt_tokens} tokens, {new_tokens} new"
            + (f" (stopped at id {stopped_by})" if stopped_by is not None else "")
            + f"; first token {ttft * 1e3:.1f} ms")
    if new_tokens > 1:
        line += f", then {(new_tokens - 1) / (seconds - ttft):.1f} tokens/s"
    return line + f"; KV cache {format_bytes(kv_bytes)}"
