"""score_gsm8k schemes, combine, math-verify flag, and every real GSM8K gold answer."""

import json
import sys

import pytest

from conftest import GSM8K_DIR, needs_gsm8k
from mathrl.errors import ConfigError, DataError
from mathrl.rewards.extract import parse_gold_gsm8k
from mathrl.rewards.scoring import (
    FORMAT_REWARD,
    REWARD_SCHEMES,
    RewardResult,
    combine,
    score_gsm8k,
)

# (completion, style, scheme, reward, correct, correct_lenient, format_ok, reason, pred)
CASES = [
    ("Work.\nFinal: 72", "final_line", "format", 1.0, True, True, True, "ok", "72"),
    (
        "Work.\nFinal: 71",
        "final_line",
        "format",
        FORMAT_REWARD,
        False,
        False,
        True,
        "wrong_answer",
        "71",
    ),
    ("The answer is 72", "final_line", "format", 0.0, False, True, False, "no_format", "72"),
    ("I do not know", "final_line", "format", 0.0, False, False, False, "no_answer", None),
    ("Work.\nFinal: 72", "final_line", "binary", 1.0, True, True, True, "ok", "72"),
    ("Work.\nFinal: 71", "final_line", "binary", 0.0, False, False, True, "wrong_answer", "71"),
    ("The answer is 72", "final_line", "binary", 0.0, False, True, False, "no_format", "72"),
    ("The answer is 72", "final_line", "lenient", 1.0, False, True, False, "no_format", "72"),
    ("Work.\nFinal: 71", "final_line", "lenient", 0.0, False, False, True, "wrong_answer", "71"),
    ("#### 72.0", "hash", "format", 1.0, True, True, True, "ok", "72.0"),
    ("#### 5\n#### 72", "hash", "format", 1.0, True, True, True, "ok", "72"),
    ("\\boxed{72", "boxed", "format", 0.0, False, True, False, "no_format", "72"),
    ("\\boxed{72}", "boxed", "format", 1.0, True, True, True, "ok", "72"),
    (
        "<think>t</think><answer>$72</answer>",
        "think_answer",
        "format",
        1.0,
        True,
        True,
        True,
        "ok",
        "$72",
    ),
    (
        "<think>t</think><answer>72 cm</answer>",
        "think_answer",
        "lenient",
        1.0,
        False,
        True,
        False,
        "no_format",
        "72",
    ),
    ("Final: \uff17\uff12", "final_line", "lenient", 0.0, False, False, False, "no_answer", None),
]


@pytest.mark.parametrize(
    (
        "completion",
        "style",
        "scheme",
        "reward",
        "correct",
        "correct_lenient",
        "format_ok",
        "reason",
        "pred",
    ),
    CASES,
)
def test_score_gsm8k(
    completion: str,
    style: str,
    scheme: str,
    reward: float,
    correct: bool,
    correct_lenient: bool,
    format_ok: bool,
    reason: str,
    pred: str | None,
) -> None:
    result = score_gsm8k(completion, "72", style, scheme)
    assert result == RewardResult(
        reward=reward,
        components={"correct": float(correct), "format": float(format_ok)},
        pred=pred,
        correct=correct,
        correct_lenient=correct_lenient,
        format_ok=format_ok,
        reason=reason,
    )


def test_gold_with_commas() -> None:
    assert score_gsm8k("Final: 1000", "1,000", "final_line").reward == 1.0


def test_bad_gold_is_data_error() -> None:
    with pytest.raises(DataError, match="not a number"):
        score_gsm8k("Final: 72", "seventy", "final_line")


def test_unknown_scheme_suggests_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'binary'"):
        score_gsm8k("Final: 72", "72", "final_line", scheme="binaryy")


def test_scheme_registry() -> None:
    assert REWARD_SCHEMES.names() == ["binary", "format", "lenient"]
    assert REWARD_SCHEMES.get("format")(False, False, True) == FORMAT_REWARD


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({"correct": 1.0}, 1.0),
        ({"correct": 1.0, "format": 0.5}, 1.5),
        ({"format": 0.1}, 0.1),
        ({}, 0.0),
    ],
)
def test_combine(weights: dict[str, float], expected: float) -> None:
    assert combine({"correct": 1.0, "format": 1.0}, weights) == pytest.approx(expected)


def test_combine_unknown_component() -> None:
    with pytest.raises(ConfigError, match="formt"):
        combine({"correct": 1.0, "format": 0.0}, {"formt": 1.0})


def test_math_verify_missing_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "math_verify", None)  # None makes the import fail
    with pytest.raises(ConfigError, match=r"pip install 'mathrl\[math-verify\]'"):
        score_gsm8k("\\boxed{72}", "72", "boxed", use_math_verify=True)


def test_math_verify_flag_accepts_latex_equal_to_the_gold_number() -> None:
    """GSM8K with use_math_verify (the real library): LaTeX the number parser cannot read."""
    result = score_gsm8k("\\boxed{\\frac{144}{2}}", "72", "boxed", use_math_verify=True)
    assert (result.reward, result.correct, result.pred) == (1.0, True, "\\frac{144}{2}")
    result = score_gsm8k("\\boxed{6\\cdot 12}", "72", "boxed", use_math_verify=True)
    assert result.correct is True
    result = score_gsm8k("\\boxed{6\\cdot 12}", "72", "boxed", use_math_verify=False)
    assert (result.correct, result.format_ok) == (False, False)  # not a number without it
    result = score_gsm8k("\\boxed{\\frac{144}{x}}", "72", "boxed", use_math_verify=True)
    assert (result.reward, result.format_ok) == (FORMAT_REWARD, True)


@needs_gsm8k
@pytest.mark.parametrize("split", ["train", "test"])
def test_every_gsm8k_gold_parses(split: str) -> None:
    path = GSM8K_DIR / f"{split}.jsonl"
    count = 0
    with path.open(encoding="utf-8") as lines:
        for line_no, line in enumerate(lines, 1):
            answer = json.loads(line)["answer"]
            gold = parse_gold_gsm8k(answer)
            raw = answer.rsplit("####", 1)[1].strip().replace(",", "")
            assert gold == raw, f"{path}:{line_no}"
            # A completion stating the gold in GSM8K format scores as correct.
            assert score_gsm8k(f"#### {gold}", gold, "hash").reward == 1.0
            count += 1
    assert count > 1000
