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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

INSTRUCTION = ("There is an important info hidden inside a lot of irrelevant text. "
               "Find it and memorize it. I will quiz you about the important information there.")
FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
          "There and back again.", "The sea is deep.", "The night is dark.", "Birds sing in the trees.",
          "The road is long.", "We walk on and on.")
QUESTION = "What is the pass key? The pass key is"
KEY_DIGITS = 5


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


def passkey_prompt(count_tokens: Callable[[str], int], context: int, depth: float,
                   rng: np.random.Generator, key: str | None = None) -> PasskeyPrompt:
    """A prompt of about `context` tokens (as `count_tokens` counts them) with the key at
    `depth` in [0, 1] of the filler. Filler sentences are added while the whole prompt still
    fits; the prompt is never longer than `context` unless even the bare prompt is."""
    if not 0 <= depth <= 1:
        raise ValueError(f"depth must lie in [0, 1], got {depth}")
    key = key or random_key(rng)
    fixed = [INSTRUCTION, key_sentence(key), QUESTION]
    used = sum(count_tokens(part) for part in fixed)
    sizes = {s: count_tokens(s) for s in FILLER}
    if min(sizes.values()) < 1:  # else the filler loop below would never fill the context
        from edgert.errors import InputError

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


def check_request(generator, contexts: list[int], depths: list[float], trials: int) -> None:
    """InputError unless `generator` can run this passkey test."""
    from edgert.errors import InputError

    if not generator.has_tokenizer:
        raise InputError("the passkey test is text: the model carries no tokenizer")
    if trials < 1 or not contexts or not depths:
        raise InputError("give at least one context, one depth and one trial")
    if any(not 0 <= d <= 1 for d in depths):
        raise InputError(f"depths must lie in [0, 1], got {', '.join(f'{d:g}' for d in depths)}")
    longest = generator.max_length - _NEW_TOKENS
    if any(c < 1 or c > longest for c in contexts):
        raise InputError(f"contexts must lie in [1, {longest}] for this model "
                         f"(its limit {generator.max_length} minus {_NEW_TOKENS} generated tokens)")


def evaluate(generator, contexts: list[int], depths: list[float], trials: int, *, seed: int = 0,
             progress: Callable[[int], None] | None = None) -> PasskeyResult:
    """Passkey accuracy of an edgert.Generator: for each context and depth, `trials` prompts
    with random keys, greedy-decoded as one batch; a trial is right when the continuation
    starts with the key. The same seed gives every model the same prompts."""
    import time

    check_request(generator, contexts, depths, trials)
    new_tokens = _NEW_TOKENS
    sizes: dict[str, int] = {}

    def count(text: str) -> int:
        if text not in sizes:
            sizes[text] = len(generator.encode(text, add_special_tokens=False))
        return sizes[text]

    specials = len(generator.encode(""))  # e.g. BOS
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
    return PasskeyResult(list(contexts), list(depths), trials, hits, lengths, kv_bytes,
                         time.perf_counter() - start)
