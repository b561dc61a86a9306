"""Rewards: pure-Python answer extraction, number normalisation, safe Countdown
evaluation, reward schemes, and bounded-time scoring. No torch, no eval."""

from mathrl.rewards.countdown import (
    CountdownResult,
    check_countdown,
    evaluate_expression,
    extract_countdown_answer,
    used_numbers,
)
from mathrl.rewards.extract import (
    PROMPT_STYLES,
    AnswerFormat,
    extract_lenient,
    extract_strict,
    parse_gold_gsm8k,
)
from mathrl.rewards.functions import RewardFn
from mathrl.rewards.graders import GRADERS
from mathrl.rewards.numbers import format_number, numbers_equal, parse_number
from mathrl.rewards.pool import RewardPool, score_many
from mathrl.rewards.scoring import (
    FORMAT_REWARD,
    REWARD_SCHEMES,
    RewardResult,
    combine,
    get_scheme,
    register_scheme,
    score_answer,
    score_countdown,
    score_gsm8k,
    zero_result,
)

__all__ = [
    "FORMAT_REWARD",
    "GRADERS",
    "PROMPT_STYLES",
    "REWARD_SCHEMES",
    "AnswerFormat",
    "CountdownResult",
    "RewardPool",
    "RewardFn",
    "RewardResult",
    "check_countdown",
    "combine",
    "evaluate_expression",
    "extract_countdown_answer",
    "extract_lenient",
    "extract_strict",
    "format_number",
    "get_scheme",
    "numbers_equal",
    "parse_gold_gsm8k",
    "parse_number",
    "register_scheme",
    "score_answer",
    "score_countdown",
    "score_gsm8k",
    "score_many",
    "used_numbers",
    "zero_result",
]
