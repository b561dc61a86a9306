"""Strict and lenient GSM8K extractors: one table row per (completion, style) case."""

import time

import pytest

from mathrl.errors import ConfigError
from mathrl.rewards.extract import (
    LENIENT_TAIL_CHARS,
    MAX_COMPLETION_CHARS,
    PROMPT_STYLES,
    extract_lenient,
    extract_strict,
    last_boxed,
    parse_gold_gsm8k,
)

THINK = "<think>48/2 = 24, 48 + 24 = 72</think>"

# (completion, style, strict, lenient)
CASES = [
    # final_line
    ("Work.\nFinal: 72", "final_line", "72", "72"),
    ("Work.\nfinal: 72\n\n", "final_line", "72", "72"),
    ("Work.\n**Final: 72**", "final_line", "72", "72"),
    ("Work.\n**Final:** $1,000.", "final_line", "$1,000.", "$1,000."),
    ("Final: 72\nThat is all.", "final_line", None, "72"),  # not the last line
    ("Final answer: 72", "final_line", None, "72"),  # strict wants exactly "Final:"
    ("Final: seventy-two", "final_line", None, None),
    ("Final: \u0667\u0662", "final_line", None, None),  # Arabic-Indic digits
    ("Final: \uff17\uff12", "final_line", None, None),  # fullwidth digits
    ("The answer is 72.", "final_line", None, "72"),
    ("", "final_line", None, None),
    # hash
    ("Work.\n#### 72", "hash", "72", "72"),
    ("#### 5\nOn reflection:\n#### 72", "hash", "72", "72"),  # two answers: the last counts
    ("#### 72\nDone.", "hash", "72", "72"),
    ("#### 72 apples", "hash", None, "72"),
    ("####", "hash", None, None),
    ("Final: 72", "hash", None, "72"),
    ("", "hash", None, None),
    # boxed
    ("So \\boxed{72}.", "boxed", "72", "72"),
    ("\\boxed{5} then \\boxed{72}", "boxed", "72", "72"),
    ("\\boxed{\\frac{1}{2}}", "boxed", "\\frac{1}{2}", "\\frac{1}{2}"),
    ("\\boxed{72", "boxed", None, "72"),  # truncated: no strict answer
    ("\\boxed{5} and finally \\boxed{72", "boxed", None, "72"),  # last box truncated
    ("\\boxed{72 \\text{ apples}}", "boxed", None, "72"),
    ("\\boxed{}", "boxed", None, None),
    ("#### 72", "boxed", None, "72"),
    # think_answer
    (f"{THINK}<answer>72</answer>", "think_answer", "72", "72"),
    (f"  {THINK}\n\n<answer> 72 </answer>\n", "think_answer", "72", "72"),
    (f"{THINK}<answer>72</answer> trailing", "think_answer", None, "72"),
    (f"preamble {THINK}<answer>72</answer>", "think_answer", None, "72"),
    (f"{THINK} text <answer>72</answer>", "think_answer", None, "72"),
    (f"{THINK}<answer>1</answer><answer>72</answer>", "think_answer", None, "72"),
    (f"{THINK}<think>again</think><answer>72</answer>", "think_answer", None, "72"),
    (f"{THINK}<answer>72 apples</answer>", "think_answer", None, "72"),
    ("<answer>72</answer>", "think_answer", None, "72"),
    (f"{THINK}<answer>72", "think_answer", None, "72"),
    # lenient fallback order: boxed beats #### beats Final: beats last number
    ("\\boxed{1}\n#### 2\nFinal: 3\n4", "think_answer", None, "1"),
    ("#### 2\nFinal: 3\n4", "boxed", None, "2"),
    ("Final: 3\n4", "hash", None, "3"),
    ("years 2023-2024", "hash", None, "2024"),  # a hyphen is not a minus sign
    ("it fell by -5", "hash", None, "-5"),
]


@pytest.mark.parametrize(("completion", "style", "strict", "lenient"), CASES)
def test_extract(completion: str, style: str, strict: str | None, lenient: str | None) -> None:
    assert extract_strict(completion, style) == strict
    assert extract_lenient(completion, style) == lenient


