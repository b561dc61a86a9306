"""One RL update from scored groups: advantages, micro-batched loss, clip, step.

Written once for every backend (mathrl.backends), which computes each micro-batch's
log-probs, loss and gradients; what is decided here:
- Sequences with zero advantage contribute exactly zero policy gradient; when kl_coef = 0
  they are skipped in the backward pass, but still counted in the loss normaliser, so the
  result equals the full-batch loss (`agg_share`).
- train.mu passes over the micro-batches, each one optimizer step; old log-probs are fixed
  before the first (the backend's `rl_batches`).
- A non-finite gradient norm skips the optimizer step (or stops: train.nonfinite).
- With several ranks, `groups` and `advantages` are this rank's share: losses are
  normalised by the counts of the whole batch and gradients summed over ranks, so the
  update is the one a single process computes on the whole batch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mathrl import dist, fsdp
from mathrl.algorithms import PolicyLossConfig, compute_advantages
from mathrl.backends import Backend, MicroStats, RLPass, backend_for
from mathrl.config import Config
from mathrl.errors import MathrlError
from mathrl.groups import Group
from mathrl.rl.state import TrainState

LOSS_KEYS = ("loss", "policy_loss", "entropy_bonus")
"""compute_loss metrics that are parts of the loss (weighted like it), not token means."""


def advantages_for(
    cfg: Config, state: TrainState, rewards: torch.Tensor, truncated: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample advantages (B,) of the configured estimator, for every backend; a
    stateful one (REINFORCE's baseline) keeps its state in the TrainState, so it is
    checkpointed and resumed. With train.mask_truncated, the rows `truncated` (B,) marks
    (cut at max_new_tokens) get advantage 0: no policy gradient (their rewards still
    count in their group's baseline)."""
    t = cfg.train
    advantages, state.baseline = compute_advantages(
        t.algorithm,
        rewards,
        t.group_size,
        baseline=state.baseline,
        baseline_momentum=t.baseline_momentum,
    )
    if t.mask_truncated and truncated is not None:
        advantages = torch.where(truncated, torch.zeros_like(advantages), advantages)
    return advantages


def truncated_rows(groups: list[Group]) -> torch.Tensor:
    """(B,) bool: completions cut at max_new_tokens (finish_reason "length")."""
    flags = [c.finish_reason == "length" for g in groups for c in g.completions]
    return torch.tensor(flags, dtype=torch.bool)


def train_step(
    cfg: Config,
    model: Any,
    ref: Any | None,
    optimizer: Any,
    groups: list[Group],
    advantages: torch.Tensor,
    pad_id: int,
    rollout_logprobs: bool = False,
    backend: Backend | None = None,
) -> dict[str, float]:
    """mu passes of micro-batched loss + backward, one optimizer step each; the metrics.

    rollout_logprobs: use the sampler's log-probs as old log-probs (off-policy buffers).
    backend: the run's (default: the configured one's).
    """
    t = cfg.train
    b = backend or backend_for(cfg)
    comps = [c for g in groups for c in g.completions]
    # mask_truncated: truncated rows leave the batch whole (loss normaliser, KL and
    # entropy terms too), as TRL and DAPO mask them
    masked = {i for i, c in enumerate(comps) if t.mask_truncated and c.finish_reason == "length"}
    counted = [c for i, c in enumerate(comps) if i not in masked]
    local: list[float] = [sum(len(c.token_ids) for c in counted), len(counted)]
    total_tokens, total_seqs = (int(x) for x in dist.all_sum(local))
    keep = [i for i in keep_rows(cfg, advantages) if i not in masked]
    micro = [keep[i : i + t.micro_batch_size] for i in range(0, len(keep), t.micro_batch_size)]
    real = len(micro)  # FSDP: ranks with fewer micro-batches run zero-weight passes on row 0
    micro += [[0]] * (fsdp.padded_count(real, model) - real)
    batches = b.rl_batches(cfg, model, ref, groups, micro, pad_id, rollout_logprobs)
    sums: dict[str, float] = {}
    grad_norm = 0.0
    skipped = 0
    b.seed_updates(cfg, optimizer)
    for epoch in range(t.mu):
        p = RLPass(loss_config(cfg), total_tokens, total_seqs, epoch == 0, rollout_logprobs)
        b.zero_grad(optimizer)
        for j, rows in enumerate(micro):
            adv = advantages[rows] if j < real else None  # (b,)
            if (stats := b.rl_backward(cfg, model, batches[j], adv, p)) is not None:
                add_stats(sums, stats, t.mu)
        grad_norm = b.clip_gradients(model, t.grad_clip)
        if not math.isfinite(grad_norm):
            if t.nonfinite == "stop":
                raise MathrlError("Non-finite gradient norm; stopping (train.nonfinite = 'stop')")
            b.zero_grad(optimizer)
            skipped += 1
            continue
        b.optimizer_step(model, optimizer)
    sums = merge_sums(dist.gather(sums))
    trained, had_micro = (int(x) for x in dist.all_sum([len(keep), float(bool(real))]))
    return step_metrics(sums, grad_norm, skipped, trained, had_micro > 0, passes=t.mu)


