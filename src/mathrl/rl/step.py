"""One RL update from scored groups: advantages, old/ref log-probs, loss, clip, step.

- With mu = 1 the update is on-policy: old log-probs are the detached current ones, so no
  extra forward pass. With mu > 1 they come from one no-grad pass before the updates;
  a rollout buffer brings its sampler's log-probs instead (`rollout_logprobs`).
- Sequences with zero advantage contribute exactly zero policy gradient; when kl_coef = 0
  they are skipped in the backward pass, but still counted in the loss normaliser, so the
  result equals the full-batch loss (`agg_share`).
- A non-finite gradient norm skips the optimizer step (or stops: train.nonfinite).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mathrl import dist, fsdp
from mathrl.algorithms import (
    PolicyLossConfig,
    agg_share,
    compute_advantages,
    compute_loss,
    truncated_is_weights,
)
from mathrl.config import Config
from mathrl.errors import MathrlError
from mathrl.groups import Group
from mathrl.models.logprobs import CompletionBatch, completion_batch, completion_logprobs
from mathrl.models.precision import pad_multiple
from mathrl.rl.state import TrainState
from mathrl.rollout.types import Completion

LOSS_KEYS = ("loss", "policy_loss")
"""compute_loss metrics that are parts of the loss (weighted like it), not token means."""


@dataclass
class Reference:
    """The frozen KL reference policy: its own module, or (model None) the policy's base
    weights with its LoRA adapters switched off."""

    model: torch.nn.Module | None = None

    def logprobs(self, policy: Any, batch: CompletionBatch, share: bool) -> torch.Tensor:
        if self.model is None:
            with policy.disable_adapter():
                return completion_logprobs(policy, batch, share_prompts=share)
        out = completion_logprobs(self.model, batch, share_prompts=share)
        if fsdp.is_sharded(self.model):
            # FSDP keeps a root unit gathered until its backward, and the reference has
            # none: shard its embeddings and head again after every forward
            self.model.reshard()
        return out


def reference_model(cfg: Config, model: Any, source: str | None = None) -> Reference | None:
    """The KL reference: None at kl_coef 0; the adapter-free base under LoRA; else the
    run's start weights: `source` loaded (a resumed run), or a copy of `model` (a fresh one)."""
    if cfg.train.kl_coef <= 0:
        return None
    if cfg.model.lora.r > 0:
        return Reference(None)
    if source is None and fsdp.is_sharded(model):
        source = getattr(model, "name_or_path", "")  # FSDP modules cannot be copied: reload
        if not source:
            raise MathrlError(
                "train.parallel = 'fsdp' with train.kl_coef > 0 reloads the start model as "
                "the KL reference, and this model does not say where it came from"
            )
    if source is not None:
        from mathrl.models.loading import load_model

        device = str(next(model.parameters()).device)
        ref, _ = load_model(source, cfg.model.dtype, device, autocast=cfg.model.autocast)
        ref = ref.eval().requires_grad_(False)
        return Reference(fsdp.shard(ref) if fsdp.is_sharded(model) else ref)
    return Reference(copy.deepcopy(model).eval().requires_grad_(False))


def advantages_for(cfg: Config, state: TrainState, rewards: torch.Tensor) -> torch.Tensor:
    """Per-sample advantages (B,) of the configured estimator; a stateful one (REINFORCE's
    baseline) keeps its state in the TrainState, so it is checkpointed and resumed."""
    t = cfg.train
    advantages, state.baseline = compute_advantages(
        t.algorithm,
        rewards,
        t.group_size,
        baseline=state.baseline,
        baseline_momentum=t.baseline_momentum,
    )
    return advantages


