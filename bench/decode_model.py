"""The decode benchmark's reference model: a randomly initialised Llama-style decoder (fixed
seed, so every runtime and every run sees the same weights) saved as a Hugging Face directory
with a 32000-word fast tokenizer, which ONNX Runtime GenAI's model builder insists on.

    reference_model_dir(root)  # hidden 512, 8 layers, 8 q / 2 kv heads, ~55M parameters
    model_dir(REFERENCE_SMALL_INIT, root)  # the same with initializer_range 0.02
    tiny_model_dir(root)       # hidden 64, 2 layers, for smoke runs

Both are created once under `root` (atomically: written into a temporary folder, then
renamed) and reused; the folder name carries a hash of the spec, so a changed spec makes a
new folder instead of reusing a stale one. torch and transformers are imported only in the
child process that creates a model (`python bench/decode_model.py SPEC_JSON FOLDER`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from edgert._io import PENDING_OUTPUTS, remove_pending, reserve_temporary

BOS_ID, EOS_ID, UNK_ID = 1, 2, 0
# Prompts use ids from here up, so no special token is ever fed in.
FIRST_ORDINARY_ID = 3
# 32768 prompt tokens + up to 1024 new ones; ONNX Runtime GenAI takes its context_length
# (and so its largest allowed max_length) from max_position_embeddings.
MAX_POSITIONS = 33792


@dataclass(frozen=True)
class DecoderSpec:
    """Shape of a random Llama-style decoder."""

    name: str
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int = MAX_POSITIONS
    # Large weights give clear logit margins, so greedy tokens agree across runtimes whose
    # float sums differ in the last bits.
    initializer_range: float = 0.3
    seed: int = 0

    def folder_name(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.name}-{digest}"


REFERENCE = DecoderSpec("llama-ref", hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                        num_key_value_heads=2, head_dim=64, intermediate_size=1408, vocab_size=32000)
# The same shape with transformers' default initializer_range: activations stay in the normal
# float range, where the 0.3 model reaches denormals (both regimes stay visible in the bench).
REFERENCE_SMALL_INIT = dataclasses.replace(REFERENCE, name="llama-ref-init002", initializer_range=0.02)
TINY = DecoderSpec("llama-tiny", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, intermediate_size=176, vocab_size=512)


def reference_model_dir(root: Path) -> Path:
    """The reference decoder (~55M parameters, fp32) under `root`, created on first use."""
    return model_dir(REFERENCE, root)


def tiny_model_dir(root: Path) -> Path:
    """A tiny decoder of the same family (vocab 512) for smoke runs, created on first use."""
    return model_dir(TINY, root)


def model_dir(spec: DecoderSpec, root: Path) -> Path:
    """The Hugging Face directory of `spec` under `root`: model, config and tokenizer."""
    root = Path(root)
    target = root / spec.folder_name()
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with atomic_directory(target) as tmp:
        # A child process does the torch work, so the caller (a benchmark parent) stays free of
        # torch's memory and of its OpenMP threads.
        env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", TRANSFORMERS_VERBOSITY="error", TQDM_DISABLE="1")
        result = subprocess.run([sys.executable, str(Path(__file__).resolve()),
                                 json.dumps(asdict(spec)), str(tmp)],
                                check=False, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
            raise RuntimeError(f"creating {spec.name} failed: {lines[-1]}")
    return target


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success rename it to `target`.

    On an exception the folder is removed. If another process created `target` meanwhile,
    theirs is kept and this one is dropped (both were made from the same spec).
    """
    tmp = reserve_temporary(target.parent, f".{target.name}.tmp-", directory=True)
    try:
        yield tmp
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        PENDING_OUTPUTS.discard(tmp)
        remove_pending(tmp)


def _save_model(spec: DecoderSpec, folder: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec.vocab_size, hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim, max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range, tie_word_embeddings=False,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, rms_norm_eps=1e-5, dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(folder)


def _save_tokenizer(vocab_size: int, folder: Path) -> None:
    """A word-level tokenizer with exactly `vocab_size` entries: the benchmark feeds token ids,
    but the GenAI builder loads (and copies) a tokenizer from the model directory."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    specials = {"<unk>": UNK_ID, "<s>": BOS_ID, "</s>": EOS_ID}
    vocab = dict(specials)
    vocab.update({f"w{i}": i for i in range(FIRST_ORDINARY_ID, vocab_size)})
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=MAX_POSITIONS)
    assert len(tokenizer) == vocab_size, (len(tokenizer), vocab_size)
    tokenizer.save_pretrained(folder)


if __name__ == "__main__":
    _spec, _folder = DecoderSpec(**json.loads(sys.argv[1])), Path(sys.argv[2])
    _save_model(_spec, _folder)
    _save_tokenizer(_spec.vocab_size, _folder)
