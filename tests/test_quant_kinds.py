"""The kinds of model `edgert quantize` knows: the registry picks one per model, and each kind
holds a model to the guards it takes."""

from __future__ import annotations

import pytest

from edgert.errors import QuantizeError
from edgert.quant.decoder_kind import DecoderKind
from edgert.quant.encoder_kind import EncoderKind
from edgert.quant.guard import Guard
from edgert.quant.image_kind import ImageKind
from edgert.quant.kinds import KINDS, kind_for
from edgert.quant.model_kind import guard_of
from edgert.session import Session

from conftest import make_embedding_model, make_tiny_model


def test_the_registry_picks_the_first_kind_that_takes_the_model(tmp_path):
    from test_vision_runtime import make_image_model

    image = Session(make_image_model(tmp_path / "vision.onnx"))
    plain = Session(make_tiny_model(tmp_path / "tiny.onnx"))
    text = Session(make_embedding_model(tmp_path / "text.onnx"))
    assert [type(kind) for kind in KINDS] == [DecoderKind, ImageKind, EncoderKind]
    assert isinstance(kind_for(image), ImageKind)
    assert isinstance(kind_for(plain), EncoderKind) and isinstance(kind_for(text), EncoderKind)
    # a registry is data: without the image kind, an image classifier is quantized as an encoder
    assert isinstance(kind_for(image, (DecoderKind(), EncoderKind())), EncoderKind)


@pytest.mark.parametrize("kind, guard, held", [
    (EncoderKind(), None, None),
    (EncoderKind(), "sqnr>=30", "sqnr>=30"),
    (ImageKind(), "top1>=0.9", "top1>=0.9"),
    (ImageKind(), "cosine>=0.99", "cosine>=0.99"),
    (DecoderKind(), None, "top1>=0.9"),
    (DecoderKind(), "kl<=0.05", "kl<=0.05"),
])
def test_each_kind_holds_its_guard(kind, guard, held):
    result = guard_of(kind, Guard.parse(guard) if guard else None)
    assert (str(result) if result else None) == held


@pytest.mark.parametrize("kind, guard, words", [
    (EncoderKind(), "top1>=0.9", "does not fit this model: its guard is cosine>=V or sqnr>=V"),
    (ImageKind(), "kl<=0.1", "does not fit an image classifier: its guard is top1>=V, sqnr>=V or cosine>=V"),
    (DecoderKind(), "sqnr>=20", "does not fit a decoder: its guard is top1>=V or kl<=V"),
])
def test_a_guard_on_another_kinds_metric_is_refused(kind, guard, words):
    with pytest.raises(QuantizeError, match=f"^guard {guard} {words} "):
        guard_of(kind, Guard.parse(guard))
