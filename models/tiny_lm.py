"""edgert's tiny LM: a Llama-style GQA decoder trained here, on CPU, so that it really has
retrieval heads and streaming heads to find.

Random-init models have neither, so choosing retrieval heads cannot be tested on them. This
model is trained on passkey prompts (edgert/passkey.py): the filler teaches local structure
(sentences predictable from their first words), the key teaches long-range copying (an
induction circuit: a previous-token head feeding a head that looks far back). The result is
saved as a Hugging Face Llama directory with a word-level tokenizer, so every edgert command
takes it like any other model. `scripts/train_tiny_lm.py` runs `train` with fixed seeds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from edgert.passkey import (FILLER, INSTRUCTION, QUESTION, key_sentence, passkey_prompt, random_key,
                            token_counter)

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
DIGITS = [str(d) for d in range(10)]


def vocabulary() -> list[str]:
    """Special tokens, digits, punctuation, then every word of the passkey prompts."""
    words: list[str] = []
    text = " ".join([INSTRUCTION, *FILLER, key_sentence("0"), QUESTION])
    for word in text.lower().replace(".", " . ").replace("?", " ? ").split():
        if word not in words and word not in DIGITS:
            words.append(word)
    return SPECIAL + DIGITS + words


def build_tokenizer():
    """A word-level `tokenizers.Tokenizer`: lower-cased words, punctuation and single digits,
    with <s> prepended. Anything else becomes <unk>."""
    vocab = {token: i for i, token in enumerate(vocabulary())}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.add_special_tokens(SPECIAL)  # already in the vocabulary: marks them skippable in decode
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    return tokenizer


@dataclass(frozen=True)
class TinyLMConfig:
    """Model shape and training recipe. Defaults made the committed weights."""

    hidden_size: int = 256
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 8
    num_kv_heads: int = 4
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    train_context: tuple[int, int] = (32, 512)  # row lengths, drawn per batch (log-uniform)
    short_steps: int = 1200  # first steps: rows of at most 2 x train_context[0] tokens, copies only
    ramp: int = 1000  # steps over which the longest row then grows to train_context[1]
    batch_size: int = 16
    steps: int = 3000
    learning_rate: float = 2e-3
    warmup: int = 100
    answer_weight: float = 4.0  # the answer's digits weigh this much more than filler tokens
    short_copy_fraction: float = 1.0  # share of rows that are random words repeated, first steps
    copy_fraction: float = 0.3  # ... and afterwards
    seed: int = 0


def llama_config(config: TinyLMConfig, vocab_size: int):
    return LlamaConfig(vocab_size=vocab_size, hidden_size=config.hidden_size,
                       intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
                       num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
                       head_dim=config.hidden_size // config.num_heads,
                       max_position_embeddings=config.max_position_embeddings,
                       rope_theta=config.rope_theta, tie_word_embeddings=True,
                       bos_token_id=1, eos_token_id=2, pad_token_id=3)


class PasskeyBatches:
    """Batches of tokenized passkey prompts followed by their answer ("12345."), with a loss
    weight per token: 0 on padding, `answer_weight` on the answer's digits, 1 elsewhere."""

    def __init__(self, tokenizer, rng: np.random.Generator, answer_weight: float, copy_fraction: float = 0.0):
        self.tokenizer, self.rng, self.answer_weight = tokenizer, rng, answer_weight
        self.copy_fraction = copy_fraction
        self.pad = tokenizer.token_to_id("<pad>")
        self.count = token_counter(tokenizer)
        self.words = np.arange(len(SPECIAL), tokenizer.get_vocab_size())

    def sample(self, context: int) -> tuple[list[int], list[float], list[bool]]:
        """Token ids, the weight of predicting each, and which are copies of an earlier segment."""
        if self.rng.random() < self.copy_fraction:
            return self.repeated_words(context)
        prompt = passkey_prompt(self.count, context, float(self.rng.random()), self.rng,
                                key=random_key(self.rng))
        ids = self.tokenizer.encode(prompt.text).ids
        answer = self.tokenizer.encode(f"{prompt.key}.", add_special_tokens=False).ids
        weights = [1.0] * len(ids) + [self.answer_weight] * (len(answer) - 1) + [1.0]
        return ids + answer, weights, [False] * len(weights)

    def repeated_words(self, context: int) -> tuple[list[int], list[float], list[bool]]:
        """BOS, then a random word sequence repeated to fill `context`: every token after the
        first repeat is predictable only by looking back (the shape induction heads learn on)."""
        # distinct words, so that the token after an earlier occurrence is unambiguous
        length = int(self.rng.integers(4, min(len(self.words), max(5, context // 2)) + 1))
        segment = self.rng.choice(self.words, size=length, replace=False).tolist()
        ids = [self.tokenizer.token_to_id("<s>")] + (segment * (context // length + 1))[:context]
        return ids, [1.0] * len(ids), [i > length for i in range(len(ids))]

    def batch(self, size: int, context: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids [size, T], the weight of predicting each token [size, T] (0 at position 0 and on
        padding) and which tokens repeat an earlier segment [size, T] (bool)."""
        samples = [self.sample(context) for _ in range(size)]
        length = max(len(ids) for ids, _, _ in samples)
        ids = torch.full((size, length), self.pad, dtype=torch.long)
        weights = torch.zeros(size, length)
        copies = torch.zeros(size, length, dtype=torch.bool)
        for row, (tokens, w, copied) in enumerate(samples):
            ids[row, :len(tokens)] = torch.tensor(tokens)
            weights[row, 1:len(tokens)] = torch.tensor(w[1:])
            copies[row, :len(tokens)] = torch.tensor(copied)
        return ids, weights, copies


def weighted_loss(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, weighted per target token."""
    losses = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(),
                                               reduction="none")
    w = weights[:, 1:].flatten()
    return (losses * w).sum() / w.sum()


def _share(hits: torch.Tensor) -> float | None:
    """Fraction of True in `hits` (None when empty: a batch with no such tokens)."""
    return round(hits.float().mean().item(), 3) if hits.numel() else None


def _percent(share: float | None) -> str:
    return "  - " if share is None else f"{share:4.0%}"


def train(output: Path, config: TinyLMConfig = TinyLMConfig(),
          log: Callable[[str], None] = print) -> dict:
    """Train the tiny LM from scratch and save it (weights, config, tokenizer, recipe) to
    `output`; returns the training record that is saved beside it."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    tokenizer = build_tokenizer()
    model = LlamaForCausalLM(llama_config(config, tokenizer.get_vocab_size()))
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, betas=(0.9, 0.95),
                                  weight_decay=0.1)

    def rate(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < config.warmup:
            return (step + 1) / config.warmup
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    batches = PasskeyBatches(tokenizer, rng, config.answer_weight, config.copy_fraction)
    low, high = config.train_context
    start, history = time.perf_counter(), []
    model.train()
    for step in range(config.steps):
        # Induction heads form within ~1-2k steps on short rows of repeated words (far more
        # slowly on long rows), then carry over to longer distances: start short, then grow.
        short = step < config.short_steps
        batches.copy_fraction = config.short_copy_fraction if short else config.copy_fraction
        grown = 0.0 if short else min(1.0, (step - config.short_steps) / max(1, config.ramp))
        longest = 2 * low * (high / (2 * low)) ** grown
        context = int(np.exp(rng.uniform(np.log(low), np.log(longest))))
        ids, weights, copies = batches.batch(config.batch_size, context)
        logits = model(input_ids=ids).logits
        loss = weighted_loss(logits, ids, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == config.steps - 1:
            right = logits[:, :-1].argmax(-1) == ids[:, 1:]
            answers = _share(right[weights[:, 1:] > 1])
            copied = _share(right[copies[:, 1:]])
            history.append({"step": step, "context": context, "loss": round(loss.item(), 4),
                            "answer_digit_accuracy": answers, "copy_accuracy": copied,
                            "seconds": round(time.perf_counter() - start, 1)})
            log(f"step {step:5d}  rows {context:4d}  loss {loss.item():.4f}  answer digits right "
                f"{_percent(answers)}  copies right {_percent(copied)}  {time.perf_counter() - start:7.1f} s")
    model.eval()
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output, safe_serialization=True)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>", pad_token="<pad>",
                            model_max_length=config.max_position_embeddings).save_pretrained(output)
    record = {"config": asdict(config), "parameters": sum(p.numel() for p in model.parameters()),
              "train_seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "history": history}
    (output / "training.json").write_text(json.dumps(record, indent=1))
    return record
