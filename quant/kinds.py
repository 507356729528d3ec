"""The kinds of model `edgert quantize` knows, as a registry: the first whose matches() takes
a model quantizes it, so the encoder, which takes every model, comes last. A new kind is one
module with one ModelKind object (quant/model_kind.py), listed here."""

from __future__ import annotations

from collections.abc import Sequence

from edgert.quant.decoder_kind import DecoderKind
from edgert.quant.encoder_kind import EncoderKind
from edgert.quant.image_kind import ImageKind
from edgert.quant.model_kind import ModelKind
from edgert.session import Session

KINDS: tuple[ModelKind, ...] = (DecoderKind(), ImageKind(), EncoderKind())


def kind_for(session: Session, kinds: Sequence[ModelKind] = KINDS) -> ModelKind:
    """The first of `kinds` that takes the model `session` holds."""
    for kind in kinds:
        if kind.matches(session):
            return kind
    raise LookupError(f"no kind of model takes {session.path.name}; the last kind must take every model")
