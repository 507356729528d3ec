"""Option types shared by the commands: numbers checked for range (and floats for being
finite) and comma-separated lists without empty items, each refused with one OptionError
naming the option, before any model is loaded. The checks are edgert.checks', which the
API functions behind the commands run too."""

from __future__ import annotations

import re

import click

from edgert.checks import finite_number, shown_value, whole_number
from edgert.errors import OptionError

_WHOLE = re.compile(r"[+-]?\d+")


def option_name(param: click.Parameter | None) -> str:
    """How a message names the option: its longest flag (--max-new-tokens), or the argument's name."""
    if param is None:
        return "value"
    flags = [opt for opt in param.opts if opt.startswith("-")]
    return max(flags, key=len) if flags else param.human_readable_name


def _whole_text(text: str, what: str, words: str) -> int:
    if not _WHOLE.fullmatch(text.strip()):
        raise OptionError(f"{what} must be {words}; {shown_value(text)} is not a whole number")
    try:
        return int(text)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        raise OptionError(f"{what} must be {words}; {shown_value(text)} has too many digits") from None


def _float_text(text: str, what: str, words: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise OptionError(f"{what} must be {words}; {shown_value(text)} is not a number") from None


class WholeNumber(click.ParamType):
    """A whole number in low..high (either bound may be None)."""

    name = "integer"

    def __init__(self, low: int | None = None, high: int | None = None):
        self.low, self.high = low, high

    def convert(self, value, param, ctx) -> int:
        what = option_name(param)
        number = value if isinstance(value, int) else _whole_text(str(value), what, "a whole number")
        return whole_number(number, what, low=self.low, high=self.high)


class FiniteFloat(click.ParamType):
    """A finite number between low and high (either may be None; *_open excludes the bound)."""

    name = "float"

    def __init__(self, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False):
        self.bounds = {"low": low, "high": high, "low_open": low_open, "high_open": high_open}

    def convert(self, value, param, ctx) -> float:
        what = option_name(param)
        number = value if isinstance(value, float) else _float_text(str(value), what, "a number")
        return finite_number(number, what, **self.bounds)


class CommaList(click.ParamType):
    """Comma-separated whole numbers (`whole=True`) or finite numbers, each between low and high:
    "256,512" -> [256, 512]. Spaces around items are allowed, empty items are not."""

    def __init__(self, *, whole: bool, low: float | None = None, high: float | None = None):
        self.whole, self.low, self.high = whole, low, high
        self.name = "N,N,..." if whole else "X,X,..."

    def convert(self, value, param, ctx) -> list:
        if isinstance(value, list):
            return value
        what = option_name(param)
        example = "1,2,3" if self.whole else "0,0.5,1"
        words = f"comma-separated {'whole numbers' if self.whole else 'numbers'} such as {example}"
        parse = _whole_text if self.whole else _float_text
        numbers = [parse(item, what, words) for item in str(value).split(",")]
        check = whole_number if self.whole else finite_number
        return [check(number, what, low=self.low, high=self.high) for number in numbers]
