"""Which kv heads need a full cache: three ways to score them, one way to turn scores into a plan.

- pattern: DuoAttention's published `full_attention_heads.tsv` (one row per layer, one gate
  per kv head), read as scores.
- razor (RazorAttention, training-free): feed random tokens repeated a few times; a head's
  echo score is its attention to the same token in earlier repeats, its induction score its
  attention to the token after that one. Query heads are max-pooled per kv head.
- duo (DuoAttention): one gate alpha in [0, 1] per kv head mixes full and streaming
  attention, `alpha * full + (1 - alpha) * streaming`; the gates are trained on passkey
  prompts to keep the final hidden states of the full model (mean squared error over the
  question and answer) while an L1 penalty pushes them to 0. The model stays frozen.

Both razor and duo run the Hugging Face model itself with an attention function registered
through transformers' AttentionInterface, so every family transformers runs works here and
no attention matrix is kept beyond the layer that made it.

torch and transformers (and the modules built on them) are imported inside the functions that
run the model: `edgert analyze --help` imports this module for its option checks.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from edgert._io import write_text_atomic
from edgert.checks import finite_number, whole_number
from edgert.errors import OptionError, PlanError, shown_path
from edgert.memory import check_memory
from edgert.passkey import QUESTION, bare_prompt_tokens, passkey_prompt, token_counter
from edgert.plan import CachePolicy, HeadPlan, read_gate_table
from edgert.text import generation_tokenizer

METHODS = ("pattern", "razor", "duo")
# What the methods hold at once, as floors (a run they refuse could not fit): razor keeps one
# layer's attention probabilities [heads, T, T] float32 and, per (query, key) pair, its echo and
# induction masks (float32) and visible()'s distances (int64); duo keeps, for the backward pass,
# every layer's full and streaming probabilities [batch, heads, T, T] float32.
RAZOR_MASK_BYTES = 4 + 4 + 8
DUO_PROBABILITIES_HELD = 2
# duo's prompts per step: DuoAttention trains with one; more than this is a typo, not a batch.
MAX_DUO_BATCH = 1024
_ATTENTION = "edgert_kv_heads"


@dataclass
class HeadScores:
    """Per (layer, kv head) scores, higher = more of a retrieval head. `scores` ranks the
    heads; `tables` holds every raw table the method made (echo, induction, gates...)."""

    method: str
    scores: list[list[float]]
    tables: dict[str, list[list[float]]] = field(default_factory=dict)
    seconds: float = 0.0
    options: dict[str, object] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"method": self.method, "scores": self.scores, **self.tables,
                "seconds": round(self.seconds, 2), "options": self.options, "history": self.history}


def choose_heads(identity: HeadPlan, scores: HeadScores, *, ratio: float | None, threshold: float | None,
                 sink: int, recent: int, max_length: int | None = None) -> HeadPlan:
    """The plan keeping a full cache on the `ratio` best-scoring kv heads of the whole model,
    or on every head scoring at least `threshold`; the others keep sink + recent tokens (at
    most `max_length`, the model's limit). PlanError for scores that are not finite."""
    table = scores.scores
    shape = [layer.num_kv_heads for layer in identity.layers]
    if [len(row) for row in table] != shape:
        raise PlanError(f"{scores.method} scores have shape {len(table)} layers x "
                        f"{sorted({len(r) for r in table})} kv heads; the model has {len(shape)} x {shape[0]}")
    bad = next(((i, k, v) for i, row in enumerate(table) for k, v in enumerate(row)
                if not (isinstance(v, numbers.Real) and math.isfinite(v))), None)
    if bad is not None:
        raise PlanError(f"{scores.method} scored layer {bad[0]} kv head {bad[1]} {bad[2]}; "
                        "a plan needs finite scores")
    if threshold is not None:
        threshold = finite_number(threshold, "threshold", error=PlanError)
        retrieval = int(sum(v >= threshold for row in table for v in row))
    elif ratio is not None:
        # a float, so that with_windows reads it as a fraction even when it is 0 or 1, never a count
        retrieval = finite_number(ratio, "a retrieval ratio", low=0, high=1, error=PlanError)
    else:
        raise PlanError("choose retrieval heads by a ratio or a threshold")
    return identity.with_windows(retrieval, sink, recent, scores=table, max_length=max_length)


def read_pattern(path, num_layers: int, num_kv_heads: int) -> HeadScores:
    """A DuoAttention `full_attention_heads.tsv` as scores; PlanError unless it is a table
    of num_layers rows by num_kv_heads columns."""
    rows = read_gate_table(path)
    if len(rows) != num_layers or len(rows[0]) != num_kv_heads:
        raise PlanError(f"{shown_path(path)} is {len(rows)} rows x {len(rows[0])} columns; the model "
                        f"needs {num_layers} rows (layers) x {num_kv_heads} columns (kv heads)")
    return HeadScores("pattern", rows, {"gates": rows}, options={"patterns": str(path)})


def write_pattern(path, table: list[list[float]]) -> None:
    """Write scores in DuoAttention's `full_attention_heads.tsv` format (atomically)."""
    write_text_atomic(path, "".join("\t".join(f"{v:.6g}" for v in row) + "\n" for row in table))


@contextmanager
def attention_function(model, function: Callable) -> Iterator[None]:
    """Run `model`'s attention through `function(module, query, key, value)` -> [B, S, H, d]
    (query [B, H, S, d], key/value [B, kv, S, d], RoPE applied, no padding) while inside."""
    from transformers import AttentionInterface

    def adapter(module, query, key, value, attention_mask, *args, **kwargs):
        return function(module, query, key, value), None

    AttentionInterface.register(_ATTENTION, adapter)
    previous = model.config._attn_implementation
    model.set_attn_implementation(_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def visible(length: int, sink: int | None = None, recent: int | None = None):
    """[T, T] bool: which keys each query sees; causal, and with sink/recent a streaming
    head's view (key p' seen from query p when p' < sink or p - p' <= recent, as exported)."""
    import torch

    index = torch.arange(length)
    distance = index.view(-1, 1) - index.view(1, -1)
    allowed = distance >= 0
    if sink is not None:
        allowed = allowed & ((index.view(1, -1) < sink) | (distance <= recent))
    return allowed


def attend(module, query, key, value, allowed):
    """Softmax attention (probabilities [B, H, T, T], context [B, H, T, d]) of query heads
    over their kv heads (GQA: query head h reads kv head h // groups, as transformers does)."""
    import torch

    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * module.scaling
    probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return probs, torch.matmul(probs, value)


def razor_scores(model, *, length: int = 256, repeats: int = 4, seed: int = 0,
                 bos_token_id: int | None = None, special_ids: frozenset[int] = frozenset(),
                 progress: Callable[[], None] | None = None) -> HeadScores:
    """RazorAttention's echo and induction scores of every kv head on `length` random token
    ids (never `special_ids`) repeated `repeats` times, prefixed with BOS when the model has one. Scores average
    over the queries of every repeat after the first, then max-pool over each kv head's
    query heads. Ranking: induction."""
    import torch

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    allowed = np.setdiff1d(np.arange(model.config.vocab_size), sorted(special_ids))
    # distinct ids when the vocabulary allows: a repeated id would make "the token after it" ambiguous
    tokens = rng.choice(allowed, size=length, replace=length > len(allowed))
    ids = np.tile(tokens, repeats)
    offset = 0
    if bos_token_id is not None:
        ids, offset = np.concatenate([[bos_token_id], ids]), 1
    total = len(ids)
    position = np.arange(total) - offset  # BOS at -1
    repeat, column = position // length, position % length
    # echo[q, p]: p holds q's token in an earlier repeat; induction[q, p]: p follows such a token.
    is_echo = ((repeat[:, None] > repeat[None, :]) & (position[None, :] >= 0)
               & (column[:, None] == column[None, :]))
    is_induction = np.zeros_like(is_echo)
    is_induction[:, 1:] = is_echo[:, :-1]
    queries = torch.from_numpy(repeat >= 1)
    echo_mask, induction_mask = torch.from_numpy(is_echo).float(), torch.from_numpy(is_induction).float()
    causal = visible(total)
    echo_rows: dict[int, list[float]] = {}
    induction_rows: dict[int, list[float]] = {}

    def probe(module, query, key, value):
        groups = query.shape[1] // key.shape[1]
        batched_probs, context = attend(module, query, key, value, causal)
        probs = batched_probs[0]  # [H, T, T]
        echo_per_head = (probs * echo_mask).sum(-1)[:, queries].mean(-1)  # [H]
        induction_per_head = (probs * induction_mask).sum(-1)[:, queries].mean(-1)
        pool = lambda per_head: per_head.view(-1, groups).amax(-1).tolist()  # noqa: E731
        echo_rows[module.layer_idx], induction_rows[module.layer_idx] = pool(echo_per_head), pool(induction_per_head)
        if progress:
            progress()
        return context.transpose(1, 2)

    with torch.no_grad(), attention_function(model, probe):
        model(input_ids=torch.from_numpy(ids).view(1, -1), use_cache=False)
    layers = sorted(induction_rows)
    echo_table = [echo_rows[i] for i in layers]
    induction_table = [induction_rows[i] for i in layers]
    return HeadScores("razor", induction_table, {"echo": echo_table, "induction": induction_table},
                      time.perf_counter() - start, {"length": length, "repeats": repeats, "seed": seed})


def razor_ranking(scores: HeadScores, echo_heads: int) -> HeadScores:
    """RazorAttention keeps the top echo heads as well as the top induction heads: the
    `echo_heads` best echo heads rank first, then every head by induction score."""
    if echo_heads <= 0:
        return scores
    echo = scores.tables["echo"]
    best = sorted(((v, i, k) for i, row in enumerate(echo) for k, v in enumerate(row)), reverse=True)
    chosen = {(i, k) for _, i, k in best[:echo_heads]}
    ranked = [[2.0 + echo[i][k] if (i, k) in chosen else v for k, v in enumerate(row)]
              for i, row in enumerate(scores.scores)]
    return HeadScores(scores.method, ranked, scores.tables, scores.seconds,
                      {**scores.options, "echo_heads": echo_heads}, scores.history)


def duo_gates(model, batches: Callable[[], tuple[object, object]], *, sink: int, recent: int, steps: int,
              learning_rate: float = 0.02, l1: float = 0.05,
              progress: Callable[[], None] | None = None) -> HeadScores:
    """DuoAttention gates of every kv head. `batches()` returns (ids [B, T], supervised [B, T]
    bool): the positions whose final hidden states must match the full model's."""
    import torch

    start = time.perf_counter()
    config = model.config
    kv = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    gates = torch.ones(config.num_hidden_layers, kv, requires_grad=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # the model stays frozen: only the gates learn
        p.requires_grad_(False)
    masks: dict[str, object] = {}

    def mixed(module, query, key, value):
        groups = query.shape[1] // key.shape[1]
        _, full = attend(module, query, key, value, masks["causal"])
        if masks.get("teacher"):
            return full.transpose(1, 2)
        _, streaming = attend(module, query, key, value, masks["window"])
        alpha = gates[module.layer_idx].repeat_interleave(groups).view(1, -1, 1, 1)
        return (alpha * full + (1 - alpha) * streaming).transpose(1, 2)

    optimizer = torch.optim.Adam([gates], lr=learning_rate)
    history = []
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    with attention_function(model, mixed), _restore_grad(trainable):
        for step in range(steps):
            ids, supervised = batches()
            masks["causal"], masks["window"] = visible(ids.shape[1]), visible(ids.shape[1], sink, recent)
            with torch.no_grad():
                masks["teacher"] = True
                target = base(input_ids=ids, use_cache=False).last_hidden_state[supervised]
                masks["teacher"] = False
            hidden = base(input_ids=ids, use_cache=False).last_hidden_state[supervised]
            distill = ((hidden - target) ** 2).sum(-1).mean() / (target**2).sum(-1).mean()
            loss = distill + l1 * gates.abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                gates.clamp_(0, 1)
            if step % 10 == 0 or step == steps - 1:
                history.append({"step": step, "distill": round(distill.item(), 6),
                                "mean_gate": round(gates.mean().item(), 4)})
            if progress:
                progress()
    table = [[round(v, 6) for v in row] for row in gates.detach().tolist()]
    return HeadScores("duo", table, {"gates": table}, time.perf_counter() - start,
                      {"sink": sink, "recent": recent, "steps": steps, "learning_rate": learning_rate,
                       "l1": l1}, history)


@contextmanager
def _restore_grad(parameters: list) -> Iterator[None]:
    try:
        yield
    finally:
        for p in parameters:
            p.requires_grad_(True)


def passkey_batches(tokenizer, *, context: int, batch_size: int, seed: int) -> Callable[[], tuple]:
    """A function returning a batch of tokenized passkey prompts with their answers, and which
    positions to supervise: the question and the answer (where retrieval matters)."""
    import torch

    rng = np.random.default_rng(seed)
    count = token_counter(tokenizer)
    answer = count(QUESTION) + count(" 12345.")
    shortest = bare_prompt_tokens(count) + answer + 1
    if context < shortest:
        raise OptionError(f"--context {context} is shorter than duo's passkey prompt and answer ({shortest} "
                          "tokens without filler)")
    pad = tokenizer.token_to_id("<pad>") or 0

    def batch():
        rows = []
        for _ in range(batch_size):
            prompt = passkey_prompt(count, context - answer - 1, float(rng.random()), rng)
            ids = tokenizer.encode(prompt.text).ids + tokenizer.encode(f" {prompt.key}.", add_special_tokens=False).ids
            rows.append(ids)
        length = max(len(r) for r in rows)
        ids = torch.full((batch_size, length), pad, dtype=torch.long)
        supervised = torch.zeros(ids.shape, dtype=torch.bool)
        for i, r in enumerate(rows):  # right padding: causal attention keeps it out of every real row
            ids[i, :len(r)] = torch.tensor(r)
            supervised[i, len(r) - answer:len(r)] = True
        return ids, supervised

    return batch


@dataclass
class AnalyzeOptions:
    """What `edgert analyze kv-heads` was asked; see the CLI for each option's meaning."""

    method: str
    sink: int = 64
    recent: int = 256
    patterns: str | None = None
    length: int = 256  # razor
    repeats: int = 4
    echo_heads: int = 0
    seed: int = 0
    steps: int = 100  # duo
    context: int = 512
    batch_size: int = 4
    learning_rate: float = 0.02
    l1: float = 0.05

    def check(self, identity: HeadPlan, max_length: int) -> None:
        """OptionError (PlanError for the window) for options no run on this model could use,
        before the model is loaded: values out of range, sequences longer than its max_length,
        attention matrices larger than the memory available. identity: the model's
        identity plan (model_limits)."""
        if self.method not in METHODS:
            raise OptionError(f"unknown method {self.method!r} ({', '.join(METHODS)})")
        CachePolicy("window", self.sink, self.recent).check("--sink/--recent", max_length)
        whole_number(self.seed, "--seed", low=0)
        heads, layers = identity.layers[0].num_heads, len(identity.layers)
        if self.method == "pattern" and self.patterns is None:
            raise OptionError("--method pattern needs --patterns FILE (DuoAttention's full_attention_heads.tsv)")
        if self.method == "razor":
            whole_number(self.length, "--length", low=2)
            whole_number(self.repeats, "--repeats", low=2)
            whole_number(self.echo_heads, "--echo-heads", low=0, high=sum(x.num_kv_heads for x in identity.layers))
            tokens = self.length * self.repeats + 1
            if tokens > max_length:
                raise OptionError(f"razor's {self.repeats} x {self.length} tokens exceed the model's limit "
                                  f"({max_length})")
            check_memory(tokens * tokens * (4 * heads + RAZOR_MASK_BYTES), "a razor scoring pass",
                         advice="use a smaller --length or --repeats")
        if self.method == "duo":
            whole_number(self.steps, "--steps", low=1)
            whole_number(self.batch_size, "--batch-size", low=1, high=MAX_DUO_BATCH)
            whole_number(self.context, "--context", low=2)
            if self.context > max_length:
                raise OptionError(f"--context {self.context} is longer than the model's limit ({max_length})")
            finite_number(self.learning_rate, "--lr", low=0, low_open=True)
            finite_number(self.l1, "--l1", low=0)
            probabilities = 4 * self.batch_size * heads * self.context**2
            check_memory(DUO_PROBABILITIES_HELD * layers * probabilities, "a duo training step",
                         advice="use a shorter --context or a smaller --batch-size")


def model_limits(source) -> tuple[HeadPlan, int]:
    """The identity plan of a decoder and its longest sequence, read from its config alone."""
    from edgert.exporters.hf_loading import load_config
    from edgert.models.adapters import config_shape

    config = load_config(source, "decoder")
    shape = config_shape(config)
    identity = HeadPlan.full(shape.num_layers, shape.num_heads, shape.num_kv_heads, head_dim=shape.head_dim)
    return identity, config.max_position_embeddings


def score_heads(source, options: AnalyzeOptions, identity: HeadPlan,
                progress: Callable[[], None] | None = None) -> HeadScores:
    """Score every kv head of the decoder `source` (a resolved ModelSource) with one method.
    identity and the checked options come from model_limits and AnalyzeOptions.check."""
    if options.method == "pattern":
        return read_pattern(options.patterns, len(identity.layers), identity.layers[0].num_kv_heads)
    from edgert.exporters.decoder import load

    loaded = load(source)
    special = loaded.special_tokens
    if options.method == "razor":
        specials = {special["bos_token_id"], special["pad_token_id"], *special["eos_token_ids"]} - {None}
        scores = razor_scores(loaded.model, length=options.length, repeats=options.repeats, seed=options.seed,
                              bos_token_id=special["bos_token_id"], special_ids=frozenset(specials),
                              progress=progress)
        return razor_ranking(scores, options.echo_heads)
    if loaded.tokenizer_json is None:
        raise PlanError(f"--method duo trains on passkey text and needs the model's tokenizer; "
                        f"{source.directory} has none")
    batches = passkey_batches(generation_tokenizer(loaded.tokenizer_json), context=options.context,
                              batch_size=options.batch_size, seed=options.seed)
    return duo_gates(loaded.model, batches, sink=options.sink, recent=options.recent, steps=options.steps,
                     learning_rate=options.learning_rate, l1=options.l1, progress=progress)
