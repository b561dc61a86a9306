"""parse_number / numbers_equal / format_number against hand-written expectations."""

from fractions import Fraction

import pytest

from mathrl.rewards.numbers import MAX_NUMBER_CHARS, format_number, numbers_equal, parse_number


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,000", Fraction(1000)),
        ("$1,000.", Fraction(1000)),
        ("1000.0", Fraction(1000)),
        ("-5", Fraction(-5)),
        ("+5", Fraction(5)),
        (".5", Fraction(1, 2)),
        ("1/2", Fraction(1, 2)),
        ("-1/2", Fraction(-1, 2)),
        ("\\frac{1}{2}", Fraction(1, 2)),
        ("\\dfrac{3}{4}", Fraction(3, 4)),
        ("-0", Fraction(0)),
        ("72.0", Fraction(72)),
        ("  72  ", Fraction(72)),
        ("**72**", Fraction(72)),
        ("$72$", Fraction(72)),
        ("-$5", Fraction(-5)),
        ("$-5", Fraction(-5)),
        ("\\$5", Fraction(5)),
        ("\u22125", Fraction(-5)),  # unicode minus sign
        ("1{,}000", Fraction(1000)),
        ("1,000,000.25", Fraction(4000001, 4)),
        ("50%", Fraction(50)),  # same as a GSM8K gold of 50
        ("50\\%", Fraction(50)),
        ("1,00", None),  # comma not in a thousands position
        ("1,0000", None),
        (",100", None),
        ("1/0", None),
        ("1/2%", None),  # % only after a plain decimal
        ("\u0661\u0662", None),  # Arabic-Indic 12
        ("\uff17\uff12", None),  # fullwidth 72
        ("1e5", None),  # scientific notation rejected (no gold uses it; 1e999999999 is a bomb)
        ("", None),
        ("   ", None),
        (".", None),
        ("$", None),
        ("-", None),
        ("1 000", None),
        ("72 apples", None),
        ("1" * (MAX_NUMBER_CHARS + 1), None),
        ("9" * 1_000_000, None),
    ],
)
def test_parse_number(text: str, expected: Fraction | None) -> None:
    assert parse_number(text) == expected


def test_parse_number_keeps_within_cap() -> None:
    assert parse_number("9" * MAX_NUMBER_CHARS) == Fraction(int("9" * MAX_NUMBER_CHARS))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("72", "72.0", True),
        ("-0", "0", True),
        ("1,000", "1000", True),
        ("0.5", "1/2", True),
        ("72", "73", False),
        ("72", None, False),
        ("x", "x", False),  # unparseable never equals anything
        (Fraction(1, 2), ".5", True),
        (3, "3.00", True),
    ],
)
def test_numbers_equal(a: object, b: object, expected: bool) -> None:
    assert numbers_equal(a, b) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Fraction(72), "72"),
        (Fraction(-3), "-3"),
        (Fraction(0), "0"),
        (Fraction(1, 2), "0.5"),
        (Fraction(-1, 2), "-0.5"),
        (Fraction(1, 8), "0.125"),
        (Fraction(5, 2), "2.5"),
        (Fraction(1, 3), "1/3"),
        (Fraction(-7, 6), "-7/6"),
    ],
)
def test_format_number(value: Fraction, expected: str) -> None:
    assert format_number(value) == expected
    assert parse_number(expected) == value  # canonical form round-trips
