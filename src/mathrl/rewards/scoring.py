"""Reward functions tasks call: extraction + comparison + a reward scheme.

Schemes (REWARD_SCHEMES), given strict correctness, lenient correctness and format:
- `format`:  1.0 strict-correct, FORMAT_REWARD if the strict format was followed
  but the answer is wrong, 0.0 otherwise.
- `binary`:  1.0 strict-correct else 0.0.
- `lenient`: 1.0 lenient-correct else 0.0.
"format followed" means the strict extractor found its container and the content
parsed (a number for GSM8K, a valid expression for Countdown).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mathrl.errors import ConfigError, DataError
from mathrl.registry import Registry
from mathrl.rewards.countdown import check_countdown, extract_countdown_answer
from mathrl.rewards.extract import check_style, extract_strict
from mathrl.rewards.graders import get_grader
from mathrl.rewards.numbers import parse_number

FORMAT_REWARD = 0.1
"""Reward for a well-formatted but wrong answer under the `format` scheme."""


@dataclass(frozen=True, slots=True)
class RewardResult:
    """One scored completion: the reward and why."""

    reward: float
    components: dict[str, float] = field(default_factory=dict)
    pred: str | None = None
    correct: bool = False
    correct_lenient: bool = False
    format_ok: bool = False
    reason: str = ""


def zero_result(reason: str) -> RewardResult:
    """A zero reward carrying `reason` (timeouts, errors, unscorable outputs)."""
    return RewardResult(0.0, {"correct": 0.0, "format": 0.0}, None, False, False, False, reason)


SchemeFn = Callable[[bool, bool, bool], float]
REWARD_SCHEMES: Registry[SchemeFn] = Registry("reward scheme")
register_scheme = REWARD_SCHEMES.register
"""Decorator adding `fn(correct, correct_lenient, format_ok) -> reward` to REWARD_SCHEMES."""


@register_scheme("format")
def _format_scheme(correct: bool, correct_lenient: bool, format_ok: bool) -> float:
    return 1.0 if correct else FORMAT_REWARD if format_ok else 0.0


@register_scheme("binary")
def _binary_scheme(correct: bool, correct_lenient: bool, format_ok: bool) -> float:
    return 1.0 if correct else 0.0


@register_scheme("lenient")
def _lenient_scheme(correct: bool, correct_lenient: bool, format_ok: bool) -> float:
    return 1.0 if correct_lenient else 0.0


def get_scheme(name: str) -> SchemeFn:
    """Look up a reward scheme; an unknown name is a ConfigError suggesting the closest."""
    return REWARD_SCHEMES.get(name)


def combine(components: dict[str, float], weights: dict[str, float]) -> float:
    """Weighted sum of components; a weight for a missing component is a ConfigError."""
    missing = sorted(set(weights) - set(components))
    if missing:
        raise ConfigError(
            f"reward weights name unknown components {missing}; have {sorted(components)}"
        )
    return float(sum(weight * components[name] for name, weight in weights.items()))


def score_gsm8k(
    completion: str,
    gold: str,
    style: str,
    scheme: str = "format",
    use_math_verify: bool = False,
) -> RewardResult:
    """Score one GSM8K completion against the gold number under `scheme` (the numeric
    grader, or math_verify, which also accepts LaTeX such as `\\frac{144}{2}`)."""
    if parse_number(gold) is None:
        raise DataError(f"GSM8K gold answer is not a number: {gold[:80]!r}")
    grader = "math_verify" if use_math_verify else "numeric"
    return score_answer(completion, gold, style, grader, scheme)


def score_answer(
    completion: str, gold: str, style: str, grader: str = "numeric", scheme: str = "format"
) -> RewardResult:
    """Score one completion against a gold answer with a grader (mathrl.rewards.graders)."""
    scheme_fn = get_scheme(scheme)
    check_style(style)
    g = get_grader(grader)
    g.prepare()  # e.g. math_verify: a missing extra is a ConfigError, not a wrong answer
    strict = extract_strict(completion, style, numeric=g.numeric)
    lenient = g.lenient(completion, style)
    format_ok = strict is not None
    correct = strict is not None and g.equal(strict, gold)
    correct_lenient = correct or (lenient is not None and g.equal(lenient, gold))
    if correct:
        reason = "ok"
    elif format_ok:
        reason = "wrong_answer"
    else:
        reason = "no_format" if lenient is not None else "no_answer"
    return RewardResult(
        reward=scheme_fn(correct, correct_lenient, format_ok),
        components={"correct": float(correct), "format": float(format_ok)},
        pred=strict if strict is not None else lenient,
        correct=correct,
        correct_lenient=correct_lenient,
        format_ok=format_ok,
        reason=reason,
    )


def score_countdown(
    completion: str, nums: list[int], target: int, style: str, scheme: str = "format"
) -> RewardResult:
    """Score one Countdown completion: each of `nums` used once, value equal to `target`."""
    scheme_fn = get_scheme(scheme)
    strict = extract_countdown_answer(completion, style)
    result = check_countdown(strict, nums, target) if strict is not None else None
    lenient = extract_countdown_answer(completion, style, lenient=True)
    if lenient == strict:
        lenient_result = result
    else:
        lenient_result = check_countdown(lenient, nums, target) if lenient is not None else None
    format_ok = result is not None and result.valid
    correct = result is not None and result.correct
    correct_lenient = correct or (lenient_result is not None and lenient_result.correct)
    return RewardResult(
        reward=scheme_fn(correct, correct_lenient, format_ok),
        components={"correct": float(correct), "format": float(format_ok)},
        pred=strict if strict is not None else lenient,
        correct=correct,
        correct_lenient=correct_lenient,
        format_ok=format_ok,
        reason=result.reason if result is not None else "no_answer",
    )
