"""Advantage estimators: rewards of sampled completions -> one advantage per completion.

Group layout: the batch holds contiguous groups of equal size, i.e. rewards[k*G:(k+1)*G]
are the G completions of prompt k. Dropping whole groups (dynamic sampling of
zero-variance groups) keeps this layout, so a `group_size` int is all we need; no
group-id tensor, no scatter. Every estimator has the signature

    fn(rewards: Tensor (B,), group_size: int, **options) -> Tensor (B,)

and ignores options it does not use, so the trainer can pass one set to any of them.
`compute_advantages` is the one entry point for callers: it also keeps the running
baseline of the estimators that use one, so no caller needs an estimator's name.
Group-relative estimators return exactly 0.0 for a group whose rewards are all equal
(never NaN and never a rounding residue like 1e-9 / (1e-9 + eps)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mathrl.registry import Registry

AdvantageFn = Callable[..., Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")

NEEDS_GROUPS: set[str] = set()
"""Estimators that compare a completion with the others of its group: group_size >= 2."""

USES_BASELINE: set[str] = set()
"""Estimators that subtract a running scalar baseline kept between batches."""


def register_advantage(
    name: str, *, needs_groups: bool = False, uses_baseline: bool = False
) -> Callable[[AdvantageFn], AdvantageFn]:
    """Decorator adding an estimator to ADVANTAGES, with what it needs from the caller."""

    def deco(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGES.add(name, fn)
        if needs_groups:
            NEEDS_GROUPS.add(name)
        if uses_baseline:
            USES_BASELINE.add(name)
        return fn

    return deco


def unregister_advantage(name: str) -> AdvantageFn:
    """Remove an estimator and its flags (tests that register a throwaway one)."""
    NEEDS_GROUPS.discard(name)
    USES_BASELINE.discard(name)
    return ADVANTAGES.remove(name)


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """View (B,) rewards as float (B/G, G), checking the layout."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"batch of {rewards.numel()} is not whole groups of {group_size}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    return rewards.view(-1, group_size)  # (B/G, G)


def zero_std_mask(rewards: Tensor, group_size: int) -> Tensor:
    """(B,) bool, True for samples whose group has identical rewards (no learning signal)."""
    grouped = _grouped(rewards, group_size)  # (B/G, G)
    # exact max == min, not std < eps: a tolerance would hide real (tiny) reward differences
    same = grouped.amax(dim=1) == grouped.amin(dim=1)  # (B/G,)
    return same.repeat_interleave(group_size)  # (B,)


def _zero_flat_groups(advantages: Tensor, rewards: Tensor, group_size: int) -> Tensor:
    """Force exact zeros where the group is flat (r - mean can be off by an ulp)."""
    flat = zero_std_mask(rewards, group_size)  # (B,)
    return torch.where(flat, torch.zeros_like(advantages), advantages)


@register_advantage("reinforce", uses_baseline=True)
def reinforce(
    rewards: Tensor, group_size: int = 1, *, baseline: float | None = None, **_: object
) -> Tensor:
    """Raw reward minus an optional scalar baseline (e.g. a moving average kept by the caller)."""
    grouped = _grouped(rewards, group_size)  # checks shape; groups are not used
    advantages = grouped.reshape(-1).clone()  # (B,)
    return advantages if baseline is None else advantages - baseline


def update_ema_baseline(old: float | None, rewards: Tensor, momentum: float) -> float:
    """momentum * old + (1 - momentum) * mean(rewards); the first call returns the mean."""
    if rewards.numel() == 0:
        raise ValueError("cannot update a baseline from an empty batch of rewards")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    batch_mean = rewards.double().mean().item()
    return batch_mean if old is None else momentum * old + (1.0 - momentum) * batch_mean


