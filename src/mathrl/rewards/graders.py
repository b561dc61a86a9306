"""Graders: how an extracted answer is compared with the gold one (the `qa` task's
task.grader; GSM8K uses `numeric`). Each grader names its strict extraction (numeric or any
text), its lenient fallback and its equality.

- `numeric`:     numbers equal after GSM8K-style normalisation (`1,000` = `1000.0`, `$5` = `5`).
- `math_verify`: LaTeX-aware equivalence by math-verify (`\\frac{1}{2}` = `0.5`), or numbers equal.
- `exact`:       strings equal after normalisation (case, spaces, `\\text{}`, `$`, a final period).
- `choice`:      the same option letter (`(B)`, `B.`, `b`, `B) 42` all read as B).

Pure Python: no torch. Extraction is bounded as in mathrl.rewards.extract (only the tail of
a completion is examined, linear regexes), and comparisons see at most MAX_ANSWER_CHARS.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from mathrl.errors import ConfigError
from mathrl.registry import Registry
from mathrl.rewards.extract import (
    after_final,
    extract_lenient,
    extract_strict,
    last_boxed,
    last_hash_line,
    last_line,
    tail_window,
)
from mathrl.rewards.numbers import numbers_equal, parse_number

MAX_ANSWER_CHARS = 1000
"""Answers longer than this are cut before comparison (a real answer is short)."""


@dataclass(frozen=True)
class Grader:
    """Extraction and comparison for one kind of answer."""

    numeric: bool
    """The strict extractor only accepts a number."""
    lenient: Callable[[str, str], str | None]
    """(completion, style) -> the answer found anywhere plausible, or None."""
    equal: Callable[[str, str], bool]
    """(pred, gold) -> whether they are the same answer."""
    check_gold: Callable[[str], str | None] = lambda gold: None
    """An error message when a gold answer cannot be graded, else None."""
    prepare: Callable[[], object] = lambda: None
    """Raises a ConfigError naming the extra to install when the grader cannot run."""


GRADERS: Registry[Grader] = Registry("grader")


def _text_lenient(completion: str, style: str) -> str | None:
    """Strict text, else the last \\boxed{}, `####` line, `Final:` line, else the last number."""
    strict = extract_strict(completion, style, numeric=False)
    if strict is not None:
        return strict
    window = tail_window(completion)
    for candidate in (last_boxed(window), last_hash_line(window), after_final(last_line(window))):
        if candidate is not None and candidate.strip():
            return candidate.strip()
    return extract_lenient(completion, style, numeric=True)


def _numeric_gold(gold: str) -> str | None:
    return None if parse_number(gold) is not None else f"gold answer is not a number: {gold[:80]!r}"


GRADERS.add(
    "numeric",
    Grader(
        numeric=True,
        lenient=lambda c, s: extract_lenient(c, s, numeric=True),
        equal=lambda p, g: numbers_equal(p[:MAX_ANSWER_CHARS], g),
        check_gold=_numeric_gold,
    ),
)

_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def normalize_text(answer: str) -> str:
    """Case-folded, `\\text{x}` -> x, no `$`, single spaces, no trailing period."""
    text = _TEXT_WRAPPER.sub(r"\1", answer[:MAX_ANSWER_CHARS]).replace("$", "")
    return " ".join(text.split()).rstrip(".").strip().casefold()


def _exact_equal(pred: str, gold: str) -> bool:
    a, b = normalize_text(pred), normalize_text(gold)
    return a == b or numbers_equal(a, b)


GRADERS.add("exact", Grader(numeric=False, lenient=_text_lenient, equal=_exact_equal))

_LETTER = re.compile(r"\(?([A-Za-z])\)?(?:[.:)]|\s|$)")
_ANSWER_LETTER = re.compile(r"answer(?:\s+is)?\s*[:\-]?\s*\(?([A-Z])\)?(?![A-Za-z])")


def choice_letter(answer: str) -> str | None:
    """The option letter an answer starts with (`(b)`, `B.`, `B) 42` -> B), or None."""
    text = answer.strip()[:MAX_ANSWER_CHARS].replace("*", "")
    match = _LETTER.match(text)
    return match.group(1).upper() if match else None


def _choice_lenient(completion: str, style: str) -> str | None:
    found = _text_lenient(completion, style)
    if found is not None and choice_letter(found) is not None:
        return found
    hits = _ANSWER_LETTER.findall(tail_window(completion)[-4096:])
    return hits[-1] if hits else None


def _choice_equal(pred: str, gold: str) -> bool:
    letter = choice_letter(pred)
    return letter is not None and letter == choice_letter(gold)


def _choice_gold(gold: str) -> str | None:
    ok = choice_letter(gold) is not None
    return None if ok else f"gold answer is not an option letter: {gold[:80]!r}"


GRADERS.add(
    "choice",
    Grader(numeric=False, lenient=_choice_lenient, equal=_choice_equal, check_gold=_choice_gold),
)


def load_math_verify() -> ModuleType:
    """Import math_verify lazily: it pulls in sympy and is an optional extra."""
    try:
        return importlib.import_module("math_verify")
    except ModuleNotFoundError as err:
        raise ConfigError(
            "math_verify grading (task.grader, task.use_math_verify) needs the math-verify "
            "extra: pip install 'mathrl[math-verify]'"
        ) from err


def as_latex(answer: str) -> str:
    """An extracted answer in `$...$`: math_verify only finds LaTeX between delimiters
    (a bare `\\dfrac12` or `(1, 2]` parses to nothing)."""
    text = answer.strip()
    return text if "$" in text or "\\boxed" in text else f"${text}$"


def math_verify_equal_with(module: ModuleType, gold: str, pred: str) -> bool:
    """LaTeX-aware equivalence, gold first as math_verify expects."""
    gold, pred = as_latex(gold), as_latex(pred)
    if threading.current_thread() is threading.main_thread():
        return bool(module.verify(module.parse(gold), module.parse(pred)))
    # math_verify's own timeouts use SIGALRM, which only works on the main thread;
    # off it we disable them and rely on RewardPool for the time limit.
    gold_parsed = module.parse(gold, parsing_timeout=None)
    pred_parsed = module.parse(pred, parsing_timeout=None)
    return bool(module.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _math_verify_equal(pred: str, gold: str) -> bool:
    pred = pred[:MAX_ANSWER_CHARS]
    return numbers_equal(pred, gold) or math_verify_equal_with(load_math_verify(), gold, pred)


GRADERS.add(
    "math_verify",
    Grader(
        numeric=False, lenient=_text_lenient, equal=_math_verify_equal, prepare=load_math_verify
    ),
)


def get_grader(name: str) -> Grader:
    """Look up a grader; an unknown name is a ConfigError suggesting the closest."""
    return GRADERS.get(name)
