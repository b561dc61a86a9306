"""Answer extraction: the prompt styles (PROMPT_STYLES, the one list of them), and one
strict and one lenient extractor for GSM8K completions.

Prompt styles and the strict format each one asks for:
- `final_line`: the last non-empty line is `Final: <number>` ("final" in any case;
  markdown `**` anywhere on that line is ignored).
- `hash`: `#### <number>` with nothing else on that line. With several `####`
  answers the last one counts: it is the model's final word, and matching the
  GSM8K gold format (one trailing `####`) is what the reward teaches.
- `boxed`: the content of the last `\\boxed{`, matched with a brace scanner. If that
  last box is unclosed (truncated generation) the answer is None; we do not fall
  back to an earlier box, because the model had moved on from it.
- `think_answer`: exactly `<think>...</think>` then `<answer>...</answer>`, only
  whitespace around and between them.

The lenient extractor tries: strict, then `\\boxed{}`, then `####`, then `Final:`,
then the last number in the last LENIENT_TAIL_CHARS characters.

Bounds: only the last MAX_COMPLETION_CHARS characters are examined (answers come
at the end; a longer completion is degenerate). `think_answer` also checks the
very start for `<think>`. All scans are `rfind` or linear regexes without nested
quantifiers, so a 1 MB adversarial completion costs milliseconds.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mathrl.registry import Registry
from mathrl.rewards.numbers import MAX_NUMBER_CHARS, format_number, parse_number

MAX_COMPLETION_CHARS = 64 * 1024
"""Only this many trailing characters of a completion are examined."""

LENIENT_TAIL_CHARS = 4096
"""The lenient last-number fallback only looks this far back from the end."""

_BRACE_RE = re.compile(r"\\[{}]|[{}]")  # escaped braces are skipped, not counted
# A number token: thousands-grouped or plain integer part, optional decimals; a minus
# only counts as a sign when not glued to a word or digit (`2023-2024` is not -2024).
_NUMBER_TOKEN_RE = re.compile(
    r"(?:(?<![0-9A-Za-z])-)?\$?(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?"
    r"|(?:(?<![0-9A-Za-z])-)?\.[0-9]+"
)


def tail_window(completion: str) -> str:
    """The trailing part of a completion that extractors examine."""
    return completion[-MAX_COMPLETION_CHARS:]


def _numeric_or_none(text: str | None, numeric: bool) -> str | None:
    """Return the stripped text if it is a number (or any non-empty text if not numeric)."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    if numeric and parse_number(text) is None:
        return None
    return text


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (nested braces allowed); None if absent or unclosed."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    begin = start + len("\\boxed{")
    depth = 1
    for match in _BRACE_RE.finditer(text, begin):
        token = match.group()
        if len(token) == 2:
            continue
        depth += 1 if token == "{" else -1
        if depth == 0:
            return text[begin : match.start()]
    return None


def last_hash_line(text: str) -> str | None:
    """The rest of the line after the last `####`, or None if there is no `####`."""
    start = text.rfind("####")
    if start < 0:
        return None
    rest = text[start + 4 :]
    newline = rest.find("\n")
    return rest if newline < 0 else rest[:newline]


def last_line(text: str) -> str:
    """The last non-empty line, with markdown `**` removed."""
    stripped = text.rstrip()
    return stripped[stripped.rfind("\n") + 1 :].replace("**", "").strip()


def after_final(line: str) -> str | None:
    """For a line `Final: X` (any case) return `X`, else None."""
    if line[:5].lower() != "final":
        return None
    rest = line[5:].lstrip()
    return rest[1:] if rest.startswith(":") else None


def think_answer_content(completion: str) -> str | None:
    """Answer text of a strictly formatted `<think>..</think><answer>..</answer>` completion."""
    if not completion[:MAX_COMPLETION_CHARS].lstrip().startswith("<think>"):
        return None
    text = tail_window(completion).rstrip()
    # The opening <think> lies outside a truncated window, so none may appear in it.
    expected_open = 1 if len(completion) <= MAX_COMPLETION_CHARS else 0
    counts = (text.count("<think>"), text.count("</think>"), text.count("<answer>"))
    if counts != (expected_open, 1, 1) or text.count("</answer>") != 1:
        return None
    if not text.endswith("</answer>"):
        return None
    open_at = text.rfind("<answer>")
    if not text[:open_at].rstrip().endswith("</think>"):
        return None
    return text[open_at + len("<answer>") : -len("</answer>")]


def _last_answer_tag(completion: str) -> str | None:
    """Content of the last `<answer>...</answer>` pair, wherever it is."""
    window = tail_window(completion)
    close = window.rfind("</answer>")
    start = window.rfind("<answer>", 0, close) if close >= 0 else -1
    return window[start + len("<answer>") : close] if start >= 0 else None


@dataclass(frozen=True)
class AnswerFormat:
    """Where a prompt style puts the final answer; both readers take the whole completion."""

    strict: Callable[[str], str | None]
    """The answer's raw text if the completion follows the style exactly, else None."""
    container: Callable[[str], str | None]
    """The raw text of the style's last answer container, however the rest looks."""


def _final_line(completion: str) -> str | None:
    return after_final(last_line(tail_window(completion)))


def _hash_line(completion: str) -> str | None:
    return last_hash_line(tail_window(completion))


def _boxed(completion: str) -> str | None:
    return last_boxed(tail_window(completion))


PROMPT_STYLES: Registry[AnswerFormat] = Registry("prompt style")
PROMPT_STYLES.add("final_line", AnswerFormat(_final_line, _final_line))
PROMPT_STYLES.add("hash", AnswerFormat(_hash_line, _hash_line))
PROMPT_STYLES.add("boxed", AnswerFormat(_boxed, _boxed))
PROMPT_STYLES.add("think_answer", AnswerFormat(think_answer_content, _last_answer_tag))


def check_style(style: str) -> None:
    """Raise ConfigError (suggesting the closest name) if `style` is not a prompt style."""
    PROMPT_STYLES.get(style)


def extract_strict(completion: str, style: str, *, numeric: bool = True) -> str | None:
    """The answer if the completion follows `style` exactly, else None.

    With `numeric=True` (GSM8K) the answer must parse as a number; with False any
    non-empty content of the container is returned (for math-verify).
    """
    return _numeric_or_none(PROMPT_STYLES.get(style).strict(completion), numeric)


def _short_token(match: re.Match[str] | None) -> str | None:
    """The matched token, unless it is too long to be a number (a run of 4096 digits)."""
    if match is None or len(match.group()) > MAX_NUMBER_CHARS:
        return None
    return match.group()


def _first_number(text: str | None) -> str | None:
    """First number token in `text` (used inside an already located container)."""
    if text is None:
        return None
    whole = _numeric_or_none(text, numeric=True)
    if whole is not None:
        return whole
    match = _NUMBER_TOKEN_RE.search(text[:LENIENT_TAIL_CHARS])
    return _short_token(match)


def _lenient_final(window: str) -> str | None:
    """Number after the last `final...:` (e.g. `Final answer: 72`), on the same line."""
    lowered = window[-LENIENT_TAIL_CHARS:].lower()
    start = lowered.rfind("final")
    if start < 0:
        return None
    colon = lowered.find(":", start, start + 20)  # allows "final answer:" but not far away
    if colon < 0:
        return None
    rest = window[-LENIENT_TAIL_CHARS:][colon + 1 :]
    newline = rest.find("\n")
    return _first_number((rest if newline < 0 else rest[:newline]).replace("**", ""))


def last_number(text: str) -> str | None:
    """The last number token in the last LENIENT_TAIL_CHARS characters, or None."""
    # deque(maxlen=1) keeps only the last match without building a list.
    last = deque(_NUMBER_TOKEN_RE.finditer(text[-LENIENT_TAIL_CHARS:]), maxlen=1)
    return _short_token(last[0] if last else None)


def extract_lenient(completion: str, style: str, *, numeric: bool = True) -> str | None:
    """Strict answer, else boxed, else `####`, else `Final:`, else the last number."""
    strict = extract_strict(completion, style, numeric=numeric)
    if strict is not None:
        return strict
    window = tail_window(completion)
    for candidate in (
        _first_number(last_boxed(window)),
        _first_number(last_hash_line(window)),
        _lenient_final(window),
        last_number(window),
    ):
        if candidate is not None:
            return candidate
    return None


def parse_gold_gsm8k(answer_text: str) -> str:
    """The canonical gold number of a GSM8K `answer` field (`... #### 1,000` -> `1000`)."""
    start = answer_text.rfind("####")
    if start < 0:
        raise ValueError(f"GSM8K answer has no '####' marker: {answer_text[-80:]!r}")
    raw = answer_text[start + 4 :].strip().replace(",", "")
    value = parse_number(raw)
    if value is None:
        raise ValueError(f"GSM8K gold after '####' is not a number: {raw[:80]!r}")
    return format_number(value)
