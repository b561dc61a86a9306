"""probe_stats, the verdict and pass-rate filtering against hand-computed numbers."""

import json

import pytest

from mathrl.data import filter_by_pass_rate, load_pass_rates
from mathrl.errors import ConfigError, DataError
from mathrl.eval.probe import TOO_EASY, TOO_HARD, TRAIN, ProbeThresholds, probe_stats, verdict
from mathrl.tasks import Example

T, F = True, False

CORRECT = [
    [T, T, F, F],  # p = .5
    [F, F, F, F],  # p = 0
    [T, T, T, T],  # p = 1
    [T, F, F, F],  # p = .25
]
OUTCOMES = [
    [1.0, 1.0, 0.0, 0.0],  # var .25
    [0.1, 0.0, 0.0, 0.0],  # format reward only: mean .025, var .0075 / 4 = .001875
    [1.0, 1.0, 1.0, 1.0],  # var 0
    [1.0, 0.0, 0.0, 0.0],  # var .25 * .75 = .1875
]


def test_probe_stats_hand_computed():
    s = probe_stats(OUTCOMES, CORRECT, group_size=4)
    assert s["n_prompts"] == 4 and s["n_samples"] == 16 and s["group_size"] == 4
    assert s["accuracy"] == pytest.approx(7 / 16)
    assert s["mean_reward"] == pytest.approx(7.1 / 16)
    assert s["reward_variance"] == pytest.approx((0.25 + 0.001875 + 0 + 0.1875) / 4)
    assert s["frac_all_wrong"] == 0.25
    assert s["frac_all_right"] == 0.25
    # G = 4: p = .5 -> 1 - 2/16 = .875; p = .25 -> 1 - 1/256 - 81/256 = .6796875; 0 and 1 -> 0
    assert s["informative_frac"] == pytest.approx((0.875 + 0.6796875) / 4)
    assert s["pass_rate_hist"] == [1, 0, 1, 0, 0, 1, 0, 0, 0, 1]
    assert s["verdict"] == TRAIN
    assert s["verdict_reason"] == (
        "accuracy 0.438 in [0.10, 0.80] and reward variance 0.110 > 0.05: "
        "39% of groups of 4 are expected to carry a learning signal."
    )


def test_informative_frac_depends_on_group_size():
    s = probe_stats([[1.0, 0.0]], [[T, F]], group_size=2)  # p = .5, G = 2: 1 - 2/4
    assert s["informative_frac"] == 0.5
    assert probe_stats([[1.0, 0.0]], [[T, F]], group_size=1)["informative_frac"] == 0.0


def test_pass_rate_hist_bin_edges():
    # pass rates .1 .3 .7 .9 must land in bins 1 3 7 9 despite float error in p * 10
    correct = [[T] * k + [F] * (10 - k) for k in (1, 3, 7, 9)]
    s = probe_stats([[float(c) for c in row] for row in correct], correct, group_size=8)
    assert s["pass_rate_hist"] == [0, 1, 0, 1, 0, 0, 0, 1, 0, 1]


@pytest.mark.parametrize(("outcomes", "correct"), [([], []), ([[1.0]], []), ([[]], [[]])])
def test_probe_stats_rejects_empty(outcomes, correct):
    with pytest.raises(ValueError):
        probe_stats(outcomes, correct, group_size=4)


def stats(acc, var, wrong, right, informative=0.5, g=8):
    return {
        "accuracy": acc,
        "reward_variance": var,
        "frac_all_wrong": wrong,
        "frac_all_right": right,
        "informative_frac": informative,
        "group_size": g,
    }


