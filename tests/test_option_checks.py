"""The number checks every command and the API functions behind them share (edgert.checks,
edgert/cli/options.py): whole numbers and finite numbers in a range, comma lists without empty
items, each refused as one OptionError naming the value (issue 17)."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction

import click
import numpy as np
import pytest

from edgert.checks import each, finite_number, whole_number
from edgert.cli.options import CommaList, FiniteFloat, WholeNumber
from edgert.errors import OptionError, PlanError


@pytest.mark.parametrize("value, kwargs, expected", [
    (3, {"low": 1}, 3), (np.int64(7), {"low": 0, "high": 7}, 7), (10**30, {"low": 0}, 10**30),
    (-1, {}, -1),
])
def test_whole_numbers_that_pass(value, kwargs, expected):
    result = whole_number(value, "n", **kwargs)
    assert result == expected and type(result) is int


@pytest.mark.parametrize("value, kwargs, message", [
    (-1, {"low": 0}, "seed must be a whole number >= 0, got -1"),
    (0, {"low": 1, "high": 8}, "seed must lie in 1..8, got 0"),
    (1.5, {"low": 0}, "seed must be a whole number >= 0, got 1.5"),
    (3.0, {"low": 0}, "seed must be a whole number >= 0, got 3.0"),
    (True, {"low": 0}, "seed must be a whole number >= 0, got True"),
    ("4", {}, "seed must be a whole number, got '4'"),
    (None, {"low": 1, "high": 2}, "seed must lie in 1..2 (a whole number), got None"),
    (10**100, {"high": 5}, "seed must be a whole number <= 5, got a number with about 101 digits"),
    pytest.param(10**5000, {"high": 5}, "seed must be a whole number <= 5, got a number with about 5001 digits",
                 id="more-digits-than-repr-converts"),
])
def test_whole_numbers_that_fail(value, kwargs, message):
    with pytest.raises(OptionError) as caught:
        whole_number(value, "seed", **kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize("value, expected", [(0.5, 0.5), (Fraction(1, 4), 0.25), (np.float32(0.5), 0.5), (2, 2.0)])
def test_finite_numbers_that_pass(value, expected):
    result = finite_number(value, "x", low=0, high=2)
    assert result == expected and type(result) is float


@pytest.mark.parametrize("value, kwargs, message", [
    (math.nan, {"low": 0}, "temperature must be a finite number >= 0, got nan"),
    (math.inf, {}, "temperature must be a finite number, got inf"),
    (-0.5, {"low": 0}, "temperature must be a finite number >= 0, got -0.5"),
    (0.0, {"low": 0, "low_open": True}, "temperature must be a finite number > 0, got 0.0"),
    (1.5, {"low": 0, "high": 1, "low_open": True}, "temperature must lie in (0, 1], got 1.5"),
    (math.nan, {"low": 0, "high": 1}, "temperature must lie in [0, 1] (a finite number), got nan"),
    (10**400, {"low": 0}, "temperature must be a finite number >= 0, got a number with about 401 digits"),
    (Decimal("0.5"), {"low": 0}, "temperature must be a finite number >= 0, got Decimal('0.5')"),
    ("0.5", {}, "temperature must be a finite number, got '0.5'"),
    (False, {}, "temperature must be a finite number, got False"),
])
def test_finite_numbers_that_fail(value, kwargs, message):
    with pytest.raises(OptionError) as caught:
        finite_number(value, "temperature", **kwargs)
    assert str(caught.value) == message


def test_each_item_of_a_list_and_the_error_class():
    assert each((1, 2), "ids", lambda v, w: whole_number(v, w, low=0)) == [1, 2]
    for values, message in [([], "ids is empty"), ("12", "ids must be a list, got '12'"),
                            ({1: 2}, "ids must be a list, got dict"),
                            ([1, -2], r"ids\[1\] must be a whole number >= 0")]:
        with pytest.raises(OptionError, match=message):
            each(values, "ids", lambda v, w: whole_number(v, w, low=0))
    with pytest.raises(PlanError, match="must be a whole number"):
        whole_number("x", "sink", error=PlanError)


EMPTY_ITEM = "--seed must be comma-separated whole numbers such as 1,2,3; '' is not a whole number"


def option(param_type) -> click.Option:
    return click.Option(["--seed"], type=param_type)


@pytest.mark.parametrize("param_type, text, expected", [
    (WholeNumber(0), " 7 ", 7), (WholeNumber(0), "+3", 3), (FiniteFloat(0), "1e-3", 0.001),
    (CommaList(whole=True, low=1), "256, 512", [256, 512]),
    (CommaList(whole=False, low=0, high=1), "0,.5,1", [0.0, 0.5, 1.0]),
])
def test_option_types_convert(param_type, text, expected):
    assert param_type.convert(text, option(param_type), None) == expected


@pytest.mark.parametrize("param_type, text, message", [
    (WholeNumber(0), "-1", "--seed must be a whole number >= 0, got -1"),
    (WholeNumber(0), "1.0", "--seed must be a whole number; '1.0' is not a whole number"),
    (WholeNumber(1, 10), "99999999999999999999", "--seed must lie in 1..10, got 99999999999999999999"),
    (WholeNumber(0), "9" * 5000, "--seed must be a whole number; '" + "9" * 30 + "'... has too many digits"),
    (FiniteFloat(0), "9" * 5000, "--seed must be a finite number >= 0, got inf"),
    (FiniteFloat(0), "nan", "--seed must be a finite number >= 0, got nan"),
    (FiniteFloat(), "-inf", "--seed must be a finite number, got -inf"),
    (FiniteFloat(), "x", "--seed must be a number; 'x' is not a number"),
    (CommaList(whole=True), "1,,2", EMPTY_ITEM),
    (CommaList(whole=True), "1,2,", EMPTY_ITEM),
    (CommaList(whole=True, low=1), "4,0", "--seed must be a whole number >= 1, got 0"),
    (CommaList(whole=False, low=0, high=1), "0.5,1.5", "--seed must lie in [0, 1], got 1.5"),
    (CommaList(whole=False), "a", "--seed must be comma-separated numbers such as 0,0.5,1; 'a' is not a number"),
])
def test_option_types_refuse_with_the_option_named(param_type, text, message):
    with pytest.raises(OptionError) as caught:
        param_type.convert(text, option(param_type), None)
    assert str(caught.value) == message