def train_step(
    cfg: Config,
    model: Any,
    ref: Reference | None,
    optimizer: Any,
    groups: list[Group],
    advantages: torch.Tensor,
    pad_id: int,
    rollout_logprobs: bool = False,
    loss_fn: Callable[..., Any] = compute_loss,
) -> dict[str, float]:
    """mu passes of micro-batched loss + backward, one optimizer step each.

    With several ranks, `groups` and `advantages` are this rank's share: losses are
    normalised by the counts of the whole batch and gradients summed over ranks (dist),
    so the update is the one a single process computes on the whole batch.
    rollout_logprobs: use the sampler's log-probs as old log-probs (off-policy buffers).
    loss_fn: compute_loss's signature (tests inject faults through it).
    """
    t = cfg.train
    device = next(model.parameters()).device
    comps = [c for g in groups for c in g.completions]
    local = [sum(len(c.token_ids) for c in comps), len(comps)]
    total_tokens, total_seqs = (int(x) for x in dist.all_sum(local))
    keep = keep_rows(cfg, advantages)
    loss_cfg = loss_config(cfg)
    micro = [keep[i : i + t.micro_batch_size] for i in range(0, len(keep), t.micro_batch_size)]
    real = len(micro)  # FSDP: ranks with fewer micro-batches run zero-weight passes on row 0
    micro += [[0]] * (fsdp.padded_count(real, model) - real)
    batches = micro_batches(groups, micro, pad_id, device, pad_multiple(model))
    old_lp, ref_lp = fixed_logprobs(cfg, model, ref, comps, micro, batches, rollout_logprobs)
    sums: dict[str, float] = {}
    grad_norm = torch.tensor(0.0)
    skipped = 0
    for _epoch in range(t.mu):
        optimizer.zero_grad(set_to_none=True)
        for j, mb in enumerate(micro):
            cmask = batches[j].completion_mask
            logprobs, entropy = completion_logprobs(
                model, batches[j], return_entropy=True, share_prompts=t.share_prompts
            )
            if j >= real:  # the other ranks' passes need this one; it adds nothing
                (logprobs.sum() * 0.0).backward()
                continue
            old = old_lp[j] if old_lp[j] is not None else logprobs.detach()
            adv = advantages[mb].to(device)  # (b,)
            if not rollout_logprobs:  # the sampler's log-probs against the trainer's
                sampled = sampler_logprobs([comps[i] for i in mb], batches[j]).to(device)
                if t.tis_cap > 0:
                    tis, capped = truncated_is_weights(old, sampled, cmask, t.tis_cap)
                    adv = adv[:, None] * tis  # (b, T): each token's policy loss reweighted
                    sums["_tis_capped"] = sums.get("_tis_capped", 0.0) + capped.sum().item()
                if _epoch == 0:
                    gap = ((old - sampled).abs() * cmask).sum().item()
                    sums["_lp_diff"] = sums.get("_lp_diff", 0.0) + gap
            out = loss_fn(
                logprobs,
                old,
                ref_lp[j],
                adv,
                cmask,
                loss_cfg,
                t.policy_loss,
                t.kl_coef,
                t.kl_estimator,
            )
            weight = agg_share(t.loss_agg, cmask, total_tokens, total_seqs)
            (out.loss * weight).backward()
            n_tok = cmask.sum().item()
            for k, v in out.metrics.items():
                # the losses add up to the batch's loss (/ mu); diagnostics are token means
                w = weight / t.mu if k in LOSS_KEYS else n_tok
                sums[k] = sums.get(k, 0.0) + v * w
            sums["entropy"] = sums.get("entropy", 0.0) + (entropy * cmask).sum().item()
            sums["_tokens"] = sums.get("_tokens", 0.0) + n_tok
        dist.all_reduce_grads(model)  # sums over ranks (nothing to do with one)
        grad_norm = clip_gradients(model, t.grad_clip)
        if not torch.isfinite(grad_norm):
            if t.nonfinite == "stop":
                raise MathrlError("Non-finite gradient norm; stopping (train.nonfinite = 'stop')")
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            continue
        optimizer.step()
    sums = merge_sums(dist.gather(sums))
    trained, had_micro = (int(x) for x in dist.all_sum([len(keep), float(bool(real))]))
    return _step_metrics(sums, grad_norm, skipped, trained, had_micro > 0, passes=t.mu)


def merge_sums(parts: list[dict[str, float]]) -> dict[str, float]:
    """Every rank's metric sums added key by key (a rank may lack keys: no micro-batch)."""
    out: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            out[k] = out.get(k, 0.0) + v
    return out


