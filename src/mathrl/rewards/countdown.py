"""Safe Countdown checker: a hand-written tokenizer and recursive-descent parser.

Grammar (nothing else is accepted; there is no eval anywhere):
    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := NUMBER | '(' expr ')'
NUMBER is 1..MAX_LITERAL_DIGITS ASCII digits. Whitespace is ASCII space, tab or newline.
Unary minus (and plus) is rejected: Countdown numbers are non-negative and every
one must be used as given, so `-3` is not a legal way to use 3. Without `**` or
names the value of a MAX_LEN-character expression stays small, and arithmetic is
exact (Fraction), so `6/(1-3/4)` is exactly 24.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from mathrl.rewards.extract import PROMPT_STYLES

MAX_LEN = 200
MAX_DEPTH = 32
HARD_MAX_DEPTH = 100
"""Largest max_depth accepted: the parser recurses three frames per parenthesis level."""
MAX_LITERAL_DIGITS = 6

_DIGITS = "0123456789"
_OPERATORS = "+-*/()"
_SPACES = " \t\n\r"
# LaTeX and typographic operators models write inside \boxed{}; mapped before parsing.
_OPERATOR_ALIASES = (
    ("\\times", "*"),
    ("\\cdot", "*"),
    ("\u00d7", "*"),
    ("\\div", "/"),
    ("\u00f7", "/"),
)


class _Invalid(Exception):
    """Internal: the expression is rejected; args[0] is the reason."""


@dataclass(frozen=True, slots=True)
class CountdownResult:
    """Outcome of checking one Countdown expression."""

    valid: bool
    """The expression is well-formed and evaluates (no division by zero)."""
    correct: bool
    """Valid, uses each given number exactly once, and equals the target."""
    value: Fraction | None
    reason: str
    """'ok', 'empty', 'too_long', 'bad_char', 'number_too_long', 'parse_error',
    'too_deep', 'div_by_zero', 'wrong_numbers' or 'wrong_value'."""


def _tokenize(expr: str, max_depth: int) -> list[str]:
    """Split into number and operator tokens; reject any other character."""
    tokens: list[str] = []
    depth = 0
    i, n = 0, len(expr)
    while i < n:
        ch = expr[i]
        if ch in _DIGITS:
            j = i
            while j < n and expr[j] in _DIGITS:
                j += 1
            if j - i > MAX_LITERAL_DIGITS:
                raise _Invalid("number_too_long")
            tokens.append(expr[i:j])
            i = j
            continue
        if ch in _OPERATORS:
            # Checking nesting here keeps the recursive parser far from Python's limit.
            depth += ch == "("
            if depth > max_depth:
                raise _Invalid("too_deep")
            depth -= ch == ")"
            tokens.append(ch)
        elif ch not in _SPACES:
            raise _Invalid("bad_char")
        i += 1
    return tokens


class _Parser:
    """Recursive-descent evaluator over a token list, collecting the literals it reads."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.literals: list[int] = []
        self.div_by_zero = False

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def parse(self) -> Fraction:
        value = self._expr()
        if self.pos != len(self.tokens):
            raise _Invalid("parse_error")
        return value

    def _expr(self) -> Fraction:
        value = self._term()
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            rhs = self._term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def _term(self) -> Fraction:
        value = self._factor()
        while self._peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            rhs = self._factor()
            if op == "*":
                value = value * rhs
            elif rhs == 0:
                # Keep parsing so used_numbers still sees every literal.
                self.div_by_zero = True
            else:
                value = value / rhs
        return value

    def _factor(self) -> Fraction:
        token = self._peek()
        if token is None:
            raise _Invalid("parse_error")
        self.pos += 1
        if token[0] in _DIGITS:
            self.literals.append(int(token))
            return Fraction(int(token))
        if token == "(":
            value = self._expr()
            if self._peek() != ")":
                raise _Invalid("parse_error")
            self.pos += 1
            return value
        raise _Invalid("parse_error")  # operator where a number belongs: `-3`, `**`, `()`


def _run(expr: str, max_len: int, max_depth: int) -> tuple[Fraction | None, list[int], str]:
    """Parse and evaluate; return (value, literals, reason)."""
    if max_depth > HARD_MAX_DEPTH:
        raise ValueError(f"max_depth={max_depth} exceeds HARD_MAX_DEPTH={HARD_MAX_DEPTH}")
    if len(expr) > max_len:
        return None, [], "too_long"
    if not expr.strip():
        return None, [], "empty"
    try:
        parser = _Parser(_tokenize(expr, max_depth))
        value = parser.parse()
    except _Invalid as err:
        return None, [], str(err.args[0])
    if parser.div_by_zero:
        return None, parser.literals, "div_by_zero"
    return value, parser.literals, "ok"


def evaluate_expression(
    expr: str, max_len: int = MAX_LEN, max_depth: int = MAX_DEPTH
) -> Fraction | None:
    """Exact value of an arithmetic expression, or None if it is invalid."""
    return _run(expr, max_len, max_depth)[0]


def used_numbers(expr: str, max_len: int = MAX_LEN, max_depth: int = MAX_DEPTH) -> list[int]:
    """Integer literals in the order they appear ([] if the expression does not parse)."""
    return _run(expr, max_len, max_depth)[1]


def check_countdown(
    expr: str, nums: list[int], target: int, max_len: int = MAX_LEN, max_depth: int = MAX_DEPTH
) -> CountdownResult:
    """Check that `expr` uses each of `nums` exactly once and evaluates to `target`."""
    value, literals, reason = _run(expr, max_len, max_depth)
    if value is None:
        return CountdownResult(valid=False, correct=False, value=None, reason=reason)
    if sorted(literals) != sorted(nums):
        return CountdownResult(valid=True, correct=False, value=value, reason="wrong_numbers")
    if value != target:
        return CountdownResult(valid=True, correct=False, value=value, reason="wrong_value")
    return CountdownResult(valid=True, correct=True, value=value, reason="ok")


# the containers a lenient read tries after the style's own, the least ambiguous first
LENIENT_ORDER = ("think_answer", "boxed", "final_line", "hash")


def extract_countdown_answer(completion: str, style: str, *, lenient: bool = False) -> str | None:
    """The expression in the container for `style`; for `expr = target` the left side.

    The left side is taken because the prompt asks for the expression and models
    often append `= 24`; `24 = 6/(1-3/4)` then fails on wrong_numbers, as intended.
    With `lenient`, the other styles' containers are tried when `style`'s is absent.
    """
    order = [style] + ([s for s in LENIENT_ORDER if s != style] if lenient else [])
    for candidate_style in order:
        content = PROMPT_STYLES.get(candidate_style).container(completion)
        if content is None:
            continue
        content = content.split("=", 1)[0].strip().strip("$").strip()
        if not content:
            continue
        for alias, op in _OPERATOR_ALIASES:
            content = content.replace(alias, op)
        return content
    return None
