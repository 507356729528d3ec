"""Checks of the numbers a user passes, shared by the Python API and the command line (whose
option types in edgert/cli/options.py call them): each returns the value as a plain Python
int or float, or raises OptionError naming what was wrong and the range it must lie in."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

from edgert.errors import EdgertError, OptionError


def shown_value(value: object) -> str:
    """A wrong value as a message shows it: its repr when short, else its type's name."""
    if isinstance(value, numbers.Integral) and abs(int(value)).bit_length() > 128:
        # repr() of an int of more than 4300 digits raises ValueError; its size says enough
        return f"a number with about {int(abs(int(value)).bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    if (value is None or isinstance(value, (str, bytes, numbers.Number))) and len(text) <= 40:
        return text
    if isinstance(value, (str, bytes)):
        return repr(value[:30]) + "..."
    return type(value).__name__


def _range_words(low: object, high: object, low_open: bool, high_open: bool, whole: bool) -> str:
    """How a message states the range: "lie in 1..8", "lie in (0, 1]", "be a whole number >= 0"."""
    shown = str if whole else (lambda bound: f"{bound:g}")
    if low is not None and high is not None:
        if whole:
            return f"lie in {low}..{high}"
        return f"lie in {'(' if low_open else '['}{shown(low)}, {shown(high)}{')' if high_open else ']'}"
    noun = "a whole number" if whole else "a finite number"
    if low is not None:
        return f"be {noun} {'>' if low_open else '>='} {shown(low)}"
    if high is not None:
        return f"be {noun} {'<' if high_open else '<='} {shown(high)}"
    return f"be {noun}"


def whole_number(value: object, what: str, *, low: int | None = None, high: int | None = None,
                 error: type[EdgertError] = OptionError) -> int:
    """`value` as an int if it is a whole number (not a bool) in low..high (either bound may be
    None); otherwise `error`: "`what` must lie in low..high, got value"."""
    words = _range_words(low, high, False, False, whole=True)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        kind = "" if "whole number" in words else " (a whole number)"
        raise error(f"{what} must {words}{kind}, got {shown_value(value)}")
    number = int(value)
    if (low is not None and number < low) or (high is not None and number > high):
        raise error(f"{what} must {words}, got {shown_value(number)}")
    return number


def finite_number(value: object, what: str, *, low: float | None = None, high: float | None = None,
                  low_open: bool = False, high_open: bool = False,
                  error: type[EdgertError] = OptionError) -> float:
    """`value` as a float if it is a finite real number (not a bool) between `low` and `high`
    (either may be None; *_open excludes the bound itself); otherwise `error`."""
    words = _range_words(low, high, low_open, high_open, whole=False)
    kind = "" if "finite number" in words else " (a finite number)"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{what} must {words}{kind}, got {shown_value(value)}")
    try:
        number = float(value)
    except (OverflowError, ValueError):  # an int beyond float's range, a Real that will not convert
        number = math.nan
    if not math.isfinite(number):
        raise error(f"{what} must {words}{kind}, got {shown_value(value)}")
    if ((low is not None and (number <= low if low_open else number < low))
            or (high is not None and (number >= high if high_open else number > high))):
        raise error(f"{what} must {words}, got {shown_value(value)}")
    return number


def each(values: object, what: str, check: Callable[[object, str], object],
         error: type[EdgertError] = OptionError) -> list:
    """`check(item, "what[i]")` of every item of a non-empty list or tuple `values`."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise error(f"{what} must be a list, got {shown_value(values)}")
    if not values:
        raise error(f"{what} is empty")
    return [check(item, f"{what}[{i}]") for i, item in enumerate(values)]

