"""The one finite-and-bounded check the entry points share (app.number_options)."""

from __future__ import annotations

import argparse
import math

import pytest

from app.number_options import bounded_number, number_problem


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -0.1])
def test_a_non_finite_or_too_small_number_is_a_problem_saying_the_bound(value: float) -> None:
    assert number_problem(value, 0) == "must be a finite number >= 0"
    assert number_problem(value, 0, strict=True, unit="seconds") == "must be a finite number of seconds > 0"


def test_the_bound_itself_fits_unless_strict() -> None:
    assert number_problem(0.0, 0) is None and number_problem(1e-9, 0, strict=True) is None
    assert number_problem(0.0, 0, strict=True) == "must be a finite number > 0"


@pytest.mark.parametrize(("text", "message"), [("nan", "'nan' must be a finite number > 0"),
                                               ("soon", "'soon' is not a number")])  # fmt: skip
def test_the_argparse_type_is_a_type_error_quoting_the_text(text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{message}$"):
        bounded_number(0, strict=True)(text)
    assert bounded_number(0, strict=True)("2.5") == 2.5