def clip_gradients(model: Any, max_norm: float) -> torch.Tensor:
    """Clip the trainable parameters' global gradient norm (0: no clipping); returns the norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP: a DTensor


def micro_batches(
    groups: list[Group], micro: list[list[int]], pad_id: int, device: torch.device, multiple: int
) -> list[CompletionBatch]:
    """One CompletionBatch per list of row indices (rows count completions group by group)."""
    comps = [c for g in groups for c in g.completions]
    row_group = [gi for gi, g in enumerate(groups) for _ in g.completions]
    return [micro_batch(groups, comps, row_group, mb, pad_id, device, multiple) for mb in micro]


def fixed_logprobs(
    cfg: Config,
    model: Any,
    ref: Reference | None,
    comps: list[Completion],
    micro: list[list[int]],
    batches: list[CompletionBatch],
    rollout_logprobs: bool,
) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
    """Old and reference log-probs per micro-batch, computed once before the updates.

    Old ones: the sampler's (buffers), one no-grad pass (mu > 1), or None (mu = 1: the
    detached current log-probs serve). Reference ones: None without a KL reference.
    """
    share = cfg.train.share_prompts
    old_lp: list[torch.Tensor | None] = [None] * len(micro)
    ref_lp: list[torch.Tensor | None] = [None] * len(micro)
    with torch.no_grad():
        for j, batch in enumerate(batches):
            if rollout_logprobs:
                old_lp[j] = sampler_logprobs([comps[i] for i in micro[j]], batch)
            elif cfg.train.mu > 1:
                old_lp[j] = completion_logprobs(model, batch, share_prompts=share)
            if ref is not None:
                ref_lp[j] = ref.logprobs(model, batch, share)
    return old_lp, ref_lp


def loss_config(cfg: Config) -> PolicyLossConfig:
    """The policy losses' options from train.* (both backends' steps)."""
    t = cfg.train
    return PolicyLossConfig(
        clip_eps=t.clip_eps,
        clip_eps_high=t.clip_eps_high,
        agg_mode=t.loss_agg,
        max_len=cfg.rollout.max_new_tokens,
    )


def keep_rows(cfg: Config, advantages: torch.Tensor) -> list[int]:
    """Rows that carry a gradient: zero-advantage sequences give exactly zero policy
    gradient, so they are skipped unless a KL term needs them."""
    if cfg.train.kl_coef > 0:
        return list(range(len(advantages)))
    return torch.nonzero(advantages).flatten().tolist()


def _step_metrics(
    sums: dict[str, float],
    grad_norm: torch.Tensor,
    skipped: int,
    trained: int,
    had_micro: bool,
    passes: int = 1,
) -> dict[str, float]:
    """loss/* (the batch's loss, and token means of the diagnostics over the step),
    rollout/entropy and optim/* metrics."""
    n = max(1.0, sums.pop("_tokens", 0.0))  # trained tokens x update passes (train.mu)
    lp_diff, tis_capped = sums.pop("_lp_diff", None), sums.pop("_tis_capped", None)
    rename = {"policy_loss": "policy", "loss": "total"}
    metrics = {
        f"loss/{rename.get(k, k)}": v if k in LOSS_KEYS else v / n
        for k, v in sums.items()
        if k != "entropy"
    }
    for k in ("policy", "total", "clip_frac", "approx_kl"):  # nothing trained: the loss is 0
        metrics.setdefault(f"loss/{k}", 0.0)
    if had_micro:  # entropy of the trained sequences; absent when none carried a gradient
        metrics["rollout/entropy"] = sums.get("entropy", 0.0) / n
    if lp_diff is not None:  # mean |trainer - sampler| log-prob per trained token (pass 1)
        metrics["rollout/logprob_diff"] = lp_diff * passes / n
    if tis_capped is not None:  # fraction of token weights the cap cut
        metrics["rollout/tis_capped"] = tis_capped / n
    metrics["optim/grad_norm"] = float(grad_norm)
    metrics["optim/skipped"] = skipped
    metrics["train/trained_seqs"] = trained
    return metrics


def micro_batch(
    groups: list[Group],
    comps: list[Completion],
    row_group: list[int],
    rows: list[int],
    pad_id: int,
    device: torch.device,
    multiple: int = 1,
) -> CompletionBatch:
    """The CompletionBatch of `rows` (indices into comps): each distinct prompt once."""
    local: dict[int, int] = {}
    for i in rows:
        local.setdefault(row_group[i], len(local))
    prompts = [list(groups[g].prompt_ids) for g in local]
    return completion_batch(
        prompts,
        [local[row_group[i]] for i in rows],
        [list(comps[i].token_ids) for i in rows],
        pad_id,
        device,
        multiple,
    )


def sampler_logprobs(comps: list[Completion], batch: CompletionBatch) -> torch.Tensor:
    """(B, T) sampler log-probs laid out like the batch's completion tokens."""
    out = torch.zeros(batch.completion_mask.shape, dtype=torch.float32)
    for i, c in enumerate(comps):
        out[i, : len(c.logprobs)] = torch.tensor(c.logprobs, dtype=torch.float32)
    return out.to(batch.completion_mask.device)