def add_stats(sums: dict[str, float], s: MicroStats, passes: int) -> None:
    """Add one micro-batch's statistics into the step's sums."""
    if s.tis_capped is not None:
        sums["_tis_capped"] = sums.get("_tis_capped", 0.0) + s.tis_capped
    if s.lp_diff is not None:
        sums["_lp_diff"] = sums.get("_lp_diff", 0.0) + s.lp_diff
    if s.entropy_masked is not None:
        sums["_entropy_masked"] = sums.get("_entropy_masked", 0.0) + s.entropy_masked
    for k, v in s.loss_stats.items():
        # the losses add up to the batch's loss (/ mu); diagnostics are token means
        w = s.weight / passes if k in LOSS_KEYS else s.tokens
        sums[k] = sums.get(k, 0.0) + v * w
    sums["entropy"] = sums.get("entropy", 0.0) + s.entropy_sum
    sums["_tokens"] = sums.get("_tokens", 0.0) + s.tokens


def merge_sums(parts: list[dict[str, float]]) -> dict[str, float]:
    """Every rank's metric sums added key by key (a rank may lack keys: no micro-batch)."""
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + v
    return out


def loss_config(cfg: Config) -> PolicyLossConfig:
    """The policy losses' options from train.*."""
    t = cfg.train
    return PolicyLossConfig(
        clip_eps=t.clip_eps,
        clip_eps_high=t.clip_eps_high,
        agg_mode=t.loss_agg,
        max_len=cfg.rollout.max_new_tokens,
        sapo_tau_pos=t.sapo_tau_pos,
        sapo_tau_neg=t.sapo_tau_neg,
    )


def keep_rows(cfg: Config, advantages: torch.Tensor) -> list[int]:
    """Rows that carry a gradient: zero-advantage sequences give exactly zero policy
    gradient, so they are skipped unless a KL term or an entropy bonus needs them."""
    if cfg.train.kl_coef > 0 or cfg.train.entropy_coef != 0:
        return list(range(len(advantages)))
    return torch.nonzero(advantages).flatten().tolist()


def step_metrics(
    sums: dict[str, float],
    grad_norm: float,
    skipped: int,
    trained: int,
    had_micro: bool,
    passes: int = 1,
) -> dict[str, float]:
    """loss/* (the batch's loss, and token means of the diagnostics over the step),
    policy/entropy and optim/* metrics."""
    n = max(1.0, sums.pop("_tokens", 0.0))  # trained tokens x update passes (train.mu)
    lp_diff, tis_capped = sums.pop("_lp_diff", None), sums.pop("_tis_capped", None)
    entropy_masked = sums.pop("_entropy_masked", None)
    rename = {"policy_loss": "policy", "loss": "total"}
    metrics = {
        f"loss/{rename.get(k, k)}": v if k in LOSS_KEYS else v / n
        for k, v in sums.items()
        if k != "entropy"
    }
    for k in ("policy", "total", "clip_frac", "approx_kl"):  # nothing trained: the loss is 0
        metrics.setdefault(f"loss/{k}", 0.0)
    if had_micro:  # entropy of the trained sequences; absent when none carried a gradient
        metrics["policy/entropy"] = sums.get("entropy", 0.0) / n
    if entropy_masked is not None:  # share of trained tokens the entropy quantile masked
        metrics["policy/entropy_masked_frac"] = entropy_masked / n
    if lp_diff is not None:  # mean |trainer - sampler| log-prob per trained token (pass 1)
        metrics["rollout/logprob_diff"] = lp_diff * passes / n
    if tis_capped is not None:  # fraction of token weights the cap cut
        metrics["rollout/tis_capped"] = tis_capped / n
    # at float32, the precision of torch's norm, whatever the backend computed it in
    metrics["optim/grad_norm"] = float(torch.tensor(grad_norm))
    metrics["optim/skipped"] = skipped
    metrics["train/trained_seqs"] = trained
    return metrics
