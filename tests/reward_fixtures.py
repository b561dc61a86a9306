"""Reward functions in TRL's form, imported by path in tests (task.rewards fn = "reward_fixtures:...").

`accuracy_reward` is written the way GRPOTrainer users write them: chat-form completions,
a dataset column by name, **kwargs for the rest, None when the gold cannot be read.
"""

from __future__ import annotations

import os
import re
import time


def accuracy_reward(completions, solution, **kwargs):
    """1.0 when the last number of the completion equals the solution's, None when the
    solution has no number (TRL: None = this function cannot score the sample)."""
    out = []
    for completion, gold in zip(completions, solution, strict=True):
        content = completion[0]["content"]
        gold_numbers = re.findall(r"-?\d+", str(gold))
        if not gold_numbers:
            out.append(None)
            continue
        found = re.findall(r"-?\d+", content)
        out.append(1.0 if found and found[-1] == gold_numbers[-1] else 0.0)
    return out


def brevity(completions, **kwargs):
    """Plain-text form: 1 - len/100, floored at 0."""
    return [max(0.0, 1.0 - len(c) / 100) for c in completions]


def brevity_odd_prompts(completions, prompts, **kwargs):
    """brevity for prompts of odd length, 0.5 for the others: their groups have zero
    advantage, so ranks train on different numbers of rows."""
    return [
        max(0.0, 1.0 - len(c) / 100) if len(str(p)) % 2 else 0.5
        for c, p in zip(completions, prompts, strict=True)
    ]


def seen_columns(completions, prompts, **columns):
    """1.0 when the columns and prompts arrived as one list per sample."""
    ok = all(isinstance(v, list) and len(v) == len(completions) for v in columns.values())
    return [1.0 if ok and len(prompts) == len(completions) else 0.0] * len(completions)


def no_completions(texts, **kwargs):
    return [0.0] * len(texts)


def needs_missing(completions, difficulty):
    return [0.0] * len(completions)


def wrong_length(completions, **kwargs):
    return [1.0]


def wrong_type(completions, **kwargs):
    return ["high"] * len(completions)


def raises(completions, **kwargs):
    raise ValueError("boom")


def hangs(completions, **kwargs):
    time.sleep(30)
    return [0.0] * len(completions)


NOT_A_FUNCTION = 3


def slow_zero(completions, **kwargs):
    """0.0 after 20 ms a completion: makes a tiny run's steps long enough to signal mid-run."""
    time.sleep(0.02 * len(completions))
    return [0.0] * len(completions)


def hang_once_on_rank1(completions, **kwargs):
    """brevity, except that the first scoring call on rank 1 (not the start-up check, which
    sends an empty completion) hangs for ten minutes: the reward pool's time bound must hold
    per rank. The flag file ($MATHRL_TEST_HANG_FLAG) makes it hang once."""
    import os
    from pathlib import Path

    flag = Path(os.environ.get("MATHRL_TEST_HANG_FLAG", "/nonexistent/flag"))
    if os.environ.get("RANK") == "1" and "" not in completions and not flag.exists():
        flag.touch()
        time.sleep(600)
    return brevity(completions)


def even_length_correct(completion, *args):
    """A stand-in expert for Countdown: a completion of even length is correct."""
    from mathrl.rewards.scoring import RewardResult

    ok = len(completion) % 2 == 0
    return RewardResult(reward=float(ok), correct=ok, format_ok=True, reason="ok")


def refuses_the_trainer_process(completions, **kwargs):
    """Fails when called in the process named by MATHRL_TEST_TRAINER_PID."""
    if os.getpid() == int(os.environ.get("MATHRL_TEST_TRAINER_PID", "0")):
        raise RuntimeError("user code ran in the trainer process")
    return [1.0] * len(completions)


def hangs_on_marker(completions, **kwargs):
    """0.5 each; hangs on a completion holding HANG while the file MATHRL_TEST_HANG_FLAG
    names exists."""
    flag = os.environ.get("MATHRL_TEST_HANG_FLAG", "")
    for completion in completions:
        if "HANG" in completion[0]["content"] and flag and os.path.exists(flag):
            time.sleep(30)
    return [0.5] * len(completions)
