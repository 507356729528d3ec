"""Compare an exported graph with its torch source on sample inputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from edgert.errors import ValidationError
from edgert.session import Session


def max_abs_diffs(session: Session, module: torch.nn.Module, input_names: Sequence[str],
                  output_names: Sequence[str], samples: Sequence[dict[str, np.ndarray]]
                  ) -> dict[str, float]:
    """Largest |onnx - torch| per output over all `samples`."""
    diffs = {name: 0.0 for name in output_names}
    for feeds in samples:
        got = session.run(feeds)
        with torch.no_grad():
            want = module(*(torch.from_numpy(feeds[n]) for n in input_names))
        want = want if isinstance(want, (tuple, list)) else (want,)
        for name, reference in zip(output_names, want):
            diff = float(np.abs(got[name].astype(np.float64) - reference.numpy()).max())
            diffs[name] = max(diffs[name], diff)
    return diffs


def check_diffs(diffs: dict[str, float], atol: float, *, hint: str | None = None) -> None:
    """Raise ValidationError if any output differs by more than `atol`; `hint` (what the
    user can try) ends the message."""
    bad = {name: d for name, d in diffs.items() if not d <= atol}  # `not <=` also catches NaN
    if bad:
        detail = ", ".join(f"{n} {d:.3g}" for n, d in bad.items())
        raise ValidationError(f"export differs from torch beyond atol {atol:g}: {detail}; "
                              "no model written" + (f" ({hint})" if hint else ""))
