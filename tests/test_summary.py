"""summary.json and the before/after table, from hand-built metrics rows."""

from __future__ import annotations

import json

import pytest

from mathrl.report.summary import before_after_text, heldout_fields, run_summary, write_summary

ROWS = [
    {
        "step": 0,
        "eval/pass@1": 0.25,
        "eval/pass@1_lo": 0.2,
        "eval/pass@1_hi": 0.3,
        "eval/n_problems": 200.0,
    },
    {"step": 1, "reward/mean": 0.5},
    {"step": 2, "reward/mean": 0.75},
    {
        "step": 2,
        "eval/pass@1": 0.45,
        "eval/pass@1_lo": 0.4,
        "eval/pass@1_hi": 0.5,
        "eval/n_problems": 200.0,
    },
]


def test_summary_numbers(tmp_path):
    s = run_summary(ROWS, wall_s=12.345, heldout_split="test", report="r.html")
    assert s["accuracy_before_rl"] == 0.25 and s["accuracy_after_rl"] == 0.45
    assert s["accuracy_gain"] == pytest.approx(0.20)
    assert s["accuracy_before_rl_ci95"] == [0.2, 0.3] and s["step_after_rl"] == 2
    assert (s["heldout_n"], s["steps"], s["wall_s"], s["report"]) == (200, 2, 12.3, "r.html")
    assert (s["train_reward_first"], s["train_reward_last"]) == (0.5, 0.75)
    text = before_after_text(s)
    assert "before RL (step 0)      25.0 %   95% CI [20.0, 30.0]" in text
    assert "after RL (step 2)       45.0 %" in text
    assert "change                 +20.0 points" in text
    path = write_summary(tmp_path, s)
    assert json.loads(path.read_text()) == s


def test_summary_without_evals_guesses_nothing():
    s = run_summary(ROWS[1:3], wall_s=1.0, heldout_split="test")
    assert not any(k.startswith(("accuracy", "heldout_n")) for k in s)
    assert "set eval.every > 0" in before_after_text(s)
    # an eval only at the end (no step-0 eval) gives an after value and no gain
    s = run_summary(ROWS[1:], wall_s=1.0, heldout_split="val")
    assert s["accuracy_after_rl"] == 0.45 and "accuracy_gain" not in s


def test_heldout_fields_without_problem_count():
    """An eval row without eval/n_problems gives the accuracies and no heldout_n (not a crash)."""
    rows = [{"step": 0, "eval/pass@1": 0.5}, {"step": 3, "eval/pass@1": 0.75}]
    fields = heldout_fields(rows)
    assert fields["accuracy_gain"] == 0.25 and fields["accuracy_after_rl_ci95"] == [None, None]
    assert "heldout_n" not in fields
