"""The transformers model families edgert knows, in one place: which `model_type`s it
exports, as what kind of graph, and whether their attention can be head-transformed.

A Hugging Face directory's kind is its family's (models/sources.py resolves it), and the
exporter prepares each kind with its recipe (exporters/recipe.py); the adapters
(models/adapters.py) swap in HeadAttention only where `adaptable` is true. Vision variants
are not transformers models: they are listed in models/vision_configs.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgert.errors import SourceError


@dataclass(frozen=True)
class Family:
    model_type: str
    kind: str  # "encoder" (hidden states / embeddings) or "decoder" (causal LM with a KV cache)
    adaptable: bool  # has a head-aware adapter: plans, pruning, GQA, softmax and gates apply
    # Top-level modules the export never runs, whose weights a checkpoint may lack (a BERT
    # saved from a masked-LM head has no pooler; the graph outputs hidden states or a mean).
    unused_modules: tuple[str, ...] = ()


FAMILIES = {f.model_type: f for f in (
    Family("bert", "encoder", True, unused_modules=("pooler",)),
    Family("roberta", "encoder", True, unused_modules=("pooler",)),
    Family("distilbert", "encoder", False),
    Family("llama", "decoder", True),
    Family("qwen2", "decoder", True),
    Family("mistral", "decoder", True),
)}


def family_of(model_type: str) -> Family:
    """The Family of a transformers model_type, or SourceError listing the supported ones."""
    if model_type not in FAMILIES:
        raise SourceError(f"model type {model_type!r} is not supported "
                          f"(supported: {', '.join(FAMILIES)})")
    return FAMILIES[model_type]


def adaptable_family(model_type: str) -> Family:
    """family_of, refusing families whose heads cannot be transformed."""
    family = family_of(model_type)
    if not family.adaptable:
        adaptable = ", ".join(f.model_type for f in FAMILIES.values() if f.adaptable)
        raise SourceError(f"model type {model_type!r} exports as is, but its heads cannot be "
                          f"transformed (head-aware adapters: {adaptable})")
    return family
