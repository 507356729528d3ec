"""The activation outlier table `edgert analyze outliers` and `edgert quantize` print."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.table import Table

if TYPE_CHECKING:
    from edgert.quant.outliers import TensorStats


def outlier_table(stats: Sequence[TensorStats], title: str) -> Table:
    """A table of TensorStats rows, worst first as given."""
    table = Table(title=title)
    for column in ("tensor", "op", "module", "max |x|", "kurtosis", "SQNR dB"):
        table.add_column(column, justify="left" if column in ("tensor", "op", "module") else "right")
    for s in stats:
        table.add_row(s.name, s.op_type, s.where, f"{s.max_abs:.3g}", f"{s.kurtosis:.1f}", f"{s.sqnr_db:.1f}")
    return table
