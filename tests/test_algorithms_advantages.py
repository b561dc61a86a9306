"""Advantage estimators against hand-computed numbers and a reference loop."""

from __future__ import annotations

import math

import pytest
import torch

from mathrl.algorithms import (
    ADVANTAGES,
    NEEDS_GROUPS,
    USES_BASELINE,
    compute_advantages,
    dr_grpo,
    grpo,
    reinforce,
    reinforce_pp,
    reinforce_pp_baseline,
    rloo,
    update_ema_baseline,
    zero_std_mask,
)
from mathrl.errors import ConfigError

# two groups of G=4: one with signal, one flat
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
G = 4


def test_grpo_hand_computed() -> None:
    # group 1: mean 0.5, centered ±0.5, unbiased var = 4 * 0.25 / 3 = 1/3, std = sqrt(1/3)
    # -> ±0.5 / sqrt(1/3) = ±sqrt(3)/2; group 2 is flat -> exactly 0
    s = math.sqrt(3) / 2
    expected = torch.tensor([s, -s, -s, s, 0, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(grpo(REWARDS, G, eps=0.0), expected)
    # default eps=1e-6 is added to the std: 0.5 / (sqrt(1/3) + 1e-6)
    with_eps = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert grpo(REWARDS, G)[0].item() == pytest.approx(with_eps, rel=1e-12)
    assert torch.equal(grpo(REWARDS, G)[4:], torch.zeros(4, dtype=torch.float64))


def test_dr_grpo_hand_computed() -> None:
    # r - group mean, no std: group 1 mean 0.5
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0], dtype=torch.float64)
    assert torch.equal(dr_grpo(REWARDS, G), expected)


def test_rloo_hand_computed() -> None:
    # reward 1: others [0, 0, 1] mean 1/3 -> 2/3; reward 0: others [1, 0, 1] mean 2/3 -> -2/3
    t = 2 / 3
    expected = torch.tensor([t, -t, -t, t, 0, 0, 0, 0], dtype=torch.float64)
    torch.testing.assert_close(rloo(REWARDS, G), expected)
    # [1, 0, 0]: 1 - mean(0, 0) = 1; 0 - mean(1, 0) = -0.5
    torch.testing.assert_close(
        rloo(torch.tensor([1.0, 0.0, 0.0]), 3), torch.tensor([1, -0.5, -0.5])
    )