@pytest.mark.parametrize(
    ("s", "label", "reason"),
    [
        (
            stats(0.05, 0.04, 0.9, 0.0),
            TOO_HARD,
            "accuracy 0.050 < 0.10: 90% of prompts are all-wrong and 0% all-right.",
        ),
        (
            stats(0.9, 0.08, 0.0, 0.8),
            TOO_EASY,
            "accuracy 0.900 > 0.80: 0% of prompts are all-wrong and 80% all-right.",
        ),
        (
            stats(0.5, 0.01, 0.5, 0.45),
            TOO_HARD,
            "accuracy 0.500 is in range but reward variance 0.010 <= 0.05: 50% of prompts "
            "are all-wrong and 45% all-right, so few groups carry a learning signal.",
        ),
        (
            stats(0.6, 0.05, 0.3, 0.6),  # variance exactly at the threshold is not enough
            TOO_EASY,
            "accuracy 0.600 is in range but reward variance 0.050 <= 0.05: 30% of prompts "
            "are all-wrong and 60% all-right, so few groups carry a learning signal.",
        ),
        (
            stats(0.10, 0.2, 0.3, 0.0, informative=0.61),  # accuracy bounds are inclusive
            TRAIN,
            "accuracy 0.100 in [0.10, 0.80] and reward variance 0.200 > 0.05: "
            "61% of groups of 8 are expected to carry a learning signal.",
        ),
        (
            stats(0.80, 0.2, 0.0, 0.3, informative=0.7, g=16),
            TRAIN,
            "accuracy 0.800 in [0.10, 0.80] and reward variance 0.200 > 0.05: "
            "70% of groups of 16 are expected to carry a learning signal.",
        ),
    ],
)
def test_verdict(s, label, reason):
    assert verdict(s, ProbeThresholds()) == (label, reason)


def test_verdict_custom_thresholds():
    label, reason = verdict(stats(0.3, 0.2, 0.5, 0.0), ProbeThresholds(min_accuracy=0.4))
    assert label == TOO_HARD and reason.startswith("accuracy 0.300 < 0.40:")


@pytest.mark.parametrize(("lo", "hi", "var"), [(0.5, 0.4, 0.05), (-0.1, 0.8, 0.05), (0.1, 0.8, -1)])
def test_thresholds_validated(lo, hi, var):
    with pytest.raises(ConfigError):
        ProbeThresholds(lo, hi, var)


EXAMPLES = [Example(id=i, question="q", gold="1") for i in "abcd"]


def test_filter_by_pass_rate_inclusive_band_drops_missing():
    rates = {"a": 0.0, "b": 0.1, "c": 1.0}  # d is missing
    counts: dict[str, int] = {}
    kept = filter_by_pass_rate(EXAMPLES, rates, 0.1, 1.0, counts)
    assert [e.id for e in kept] == ["b", "c"]
    assert counts == {"kept": 2, "out_of_range": 1, "missing": 1}
    assert [e.id for e in filter_by_pass_rate(EXAMPLES, rates, 0.0, 0.0)] == ["a"]


def test_filter_by_pass_rate_errors():
    with pytest.raises(DataError, match="0 out of range, 4 missing"):
        filter_by_pass_rate(EXAMPLES, {"zz": 0.5}, 0.0, 1.0)
    with pytest.raises(ConfigError):
        filter_by_pass_rate(EXAMPLES, {"a": 0.5}, 0.8, 0.2)


def test_load_pass_rates_pools_duplicates(tmp_path):
    path = tmp_path / "pass_rates.jsonl"
    rows = [
        {"prompt_id": "a", "pass_rate": 0.5, "n": 4},
        {"prompt_id": "b", "pass_rate": 0.0, "n": 16},
        {"prompt_id": "a", "pass_rate": 1.0, "n": 12},  # a second probe: (2 + 12) / 16
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_pass_rates(path) == {"a": 0.875, "b": 0.0}


@pytest.mark.parametrize(
    "row",
    [
        {"pass_rate": 0.5, "n": 4},
        {"prompt_id": "a", "pass_rate": 1.5, "n": 4},
        {"prompt_id": "a", "pass_rate": True, "n": 4},
        {"prompt_id": "a", "pass_rate": 0.5, "n": 0},
    ],
)
def test_load_pass_rates_rejects_bad_rows(tmp_path, row):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="row 1"):
        load_pass_rates(path)


def test_load_pass_rates_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_pass_rates(tmp_path / "nope.jsonl")
