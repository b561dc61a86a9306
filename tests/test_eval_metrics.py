"""Pure eval metrics against brute force and hand-computed numbers."""

import itertools
import math

import pytest

from mathrl.eval.metrics import (
    eval_metrics,
    maj_at_k,
    mean_ci,
    normalize_pred,
    pass_at_k,
    select_examples,
    summarize,
    token_entropy,
)
from mathrl.tasks import Example


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 1, 1, 0.2),  # pass@1 = c / n
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (10, 0, 5, 0.0),  # c = 0
        (10, 10, 1, 1.0),  # c = n
        (6, 1, 6, 1.0),  # k = n with one correct
        (6, 5, 2, 1.0),  # n - c < k
        (200, 1, 1, 0.005),  # large n stays exact (no huge binomials)
    ],
)
def test_pass_at_k_hand_cases(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_inputs(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


T, F = True, False


@pytest.mark.parametrize(
    ("preds", "correct", "k", "expected"),
    [
        (["3", "3", "5"], [T, T, F], 3, 1.0),  # clear majority, correct
        (["5", "3", "3"], [F, T, T], 3, 1.0),  # majority need not come first
        (["5", "3", "3"], [F, T, T], 2, 0.0),  # only the first k vote: tie 5/3 -> first (5)
        (["3", "5"], [T, F], 2, 1.0),  # tie -> first seen (3), which is correct
        (["5", "3"], [F, T], 2, 0.0),  # same tie, other order: not optimistic
        ([None, None, "5"], [F, F, F], 3, 0.0),  # None does not vote; 5 wins and is wrong
        ([None, None, "7"], [F, F, T], 3, 1.0),  # a single vote wins
        ([None, None], [F, F], 2, 0.0),  # no vote at all
        (["72.0", "72", "9", "9"], [T, T, F, F], 4, 1.0),  # 72.0 == 72: 2 v 2 -> first
        (["9", "72.0", "72", "$72"], [F, T, T, T], 4, 1.0),  # normalised 72 has 3 votes
        (["1 + 2*3", "1+2*3", "7"], [T, T, F], 3, 1.0),  # expressions: whitespace ignored
        (["72", "72", "9"], [F, T, F], 3, 1.0),  # an answer is right if any sample was
    ],
)
def test_maj_at_k(preds, correct, k, expected):
    assert maj_at_k(preds, correct, k) == expected


@pytest.mark.parametrize(("k", "preds"), [(0, ["1"]), (2, ["1"])])
def test_maj_at_k_rejects_bad_k(k, preds):
    with pytest.raises(ValueError):
        maj_at_k(preds, [True] * len(preds), k)


@pytest.mark.parametrize(
    ("pred", "key"), [("72.0", "72"), ("1,000", "1000"), (" 1 + 2 ", "1+2"), ("  ", None)]
)
def test_normalize_pred(pred, key):
    assert normalize_pred(pred) == key


def test_mean_ci_numbers():
    # [2, 4, 6]: mean 4, sample var 4, se = sqrt(4/3) = 1.1547005
    mean, lo, hi = mean_ci([2.0, 4.0, 6.0], z=1.0)
    assert (mean, lo, hi) == pytest.approx((4.0, 4 - 2 / math.sqrt(3), 4 + 2 / math.sqrt(3)))
    # [1, 0, 1, 0]: mean .5, se = sqrt((1/3)/4) = 0.2886751; half = 1.96 * se = 0.5658033
    assert mean_ci([1.0, 0.0, 1.0, 0.0]) == pytest.approx((0.5, -0.0658033, 1.0658033))
    assert mean_ci([1.0, 0.0, 1.0, 0.0], bounds=(0.0, 1.0)) == (0.5, 0.0, 1.0)
    assert mean_ci([0.3]) == (0.3, 0.3, 0.3)
    with pytest.raises(ValueError):
        mean_ci([])


def test_token_entropy():
    assert token_entropy([-2.0, -1.0], [2, 2]) == 0.75
    assert token_entropy([], []) == 0.0


def test_select_examples_seeded_nested_and_ordered():
    exs = [Example(id=str(i), question="q", gold="1") for i in range(50)]
    assert select_examples(exs, 0, 1) == exs
    assert select_examples(exs, 99, 1) == exs
    five = select_examples(exs, 5, seed=7)
    assert five == select_examples(exs, 5, seed=7)
    assert [int(e.id) for e in five] == sorted(int(e.id) for e in five)
    assert set(five) <= set(select_examples(exs, 20, seed=7))  # a larger limit is a superset
    assert five != select_examples(exs, 5, seed=8)


def sample(pred, correct, n_tokens=4, logprob_sum=-2.0, reward=None, finish="eos"):
    return {
        "pred": pred,
        "correct": correct,
        "reward": float(correct) if reward is None else reward,
        "n_tokens": n_tokens,
        "logprob_sum": logprob_sum,
        "finish_reason": finish,
    }


def record(greedy_ok, lenient_ok, greedy_len, finish, samples, fmt=False):
    greedy = {
        "correct": greedy_ok,
        "correct_lenient": lenient_ok,
        "format_ok": fmt,
        "reward": float(greedy_ok),
        "n_tokens": greedy_len,
        "finish_reason": finish,
    }
    rate = sum(s["correct"] for s in samples) / len(samples) if samples else None
    return {"greedy": greedy, "samples": samples, "pass_rate": rate}


def test_summarize_hand_computed():
    p1 = [sample(p, c) for p, c in zip("7788", [T, T, F, F], strict=True)]
    p2 = [sample(p, c) for p, c in zip(["5", "5", None, "9"], [F, F, F, T], strict=True)]
    p3 = [sample(None, F, n_tokens=8, logprob_sum=-6.0)] * 4
    records = [
        record(T, T, 10, "eos", p1, fmt=T),
        record(F, T, 20, "eos", p2, fmt=T),
        record(F, F, 30, "length", p3),
    ]
    s = summarize(records, ks=(1, 2, 4))
    assert s["n_problems"] == 3
    # greedy [1, 0, 0]: mean 1/3, sample var 1/3, se 1/3; lo clipped at 0
    assert (s["pass@1"], s["pass@1_lo"], s["pass@1_hi"]) == pytest.approx(
        (1 / 3, 0, 1 / 3 + 1.96 / 3)
    )
    assert s["pass@1_lenient"] == pytest.approx(2 / 3)
    assert s["format_rate"] == pytest.approx(2 / 3)  # greedy completions in the format
    assert s["mean_reward"] == pytest.approx(1 / 3)
    assert s["len_mean"] == 20
    assert s["truncated_frac"] == pytest.approx(1 / 3)
    assert s["mean@4"] == pytest.approx((0.5 + 0.25 + 0) / 3)
    assert s["pass@2"] == pytest.approx((5 / 6 + 1 / 2 + 0) / 3)  # c=2: 1-1/6, c=1: 1-3/6
    assert s["pass@4"] == pytest.approx(2 / 3)
    assert "pass@1_sampled" not in s and "mean@1" not in s
    # maj: problem 1 ties 7/8 -> 7 (right); problem 2: 5 has two votes (wrong)
    assert (s["maj@1"], s["maj@2"], s["maj@4"]) == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    # 8 samples of 4 tokens at -2 and 4 samples of 8 tokens at -6: 40 / 64
    assert s["entropy"] == pytest.approx(40 / 64)
    assert s["sampled_len_mean"] == pytest.approx(64 / 12)
    assert s["sampled_truncated_frac"] == 0.0


def test_summarize_greedy_only_has_no_sampled_keys():
    s = summarize([record(T, T, 5, "eos", []), record(F, F, 7, "eos", [])], ks=(1,))
    assert s["pass@1"] == 0.5
    assert not any(k.startswith(("mean@", "maj@", "entropy", "sampled")) for k in s)


def test_eval_metrics_keeps_numbers_under_prefix():
    summary = {"pass@1": 0.5, "n_problems": 8, "split": "test", "ks": [1, 2], "flag": True}
    assert eval_metrics(summary) == {"eval/pass@1": 0.5, "eval/n_problems": 8.0}
