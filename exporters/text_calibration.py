"""Calibration data for the head transforms of text models (pruning by importance, SVD
grouping), read before the model is in ONNX: the text recipes' share of quant/calib.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgert.errors import CalibrationError
from edgert.models.sources import ModelSource
from edgert.quant.calib import BUNDLED, load_calibration
from edgert.text import TextTokenizer

Feeds = dict[str, np.ndarray]


class TorchInputs:
    """What load_calibration needs to know about a model that is not in ONNX yet."""

    def __init__(self, input_names: list[str], name: str, tokenizer_json: str | None, max_length: int):
        self.input_names = list(input_names)
        self.path = Path(name)
        self._tokenizer_json, self._max_length = tokenizer_json, max_length

    @property
    def tokenizer(self) -> TextTokenizer:
        if not self._tokenizer_json:
            raise CalibrationError("text calibration data needs a model with a tokenizer; this one has none")
        return TextTokenizer(self._tokenizer_json, max_length=self._max_length,
                             input_roles={n: n for n in self.input_names})

    def check_inputs(self, feeds):
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise CalibrationError(f"calibration data lacks input {missing[0]!r}")
        return {n: np.asarray(feeds[n], dtype=np.int64) for n in self.input_names}


def calibration_samples(inputs: TorchInputs, source: ModelSource, calib: str | os.PathLike | None,
                        calib_size: int, step) -> list[Feeds]:
    """Calibration feeds for a head transform: `calib`, else the built-in model's set
    (none: an empty list, and the transform says what it is missing)."""
    if calib is None:
        calib = BUNDLED.get(source.name, (None,))[0]
        if calib is None:
            return []
    step("calibration")
    return load_calibration(calib, inputs, size=calib_size)
