"""Safe Countdown evaluation: exploit strings, arithmetic edge cases, exact rewards."""

import time
from fractions import Fraction

import pytest

from mathrl.rewards.countdown import (
    check_countdown,
    evaluate_expression,
    extract_countdown_answer,
    used_numbers,
)
from mathrl.rewards.scoring import FORMAT_REWARD, score_countdown

NUMS = [1, 3, 4, 6]
TARGET = 24

# (expression, reason, value, format reward) for nums [1, 3, 4, 6], target 24.
# Format reward: 1.0 correct, FORMAT_REWARD for a valid but wrong expression, else 0.0.
CASES = [
    ("6/(1-3/4)", "ok", Fraction(24), 1.0),  # exact fractions in intermediate steps
    ("6 / (1 - 3 / 4)", "ok", Fraction(24), 1.0),
    ("(6/(1-3/4))", "ok", Fraction(24), 1.0),
    ("6*4*1*3", "wrong_value", Fraction(72), FORMAT_REWARD),
    ("6*4", "wrong_numbers", Fraction(24), FORMAT_REWARD),  # numbers missing
    ("6*4*1*1", "wrong_numbers", Fraction(24), FORMAT_REWARD),  # 1 used twice, 3 missing
    ("6*4+3-3+1-1", "wrong_numbers", Fraction(24), FORMAT_REWARD),  # extra numbers
    ("24", "wrong_numbers", Fraction(24), FORMAT_REWARD),
    ("__import__('os').system('echo hi')", "bad_char", None, 0.0),
    ("().__class__.__bases__", "bad_char", None, 0.0),
    ("lambda: 1", "bad_char", None, 0.0),
    ("[x for x in range(9)]", "bad_char", None, 0.0),
    ("44**35**19", "parse_error", None, 0.0),
    ("9**9**9", "parse_error", None, 0.0),
    ("6**4", "parse_error", None, 0.0),
    ("3/0", "div_by_zero", None, 0.0),
    ("(1+2)/(3-3)", "div_by_zero", None, 0.0),
    ("6/(4-1-3)", "div_by_zero", None, 0.0),
    ("-3+6*4+1+3-1", "parse_error", None, 0.0),  # no unary minus
    ("+6*4*1", "parse_error", None, 0.0),
    ("1.5*4*4", "bad_char", None, 0.0),
    ("\uff16*4*1*\uff13", "bad_char", None, 0.0),  # fullwidth digits
    ("\u0666*4*1*\u0663", "bad_char", None, 0.0),  # Arabic-Indic digits
    ("6*4*(3-1", "parse_error", None, 0.0),
    ("6*4)", "parse_error", None, 0.0),
    ("()", "parse_error", None, 0.0),
    ("6 4", "parse_error", None, 0.0),
    ("1234567+1", "number_too_long", None, 0.0),
    ("(" * 300 + "1" + ")" * 300, "too_long", None, 0.0),
    ("(" * 33 + "6" + ")" * 33 + "*4*1*3", "too_deep", None, 0.0),
    ("1+" * 200 + "1", "too_long", None, 0.0),
]


@pytest.mark.timeout(5)
@pytest.mark.parametrize(("expr", "reason", "value", "reward"), CASES)
def test_check_countdown(expr: str, reason: str, value: Fraction | None, reward: float) -> None:
    result = check_countdown(expr, NUMS, TARGET)
    assert result.reason == reason
    assert result.value == value
    assert result.valid is (value is not None)
    assert result.correct is (reason == "ok")
    scored = score_countdown(
        f"<think>t</think><answer>{expr}</answer>", NUMS, TARGET, "think_answer"
    )
    assert scored.reward == reward
    assert scored.reason == reason
    assert scored.components == {
        "correct": float(reason == "ok"),
        "format": float(value is not None),
    }


@pytest.mark.timeout(5)
def test_deep_nesting_is_rejected_without_recursion() -> None:
    expr = "(" * 300 + "1" + ")" * 300
    start = time.perf_counter()
    assert evaluate_expression(expr, max_len=10_000) is None
    assert check_countdown(expr, [1], 1, max_len=10_000).reason == "too_deep"
    assert check_countdown("(" * 100_000, [1], 1, max_len=1_000_000).reason == "too_deep"
    assert time.perf_counter() - start < 0.5


