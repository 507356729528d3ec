"""Compare an exported graph with its torch source on sample inputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from edgert.errors import ValidationError
from edgert.session import Session


def max_abs_diffs(session: Session, module: torch.nn.Module, input_names: Sequence[str],
                  output_names: Sequence[str], samples: Sequence[dict[str, np.ndarray]]
                  ) -> tuple[dict[str, float], dict[str, float]]:
    """Largest |onnx - torch| per output over all `samples`, and largest |torch| per output
    (the scale a relative tolerance applies to)."""
    diffs = {name: 0.0 for name in output_names}
    scales = {name: 0.0 for name in output_names}
    for feeds in samples:
        got = session.run(feeds)
        with torch.no_grad():
            want = module(*(torch.from_numpy(feeds[n]) for n in input_names))
        want = want if isinstance(want, (tuple, list)) else (want,)
        for name, reference in zip(output_names, want):
            diff = float(np.abs(got[name].astype(np.float64) - reference.numpy()).max())
            diffs[name] = max(diffs[name], diff)
            scales[name] = max(scales[name], float(np.abs(reference.numpy()).max(initial=0.0)))
    return diffs, scales


def check_diffs(diffs: dict[str, float], atol: float, *, rtol: float = 0.0,
                scales: dict[str, float] | None = None, hint: str | None = None) -> None:
    """Raise ValidationError if any output differs by more than atol + rtol x its largest
    magnitude (float32 rounding grows with the values: a decoder's logits reach the hundreds);
    `hint` (what the user can try) ends the message."""
    scales = scales or {}
    limits = {name: atol + rtol * scales.get(name, 0.0) for name in diffs}
    bad = {name: d for name, d in diffs.items() if not d <= limits[name]}  # `not <=` also catches NaN
    if bad:
        detail = ", ".join(f"{n} {d:.3g}" + (f" (limit {limits[n]:.3g})" if rtol else "") for n, d in bad.items())
        tolerance = f"atol {atol:g}" + (f" + rtol {rtol:g} x |output|" if rtol else "")
        raise ValidationError(f"export differs from torch beyond {tolerance}: {detail}; "
                              "no model written" + (f" ({hint})" if hint else ""))
