"""`mathrl probe --suite`: one row per task with greedy and sampled pass rates, the share of
informative groups and a verdict word; the verdict words against hand-made statistics."""

from __future__ import annotations

import json

import pytest

from mathrl.eval.probe import (
    FORMAT_ONLY,
    HARD,
    LEARNABLE,
    SOLVED,
    TOO_EASY,
    TOO_HARD,
    TRAIN,
    ProbeThresholds,
    probe_stats,
    suite_verdict,
    table_markdown,
    table_row,
)
from mathrl.eval.suite import SUITES, SuiteTask
from mathrl.rewards.scoring import RewardResult

T, F = True, False


def _stats(correct, lenient_acc=None, **extra):
    s = probe_stats([[float(c) for c in row] for row in correct], correct, group_size=4)
    if lenient_acc is not None:
        s["accuracy_lenient"] = lenient_acc
    return {**s, **extra}


@pytest.mark.parametrize(
    ("correct", "lenient", "word", "why"),
    [
        ([[T, F, F, F], [T, T, F, F]], None, LEARNABLE, "accuracy 0.375 in [0.10, 0.80]"),
        ([[T, T, T, T], [T, T, T, F]], None, SOLVED, "accuracy 0.875 > 0.80"),
        ([[F, F, F, F], [F, F, F, F]], 0.0, HARD, "accuracy 0.000 < 0.10"),
        # right answers in the wrong format: strict 0, lenient 0.5
        ([[F, F, F, F], [F, F, F, F]], 0.5, FORMAT_ONLY, "lenient 0.500: the answers are there"),
        # lenient just below the bar: still too hard
        ([[F, F, F, F], [F, F, F, F]], 0.09, HARD, "accuracy 0.000 < 0.10"),
    ],
)
def test_suite_verdict_words(correct, lenient, word, why):
    stats = _stats(correct, lenient)
    assert stats["verdict"] in (TRAIN, TOO_EASY, TOO_HARD)
    got, reason = suite_verdict(stats, ProbeThresholds())
    assert got == word and why in reason


def test_probe_table_markdown_by_hand():
    stats = _stats(
        [[T, F, F, F], [T, T, F, F]],
        0.5,
        greedy_pass=0.5,
        greedy_pass_lenient=1.0,
        informative_per_step=7.0,
        len_mean=12.25,
        truncated_frac=0.125,
    )
    table = {"model": "m", "note": "n", "rows": [table_row("add", stats, ProbeThresholds())]}
    table["rows"].append({"task": "gsm8k", "error": "GSM8K not found"})
    md = table_markdown(table)
    # informative: 1 - .25^4 - .75^4 = .67969 and 1 - 2 * .5^4 = .875, mean .77734
    assert (
        "| add | 50.0 % | 100.0 % | 37.5 % | 50.0 % | 77.7 % | 7.0 | 12.2 | 12.5 % | **learnable** |"
        in md
    )
    assert "| gsm8k | - | - | - | - | - | - | - | - | n/a (GSM8K not found) |" in md
    assert "- add: accuracy 0.375 in [0.10, 0.80]" in md


def _parity(completion: str, *args) -> RewardResult:
    """Countdown scored as correct iff the completion's length is even: a learnable task."""
    ok = len(completion) % 2 == 0
    return RewardResult(reward=float(ok), correct=ok, format_ok=True, reason="ok")


@pytest.fixture
def probe_suite():
    rows = (
        SuiteTask("countdown", ("task.name=countdown",)),
        SuiteTask("add-1digit", ("task.name=arithmetic", "data.arithmetic_digits=1")),
        SuiteTask("gsm8k", ("task.name=gsm8k", "data.path=/nonexistent/gsm8k.jsonl")),
    )
    SUITES.add("probe-test", rows)
    yield "probe-test"
    SUITES.remove("probe-test")


def test_probe_suite_writes_one_row_per_task(
    run_cli, tiny_config, tmp_path, use_reward, probe_suite
):
    use_reward(_parity)
    out = tmp_path / "probe"
    sets = [
        "data.arithmetic_train_size=30",
        "data.arithmetic_test_size=5",
        "train.prompts_per_step=2",
    ]
    flags = [a for s in sets for a in ("--set", s)]
    res = run_cli(
        "probe",
        "-c",
        tiny_config,
        "--suite",
        probe_suite,
        "--limit",
        "6",
        "--n",
        "4",
        "--out",
        out,
        *flags,
    )
    assert res.code == 0, res.err
    table = json.loads((out / "probe.json").read_text())
    assert [r["task"] for r in table["rows"]] == ["countdown", "add-1digit", "gsm8k"]
    cd, add, gsm = table["rows"]
    assert gsm["error"].startswith("Dataset path not found") and "n/a (" in res.out
    # an untrained scratch model answers no sum: too hard, every group all-wrong
    assert add["verdict"] == HARD and add["stats"]["accuracy"] == 0.0
    assert add["stats"]["greedy_pass"] == 0.0 and add["stats"]["informative_per_step"] == 0.0
    # countdown under the parity reward: its pass rate is the share of even lengths
    rates = [
        json.loads(line)
        for line in (out / "countdown" / "pass_rates.jsonl").read_text().splitlines()
    ]
    assert len(rates) == 6 and all(r["n"] == 4 for r in rates)
    mean = sum(r["pass_rate"] for r in rates) / 6
    assert cd["stats"]["accuracy"] == pytest.approx(mean)
    expected = sum(1 - r["pass_rate"] ** 4 - (1 - r["pass_rate"]) ** 4 for r in rates) / 6
    assert cd["stats"]["informative_frac"] == pytest.approx(expected)  # G = group_size = 4
    assert cd["stats"]["informative_per_step"] == pytest.approx(2 * expected)
    assert (out / "probe.md").read_text().startswith("probe of `scratch`")
    assert (out / "probe.png").stat().st_size > 0
    assert "| countdown |" in res.out and "| add-1digit |" in res.out