def test_empty_expression() -> None:
    assert check_countdown("  ", NUMS, TARGET).reason == "empty"
    # An empty container counts as no answer at all.
    assert score_countdown("<answer> </answer>", NUMS, TARGET, "think_answer").reason == "no_answer"


def test_max_depth_above_hard_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="HARD_MAX_DEPTH"):
        evaluate_expression("1", max_depth=10_000)


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        ("1+2*3", Fraction(7)),
        ("(1+2)*3", Fraction(9)),
        ("8/3", Fraction(8, 3)),
        ("10-4-3", Fraction(3)),
        ("2/4/2", Fraction(1, 4)),
    ],
)
def test_evaluate_precedence_and_associativity(expr: str, value: Fraction) -> None:
    assert evaluate_expression(expr) == value


@pytest.mark.parametrize(
    ("expr", "numbers"),
    [("6/(1-3/4)", [6, 1, 3, 4]), ("3/0", [3, 0]), ("10*10", [10, 10]), ("1+x", []), ("", [])],
)
def test_used_numbers(expr: str, numbers: list[int]) -> None:
    assert used_numbers(expr) == numbers


# (completion, style, extracted expression)
EXTRACT_CASES = [
    ("<think>a</think><answer>6/(1-3/4)</answer>", "think_answer", "6/(1-3/4)"),
    ("<answer>1+1</answer> then <answer>6/(1-3/4) = 24</answer>", "think_answer", "6/(1-3/4)"),
    ("work\nFinal: 6/(1-3/4) = 24", "final_line", "6/(1-3/4)"),
    ("work\n**Final:** 6/(1-3/4)", "final_line", "6/(1-3/4)"),
    ("so $\\boxed{6 \\div (1 - 3 \\div 4)}$", "boxed", "6 / (1 - 3 / 4)"),
    ("\\boxed{6 \\times 4 \\times 1}", "boxed", "6 * 4 * 1"),
    ("#### 6/(1-3/4)", "hash", "6/(1-3/4)"),
    ("24 = 6/(1-3/4)", "final_line", None),
    ("<answer></answer>", "think_answer", None),
    ("\\boxed{6/(1-3/4)", "boxed", None),
]


@pytest.mark.parametrize(("completion", "style", "expr"), EXTRACT_CASES)
def test_extract_countdown_answer(completion: str, style: str, expr: str | None) -> None:
    assert extract_countdown_answer(completion, style) == expr


def test_left_side_of_equation_is_checked() -> None:
    result = score_countdown("Final: 24 = 6/(1-3/4)", NUMS, TARGET, "final_line")
    assert (result.reward, result.reason) == (FORMAT_REWARD, "wrong_numbers")


@pytest.mark.parametrize(
    ("scheme", "completion", "reward", "correct_lenient"),
    [
        ("format", "<think>t</think><answer>6/(1-3/4)</answer>", 1.0, True),
        ("binary", "<think>t</think><answer>6*4*1*3</answer>", 0.0, False),
        ("format", "no answer here", 0.0, False),
        ("format", "\\boxed{6/(1-3/4)}", 0.0, True),  # right answer, wrong container
        ("lenient", "\\boxed{6/(1-3/4)}", 1.0, True),
        ("binary", "\\boxed{6/(1-3/4)}", 0.0, True),
    ],
)
def test_score_countdown_schemes(
    scheme: str, completion: str, reward: float, correct_lenient: bool
) -> None:
    result = score_countdown(completion, NUMS, TARGET, "think_answer", scheme)
    assert result.reward == reward
    assert result.correct_lenient is correct_lenient


def test_score_countdown_no_answer() -> None:
    result = score_countdown("I give up", NUMS, TARGET, "think_answer")
    assert (result.reward, result.reason, result.pred, result.format_ok) == (
        0.0,
        "no_answer",
        None,
        False,
    )