@register_advantage("rloo", needs_groups=True)
def rloo(rewards: Tensor, group_size: int, **_: object) -> Tensor:
    """r_i minus the mean of the other G-1 rewards of its group (Ahmadian et al., 2024)."""
    if group_size < 2:
        raise ValueError("rloo needs group_size >= 2 (a leave-one-out baseline of 0 samples)")
    grouped = _grouped(rewards, group_size)  # (B/G, G)
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)  # (B/G, G)
    advantages = (grouped - others_mean).reshape(-1)  # (B,)
    return _zero_flat_groups(advantages, rewards, group_size)


@register_advantage("grpo", needs_groups=True)
def grpo(rewards: Tensor, group_size: int, *, eps: float = 1e-6, **_: object) -> Tensor:
    """(r - group mean) / (group std + eps), std unbiased (Bessel), as DeepSeekMath/TRL/verl."""
    grouped = _grouped(rewards, group_size)  # (B/G, G)
    centered = grouped - grouped.mean(dim=1, keepdim=True)  # (B/G, G)
    # unbiased variance by hand: torch.std warns and returns NaN for G == 1
    var = centered.pow(2).sum(dim=1, keepdim=True) / max(group_size - 1, 1)  # (B/G, 1)
    advantages = (centered / (var.sqrt() + eps)).reshape(-1)  # (B,)
    return _zero_flat_groups(advantages, rewards, group_size)


@register_advantage("dr_grpo", needs_groups=True)
def dr_grpo(rewards: Tensor, group_size: int, **_: object) -> Tensor:
    """r - group mean, no std scaling (Dr. GRPO, Liu et al., 2025: std favours easy/hard prompts)."""
    grouped = _grouped(rewards, group_size)  # (B/G, G)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)  # (B,)
    return _zero_flat_groups(advantages, rewards, group_size)


def _whiten(x: Tensor, eps: float) -> Tensor:
    """(x - mean) / sqrt(var + eps) over the whole batch (biased var, as OpenRLHF); an
    all-equal batch gives exact zeros."""
    if x.numel() == 0 or bool(x.amax() == x.amin()):
        return torch.zeros_like(x)
    centered = x - x.mean()
    return centered * torch.rsqrt(centered.pow(2).mean() + eps)


@register_advantage("reinforce_pp")
def reinforce_pp(rewards: Tensor, group_size: int = 1, *, eps: float = 1e-8, **_: object) -> Tensor:
    """REINFORCE++ (Hu, 2025): the reward whitened over the whole batch, no group baseline.

    The trainer passes every rank's rewards of the step (the gathered batch), so the
    whitening is over the global batch whatever the number of ranks. A group whose
    rewards are all equal still gets a non-zero advantage (the batch mean is its baseline).
    """
    grouped = _grouped(rewards, group_size)  # checks the layout; groups are not used
    return _whiten(grouped.reshape(-1), eps)  # (B,)


@register_advantage("reinforce_pp_baseline", needs_groups=True)
def reinforce_pp_baseline(
    rewards: Tensor, group_size: int, *, eps: float = 1e-8, **_: object
) -> Tensor:
    """REINFORCE++-baseline (Hu, 2025): r - group mean, then whitened over the whole batch
    (all ranks' groups: the trainer passes the gathered batch). Flat groups stay exactly 0."""
    grouped = _grouped(rewards, group_size)  # (B/G, G)
    centered = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)  # (B,)
    return _zero_flat_groups(_whiten(centered, eps), rewards, group_size)


def compute_advantages(
    name: str,
    rewards: Tensor,
    group_size: int,
    *,
    baseline: float | None = None,
    baseline_momentum: float = 0.0,
) -> tuple[Tensor, float | None]:
    """(B,) advantages of estimator `name`, and the baseline to pass with the next batch.

    Only estimators in USES_BASELINE read `baseline`; they move it towards this batch's
    mean reward by `baseline_momentum` (0 keeps it as it is). Others return it unchanged.
    """
    fn = ADVANTAGES.get(name)
    if name not in USES_BASELINE:
        return fn(rewards, group_size), baseline
    advantages = fn(rewards, group_size, baseline=baseline)  # (B,)
    if baseline_momentum > 0:
        baseline = update_ema_baseline(baseline, rewards, baseline_momentum)
    return advantages, baseline