def test_non_numeric_mode_returns_container_content() -> None:
    assert extract_strict("\\boxed{\\frac{3}{x}}", "boxed", numeric=False) == "\\frac{3}{x}"
    assert extract_strict("\\boxed{\\frac{3}{x}}", "boxed") is None


def test_last_boxed_ignores_escaped_braces() -> None:
    assert last_boxed("\\boxed{\\{1\\}}") == "\\{1\\}"


def test_unknown_style_is_config_error() -> None:
    with pytest.raises(ConfigError, match="final_line"):
        extract_strict("Final: 1", "finalline")


ADVERSARIAL = [
    "x" * 1_000_000,
    "7" * 1_000_000,
    "#" * 100_000,
    "Final:" + " " * 100_000 + "x",
    "1," * 50_000,
    "\\boxed{" * 10_000,
    "{" * 500_000 + "\\boxed{" + "}" * 500_000,
    "<think>" * 100_000,
    "</answer><answer>" * 50_000,
    "-" * 1_000_000,
    "1.1." * 250_000,
    "\n" * 1_000_000,
    "\u0667" * 1_000_000,
]


@pytest.mark.timeout(5)
@pytest.mark.parametrize("completion", ADVERSARIAL, ids=lambda c: repr(c[:12]) + f"*{len(c)}")
@pytest.mark.parametrize("style", PROMPT_STYLES.names())
def test_adversarial_inputs_are_fast(completion: str, style: str) -> None:
    start = time.perf_counter()
    extract_strict(completion, style)
    extract_lenient(completion, style)
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize(
    ("completion", "style", "strict", "lenient"),
    [
        ("#" * 100_000, "hash", None, None),
        ("Final:" + " " * 100_000 + "x", "final_line", None, None),
        ("\\boxed{" * 10_000, "boxed", None, None),
        ("7" * 1_000_000, "final_line", None, None),  # too long to be a number
        ("1," * 50_000, "final_line", None, "1"),
    ],
)
def test_adversarial_results(
    completion: str, style: str, strict: str | None, lenient: str | None
) -> None:
    assert extract_strict(completion, style) == strict
    assert extract_lenient(completion, style) == lenient


def test_one_megabyte_completion_with_answer_at_end() -> None:
    completion = "Let me think. " * 75_000 + "\n#### 72"
    assert len(completion) > 1_000_000
    start = time.perf_counter()
    assert extract_strict(completion, "hash") == "72"
    assert extract_lenient(completion, "final_line") == "72"
    assert time.perf_counter() - start < 0.05


def test_only_the_tail_is_examined() -> None:
    # An answer further back than the window is not seen (documented cap).
    completion = "#### 72\n" + "x" * MAX_COMPLETION_CHARS
    assert extract_strict(completion, "hash") is None
    assert extract_lenient("answer 72 " + "x" * LENIENT_TAIL_CHARS, "hash") is None


def test_long_think_answer_still_strict() -> None:
    completion = "<think>" + "hmm " * 50_000 + "</think><answer>72</answer>"
    assert extract_strict(completion, "think_answer") == "72"


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
        ("... #### 1,000", "1000"),
        ("#### -3", "-3"),
        ("#### 0.5", "0.5"),
    ],
)
def test_parse_gold_gsm8k(answer: str, gold: str) -> None:
    assert parse_gold_gsm8k(answer) == gold


@pytest.mark.parametrize(
    ("answer", "message"), [("no marker 72", "no '####'"), ("#### seventy", "not a number")]
)
def test_parse_gold_gsm8k_errors(answer: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_gold_gsm8k(answer)


@pytest.mark.parametrize(
    ("style", "completion", "strict", "container"),
    [
        # the strict reader wants the whole format; the container is found anywhere
        ("think_answer", "x <answer>5</answer> y", None, "5"),
        ("think_answer", "<think>a</think><answer>5</answer>", "5", "5"),
        ("final_line", "Final: 5\nmore", None, None),
        ("boxed", "\\boxed{5} then text", "5", "5"),
    ],
)
def test_answer_format_readers(style: str, completion: str, strict: str | None, container) -> None:
    fmt = PROMPT_STYLES.get(style)
    assert (fmt.strict(completion), fmt.container(completion)) == (strict, container)