def test_reinforce_baseline() -> None:
    assert torch.equal(reinforce(REWARDS, G), REWARDS)
    assert reinforce(REWARDS, G).data_ptr() != REWARDS.data_ptr()  # a copy, safe to modify
    expected = torch.tensor([0.75, -0.25, -0.25, 0.75, 0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    assert torch.equal(reinforce(REWARDS, G, baseline=0.25), expected)
    # group_size does not matter to reinforce
    assert torch.equal(reinforce(REWARDS, 1, baseline=0.25), expected)


def test_ema_baseline() -> None:
    # first call: the batch mean
    assert update_ema_baseline(None, torch.tensor([1.0, 0.0, 0.0, 1.0]), 0.9) == 0.5
    # 0.9 * 0.5 + 0.1 * 1.0 = 0.55
    assert update_ema_baseline(0.5, torch.tensor([1.0, 1.0]), 0.9) == pytest.approx(0.55)
    assert update_ema_baseline(0.5, torch.tensor([1.0]), 1.0) == 0.5  # frozen
    with pytest.raises(ValueError, match="empty"):
        update_ema_baseline(0.5, torch.tensor([]), 0.9)
    with pytest.raises(ValueError, match="momentum"):
        update_ema_baseline(0.5, torch.tensor([1.0]), 1.5)


def test_compute_advantages_keeps_reinforce_baseline() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    # first batch: no baseline yet -> raw rewards; the baseline becomes the mean 0.5
    advantages, baseline = compute_advantages("reinforce", rewards, 1, baseline_momentum=0.9)
    assert torch.equal(advantages, rewards) and baseline == 0.5
    # second batch: r - 0.5, then 0.9 * 0.5 + 0.1 * 1.0 = 0.55
    ones = torch.ones(2, dtype=torch.float64)
    advantages, baseline = compute_advantages(
        "reinforce", ones, 1, baseline=baseline, baseline_momentum=0.9
    )
    assert torch.equal(advantages, torch.full((2,), 0.5, dtype=torch.float64))
    assert baseline == pytest.approx(0.55)
    # momentum 0: the baseline never moves (and None means none)
    assert compute_advantages("reinforce", ones, 1, baseline=None)[1] is None


def test_compute_advantages_passes_baseline_through_group_estimators() -> None:
    advantages, baseline = compute_advantages(
        "dr_grpo", REWARDS, G, baseline=0.3, baseline_momentum=0.9
    )
    assert torch.equal(advantages, dr_grpo(REWARDS, G)) and baseline == 0.3


def test_estimator_flags() -> None:
    assert NEEDS_GROUPS == {"grpo", "dr_grpo", "rloo", "reinforce_pp_baseline"}
    assert USES_BASELINE == {"reinforce"}


def test_zero_std_mask() -> None:
    expected = torch.tensor([False] * 4 + [True] * 4)
    assert torch.equal(zero_std_mask(REWARDS, G), expected)
    # a tiny but real difference is signal, not "zero std"
    assert not zero_std_mask(torch.tensor([1.0, 1.0 + 1e-6]), 2).any()


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize(
    ("value", "group_size", "dtype"),
    [
        (0.1, 3, torch.float32),  # 0.1 * 3 != 0.1 + 0.1 + 0.1 in floating point
        (1 / 3, 7, torch.float32),
        (1e8 + 0.1, 5, torch.float64),
        (0.0, 16, torch.float32),
        (-2.5, 2, torch.bfloat16),
    ],
)
def test_flat_group_is_exactly_zero(name: str, value: float, group_size: int, dtype) -> None:
    rewards = torch.full((2 * group_size,), value, dtype=dtype)
    advantages = ADVANTAGES.get(name)(rewards, group_size)
    assert torch.equal(advantages, torch.zeros_like(advantages))


@pytest.mark.parametrize("name", ["grpo", "dr_grpo"])
def test_group_of_one_is_zero_not_nan(name: str) -> None:
    advantages = ADVANTAGES.get(name)(torch.tensor([1.0, 0.0, 0.3]), 1)
    assert torch.equal(advantages, torch.zeros(3))


def test_dropped_groups_and_empty_batch() -> None:
    # after dynamic sampling drops group 2, group 1 alone gives the same advantages
    assert torch.equal(grpo(REWARDS[:4], G), grpo(REWARDS, G)[:4])
    for name in ADVANTAGES.names():
        assert ADVANTAGES.get(name)(torch.tensor([]), G).shape == (0,)


def test_integer_rewards_become_float() -> None:
    advantages = dr_grpo(torch.tensor([1, 0, 0, 1]), 4)
    assert torch.equal(advantages, torch.tensor([0.5, -0.5, -0.5, 0.5]))


@pytest.mark.parametrize(
    ("rewards", "group_size", "match"),
    [
        (torch.zeros(5), 4, "whole groups"),
        (torch.zeros(4), 0, "whole groups"),
        (torch.zeros(2, 4), 4, "1-D"),
    ],
)
def test_bad_layout(rewards: torch.Tensor, group_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        grpo(rewards, group_size)


def test_rloo_needs_two() -> None:
    with pytest.raises(ValueError, match="group_size >= 2"):
        rloo(torch.zeros(3), 1)


def _reference_loop(name: str, rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Plain per-group Python: the definitions as written in the papers."""
    out = []
    for start in range(0, len(rewards), group_size):
        group = rewards[start : start + group_size]
        mean, std = group.mean(), group.std()  # torch.std is unbiased
        for i, r in enumerate(group):
            if bool((group == group[0]).all()):
                out.append(0.0)
            elif name == "grpo":
                out.append(((r - mean) / (std + 1e-6)).item())
            elif name == "dr_grpo":
                out.append((r - mean).item())
            else:  # rloo
                others = torch.cat([group[:i], group[i + 1 :]])
                out.append((r - others.mean()).item())
    return torch.tensor(out, dtype=rewards.dtype)


@pytest.mark.parametrize("name", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("group_size", [2, 4, 8])
def test_vectorised_matches_loop(name: str, group_size: int) -> None:
    gen = torch.Generator().manual_seed(group_size)
    n_groups = 6
    binary = torch.randint(0, 2, (n_groups * group_size,), generator=gen).double()
    dense = torch.rand(n_groups * group_size, generator=gen, dtype=torch.float64)
    dense[:group_size] = 0.7  # one flat group in the dense case too
    for rewards in (binary, dense):
        expected = _reference_loop(name, rewards, group_size)
        torch.testing.assert_close(ADVANTAGES.get(name)(rewards, group_size), expected)


def test_unknown_estimator_suggests() -> None:
    with pytest.raises(
        ConfigError, match=r"Unknown advantage estimator 'grop' \(did you mean 'grpo'\?\)"
    ):
        ADVANTAGES.get("grop")
    with pytest.raises(
        ConfigError,
        match="choose from dr_grpo, grpo, reinforce, reinforce_pp, reinforce_pp_baseline, rloo",
    ):
        ADVANTAGES.get("zzzzzz")


# ---------------------------------------------------------------- REINFORCE++


def test_reinforce_pp_whitens_the_raw_reward_over_the_batch() -> None:
    # mean 5/8, biased var 5/8 * 3/8 = 0.234375: (1 - 0.625) / sqrt(var) = sqrt(0.6),
    # (0 - 0.625) / sqrt(var) = -sqrt(5/3); the flat group of 1s is NOT zero (the batch
    # mean is its baseline)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    up, down = math.sqrt(0.6), -math.sqrt(5 / 3)
    expected = torch.tensor([up, down, down, down, up, up, up, up], dtype=torch.float64)
    torch.testing.assert_close(reinforce_pp(rewards, 4), expected, rtol=0, atol=1e-7)
    advantages = reinforce_pp(rewards, 4)
    assert abs(advantages.mean().item()) < 1e-12
    assert advantages.pow(2).mean().item() == pytest.approx(1.0, abs=1e-7)


def test_reinforce_pp_baseline_hand_computed() -> None:
    # group means 0.5 and 0.5: centered [.5, -.5, -.5, .5, 0, 0, 0, 0], batch var
    # 8 * 0.25 / 8... = 1/8 over all 8 rows -> +-0.5 / sqrt(1/8) = +-sqrt(2); flat group 0
    r2 = math.sqrt(2)
    expected = torch.tensor([r2, -r2, -r2, r2, 0, 0, 0, 0], dtype=torch.float64)
    got = reinforce_pp_baseline(REWARDS, G)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)
    assert torch.equal(got[4:], torch.zeros(4, dtype=torch.float64))  # exactly


def test_reinforce_pp_whitening_is_over_the_whole_batch() -> None:
    # whitening each half alone differs from whitening the whole: the trainer passes the
    # whole step's rewards (every rank's groups), so the scale is the global batch's
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    whole = reinforce_pp_baseline(rewards, 4)
    first_alone = reinforce_pp_baseline(rewards[:4], 4)
    # group 1 centered [.75, -.25, -.25, -.25] (var 3/16 alone), group 2 [.5, -.5, .5, -.5]:
    # the whole batch's biased var is (0.5625 + 3 * 0.0625 + 4 * 0.25) / 8 = 0.21875
    centered = torch.tensor([0.75, -0.25, -0.25, -0.25], dtype=torch.float64)
    torch.testing.assert_close(whole[:4], centered / math.sqrt(0.21875))
    torch.testing.assert_close(first_alone, centered / math.sqrt(3 / 16))


@pytest.mark.parametrize("name", ["reinforce_pp", "reinforce_pp_baseline"])
def test_reinforce_pp_flat_batch_is_exactly_zero(name: str) -> None:
    advantages = ADVANTAGES.get(name)(torch.full((8,), 0.1), 4)
    assert torch.equal(advantages, torch.zeros(8))
