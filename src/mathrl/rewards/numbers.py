"""Numeric normalisation: turn one answer string into an exact Fraction.

Decisions (each has a test row):
- Only ASCII digits count. Arabic-Indic or fullwidth digits are rejected, never
  transliterated, so `\\d` is never used.
- Thousands commas must sit in groups of three (`1,000` ok, `1,00` rejected).
- `50%` parses as 50: GSM8K golds are plain numbers, and a model that writes
  "50%" for a gold of 50 means the same quantity. `%` is only accepted after a
  plain decimal (not after a fraction), so `1/2%` is rejected.
- Scientific notation (`1e5`) is rejected: no GSM8K gold uses it, and allowing
  exponents lets `1e999999999` build a gigantic integer.
- Input longer than MAX_NUMBER_CHARS is rejected before any work is done.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_NUMBER_CHARS = 64
"""Longest string parse_number looks at; one number never needs more."""

# Each pattern is anchored and has no nested quantifiers, so matching is linear.
_DECIMAL_RE = re.compile(r"(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)?(?:\.[0-9]+)?")
_SLASH_RE = re.compile(r"([0-9]+)/([0-9]+)")
_FRAC_RE = re.compile(r"\\[dt]?frac\{([0-9]+)\}\{([0-9]+)\}")


def _unwrap(text: str) -> str:
    """Strip whitespace, markdown bold and `$...$` math delimiters around a number."""
    text = text.strip()
    for _ in range(2):  # at most `**$72$**`-style double wrapping
        if text.startswith("**") and text.endswith("**") and len(text) >= 4:
            text = text[2:-2].strip()
        if text.startswith("$") and text.endswith("$") and len(text) >= 2:
            text = text[1:-1].strip()
    return text


def _split_sign(text: str) -> tuple[int, str]:
    """Return (sign, rest); a currency `$` may sit on either side of the sign."""
    text = text.replace("\\$", "$").replace("\u2212", "-")  # LaTeX dollar, unicode minus
    sign = 1
    if text.startswith("$"):
        text = text[1:]
    if text[:1] in ("-", "+"):
        sign = -1 if text[0] == "-" else 1
        text = text[1:]
    if text.startswith("$"):
        text = text[1:]
    return sign, text


def _parse_fraction(body: str) -> Fraction | None:
    """Parse `a/b` or `\\frac{a}{b}`; a zero denominator is not a number."""
    match = _SLASH_RE.fullmatch(body) or _FRAC_RE.fullmatch(body)
    if match is None:
        return None
    den = int(match.group(2))
    return Fraction(int(match.group(1)), den) if den != 0 else None


def parse_number(text: str) -> Fraction | None:
    """Parse one number (`1,000`, `$5.`, `.5`, `-3`, `1/2`, `\\frac{1}{2}`, `50%`) or None."""
    if not isinstance(text, str) or len(text) > MAX_NUMBER_CHARS:
        return None
    sign, body = _split_sign(_unwrap(text))
    body = body.replace("{,}", ",")  # LaTeX thousands separator `1{,}000`
    if body.endswith("."):  # sentence-final period: "The answer is 1000."
        body = body[:-1]
    fraction = _parse_fraction(body)
    if fraction is not None:
        return sign * fraction
    if body.endswith("\\%"):
        body = body[:-2]
    elif body.endswith("%"):
        body = body[:-1]
    if not any("0" <= ch <= "9" for ch in body) or _DECIMAL_RE.fullmatch(body) is None:
        return None
    return sign * Fraction(body.replace(",", ""))


def _as_fraction(value: str | Fraction | int | None) -> Fraction | None:
    """Coerce a string or number to a Fraction (None when it does not parse)."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_number(value)
    return Fraction(value)


def numbers_equal(a: str | Fraction | int | None, b: str | Fraction | int | None) -> bool:
    """True iff both sides parse and are exactly equal (`72.0 == 72`, `-0 == 0`)."""
    fa, fb = _as_fraction(a), _as_fraction(b)
    return fa is not None and fb is not None and fa == fb


def format_number(value: Fraction) -> str:
    """Canonical string: `72`, `-3`, `0.5`, and `1/3` when the decimal does not terminate."""
    if value.denominator == 1:
        return str(value.numerator)
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    digits = str(scaled).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"
