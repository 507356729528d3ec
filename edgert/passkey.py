"""Passkey retrieval prompts: a number hidden at a chosen depth in filler text, asked for at the end.

The format follows the passkey test of the long-context literature (Landmark Attention,
LongLoRA, DuoAttention): an instruction, filler sentences, "The pass key is 12345. Remember
it. 12345 is the pass key.", more filler, then "What is the pass key? The pass key is". The
filler sentences are drawn at random from a small set, so the text has local structure
(each sentence is predictable from its first words) but nothing far away helps predict it
except the key. edgert's tiny LM is trained on exactly these prompts (models/tiny_lm.py);
any model with a tokenizer can be evaluated on them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgert.checks import each, finite_number, shown_value, whole_number
from edgert.errors import InputError, OptionError
from edgert.generator import Generator
from edgert.memory import check_memory

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. "
               "Find it and memorize it. I will quiz you about the important information there.")
FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
          "There and back again.", "The sea is deep.", "The night is dark.", "Birds sing in the trees.",
          "The road is long.", "We walk on and on.")
QUESTION = "What is the pass key? The pass key is"
KEY_DIGITS = 5
# Each (context, depth) cell decodes its trials as one batch; more than this many prompts per
# cell is no longer a test of one model but a stress test of the machine.
MAX_TRIALS = 10_000


def key_sentence(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key."


@dataclass(frozen=True)
class PasskeyPrompt:
    """One prompt: its text, the key it hides, the depth asked for (0 = right after the
    instruction, 1 = right before the question) and its length in tokens."""

    text: str
    key: str
    depth: float
    tokens: int


def random_key(rng: np.random.Generator, digits: int = KEY_DIGITS) -> str:
    """A random number of `digits` different digits, no leading zero. Different digits make
    the key copyable digit by digit (the token after each digit's earlier occurrence), which
    small models learn; with repeats they would need longer matches."""
    first = int(rng.integers(1, 10))
    rest = rng.permutation([d for d in range(10) if d != first])[:digits - 1]
    return "".join(map(str, [first, *rest]))


def bare_prompt_tokens(count_tokens: Callable[[str], int], key: str = "12345") -> int:
    """Tokens of a prompt without filler (instruction, key sentence, question), as
    `count_tokens` counts them: the shortest context a passkey prompt fits in."""
    return sum(count_tokens(part) for part in (INSTRUCTION, key_sentence(key), QUESTION))


def passkey_prompt(count_tokens: Callable[[str], int], context: int, depth: float,
                   rng: np.random.Generator, key: str | None = None) -> PasskeyPrompt:
    """A prompt of about `context` tokens (as `count_tokens` counts them) with the key at
    `depth` in [0, 1] of the filler. Filler sentences are added while the whole prompt still
    fits; the prompt is never longer than `context` unless even the bare prompt is (callers
    that promise a length check it against bare_prompt_tokens first)."""
    depth = finite_number(depth, "depth", low=0, high=1)
    key = key or random_key(rng)
    used = bare_prompt_tokens(count_tokens, key)
    sizes = {s: count_tokens(s) for s in FILLER}
    if min(sizes.values()) < 1:  # else the filler loop below would never fill the context
        raise InputError("the model's tokenizer turns the passkey filler text into no tokens; "
                         "the passkey test needs a tokenizer for English text")
    filler: list[str] = []
    while True:
        sentence = FILLER[int(rng.integers(len(FILLER)))]
        if used + sizes[sentence] > context:
            break
        filler.append(sentence)
        used += sizes[sentence]
    split = round(depth * len(filler))
    parts = [INSTRUCTION, *filler[:split], key_sentence(key), *filler[split:], QUESTION]
    text = " ".join(parts)
    return PasskeyPrompt(text, key, depth, count_tokens(text))


def token_counter(tokenizer) -> Callable[[str], int]:
    """count_tokens for passkey_prompt from a `tokenizers.Tokenizer`: tokens of a piece of
    text without the special tokens added around whole texts."""
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def answer_is_correct(generated_text: str, key: str) -> bool:
    """True when the generated continuation starts with the key (spaces between digits,
    which word-level tokenizers put there, are ignored)."""
    return "".join(generated_text.split()).startswith(key)


@dataclass
class PasskeyResult:
    """Accuracy of one model by context and depth: hits[c][d] of `trials` prompts each."""

    contexts: list[int]
    depths: list[float]
    trials: int
    hits: list[list[int]]
    prompt_tokens: list[float]  # mean prompt length per context, as measured
    kv_bytes: list[int]  # the model's KV cache at each context (one sequence)
    seconds: float

    def accuracy(self, c: int, d: int) -> float:
        return self.hits[c][d] / self.trials

    @property
    def mean_accuracy(self) -> float:
        return sum(map(sum, self.hits)) / (self.trials * len(self.contexts) * len(self.depths))

    def to_dict(self) -> dict[str, object]:
        return {"contexts": self.contexts, "depths": self.depths, "trials": self.trials,
                "accuracy": [[self.accuracy(c, d) for d in range(len(self.depths))]
                             for c in range(len(self.contexts))],
                "mean_accuracy": self.mean_accuracy, "prompt_tokens": self.prompt_tokens,
                "kv_bytes": self.kv_bytes, "seconds": round(self.seconds, 2)}


_NEW_TOKENS = 2 * KEY_DIGITS + 2  # room for tokenizers that split digits unevenly


def check_request(generator, contexts: object, depths: object, trials: object,
                  seed: object = 0) -> tuple[list[int], list[float], int, int]:
    """The arguments of a passkey test of `generator` as (contexts, depths, trials, seed), once
    checked: an edgert.Generator with a tokenizer; contexts (tokens) from the bare prompt's
    length to the model's limit less the generated tokens; depths in [0, 1]; trials in
    1..MAX_TRIALS whose KV caches fit the memory available; seed >= 0. OptionError (InputError
    for a model that cannot take the test) otherwise."""
    if not isinstance(generator, Generator):
        raise OptionError(f"generator must be an edgert.Generator, got {shown_value(generator)}")
    contexts = each(contexts, "contexts", lambda v, what: whole_number(v, what, low=1))
    depths = each(depths, "depths", lambda v, what: finite_number(v, what, low=0, high=1))
    trials = whole_number(trials, "trials", low=1, high=MAX_TRIALS)
    seed = whole_number(seed, "seed", low=0)
    if not generator.has_tokenizer:
        raise InputError("the passkey test is text: the model carries no tokenizer")
    count, specials = _token_counter(generator)
    shortest = bare_prompt_tokens(count) + specials
    longest = generator.max_length - _NEW_TOKENS
    if any(not shortest <= c <= longest for c in contexts):
        raise OptionError(f"contexts must lie in [{shortest}, {longest}] for this model (the prompt without "
                          f"filler takes {shortest} tokens; its limit is {generator.max_length} tokens "
                          f"including {_NEW_TOKENS} generated)")
    check_memory(generator.layout.cache_bytes(trials, max(contexts) + _NEW_TOKENS),
                 f"the KV cache of {trials} trials (decoded as one batch) at context {max(contexts)}",
                 advice="use fewer trials")
    return contexts, depths, trials, seed


def _token_counter(generator) -> tuple[Callable[[str], int], int]:
    """count_tokens for passkey_prompt by the generator's tokenizer (cached per text) and the
    number of special tokens it adds around a whole text (e.g. BOS)."""
    sizes: dict[str, int] = {}

    def count(text: str) -> int:
        if text not in sizes:
            sizes[text] = len(generator.encode(text, add_special_tokens=False))
        return sizes[text]

    return count, len(generator.encode(""))


def evaluate(generator, contexts: list[int], depths: list[float], trials: int, *, seed: int = 0,
             progress: Callable[[int], None] | None = None) -> PasskeyResult:
    """Passkey accuracy of an edgert.Generator: for each context and depth, `trials` prompts
    with random keys, greedy-decoded as one batch; a trial is right when the continuation
    starts with the key. The same seed gives every model the same prompts."""
    contexts, depths, trials, seed = check_request(generator, contexts, depths, trials, seed)
    if progress is not None and not callable(progress):
        raise OptionError(f"progress must be a function of the trials done, got {shown_value(progress)}")
    new_tokens = _NEW_TOKENS
    count, specials = _token_counter(generator)
    start = time.perf_counter()
    hits, lengths, kv_bytes = [], [], []
    for c_index, context in enumerate(contexts):
        row, total = [], 0
        for d_index, depth in enumerate(depths):
            rng = np.random.default_rng([seed, c_index, d_index])
            prompts = [passkey_prompt(count, context - specials, depth, rng) for _ in range(trials)]
            ids = [generator.encode(p.text) for p in prompts]
            total += sum(map(len, ids))
            outputs = generator.generate(ids, new_tokens, stop=())
            row.append(sum(answer_is_correct(generator.decode(out), p.key) for out, p in zip(outputs, prompts)))
            if progress:
                progress(trials)
        hits.append(row)
        lengths.append(total / (trials * len(depths)))
        kv_bytes.append(generator.layout.cache_bytes(1, context))
    return PasskeyResult(contexts, depths, trials, hits, lengths, kv_bytes,
                         time.perf_counter() - start)
