"""The PyTorch backend: transformers models on CPU, CUDA or MPS, one process or many.

- With mu = 1 the update is on-policy: old log-probs are the detached current ones, so no
  extra forward pass. With mu > 1 they come from one no-grad pass before the updates;
  a rollout buffer brings its sampler's log-probs instead.
- Several ranks (torchrun) sum their gradients before the clip (mathrl.dist); under FSDP
  a rank with fewer micro-batches runs zero-weight passes, and checkpoints gather shards.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from mathrl import dist, fsdp
from mathrl.algorithms import agg_share, compute_loss, top_entropy_mask, truncated_is_weights
from mathrl.backends.base import Backend, Encoded, MicroStats, RLPass
from mathrl.config import Config
from mathrl.errors import MathrlError
from mathrl.groups import Group
from mathrl.loggers import warn
from mathrl.models.logprobs import (
    CompletionBatch,
    completion_batch,
    completion_logprobs,
    pad_batch,
)
from mathrl.models.lora import is_peft_model, save_adapters
from mathrl.models.precision import forward_autocast, low_precision_weights_warning, pad_multiple
from mathrl.policy import load_torch_policy
from mathrl.rollout.types import Completion


@dataclass
class Reference:
    """The frozen KL reference policy: its own module, or (model None) the policy's base
    weights with its LoRA adapters switched off."""

    model: torch.nn.Module | None = None

    def logprobs(self, policy: Any, batch: CompletionBatch, share: bool) -> torch.Tensor:
        if self.model is None:
            with policy.disable_adapter():
                return logprobs_of(policy, batch, share)
        out = logprobs_of(self.model, batch, share)
        if fsdp.is_sharded(self.model):
            # FSDP keeps a root unit gathered until its backward, and the reference has
            # none: shard its embeddings and head again after every forward
            cast(Any, self.model).reshard()
        return out


@dataclass
class RLBatch:
    """A micro-batch and the log-probs fixed before the updates, all (b, T)."""

    batch: CompletionBatch
    old: torch.Tensor | None
    """The sampler's (buffers), a no-grad pass (mu > 1), or None: the detached current."""
    ref: torch.Tensor | None
    sampled: torch.Tensor | None
    """The sampler's log-probs, for the IS weights and the log-prob gap (on-policy only)."""


class TorchBackend(Backend):
    name = "torch"

    def load_policy(self, cfg: Config, source: str, shard: bool = True) -> tuple[Any, Any]:
        return load_torch_policy(cfg, source, shard)

    def reference(self, cfg: Config, model: Any, source: str | None = None) -> Reference | None:
        return reference_model(cfg, model, source)

    def optimizer(self, model: Any, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        return make_optimizer([p for p in model.parameters() if p.requires_grad], lr, weight_decay)

    def schedule(self, cfg: Config, optimizer: Any) -> Any:
        return lr_schedule(cfg, optimizer)

    def load_optimizer(self, model: Any, optimizer: Any, ckpt: Path, saved: dict[str, Any]) -> None:
        fsdp.load_optimizer(model, optimizer, saved["optimizer"])  # FSDP: this rank's shard

    def seed_updates(self, cfg: Config, optimizer: Any) -> None:
        """Nothing: torch's dropout draws from the global generator, restored on resume."""

    def zero_grad(self, optimizer: Any) -> None:
        optimizer.zero_grad(set_to_none=True)

    def clip_gradients(self, model: Any, max_norm: float) -> float:
        dist.all_reduce_grads(model)  # sums over ranks (nothing to do with one)
        return float(clip_gradients(model, max_norm))

    def optimizer_step(self, model: Any, optimizer: Any) -> None:
        optimizer.step()

    def rl_batches(
        self,
        cfg: Config,
        model: Any,
        ref: Reference | None,
        groups: list[Group],
        micro: list[list[int]],
        pad_id: int,
        rollout_logprobs: bool,
    ) -> list[RLBatch]:
        device = next(model.parameters()).device
        comps = [c for g in groups for c in g.completions]
        batches = micro_batches(groups, micro, pad_id, device, pad_multiple(model))
        share = cfg.train.share_prompts
        out = []
        with torch.no_grad():
            for rows, batch in zip(micro, batches, strict=True):
                sampled = sampler_logprobs([comps[i] for i in rows], batch)
                old = None
                if rollout_logprobs:
                    old = sampled
                elif cfg.train.mu > 1:
                    old = logprobs_of(model, batch, share)
                ref_lp = ref.logprobs(model, batch, share) if ref is not None else None
                out.append(RLBatch(batch, old, ref_lp, None if rollout_logprobs else sampled))
        return out

    def rl_backward(
        self, cfg: Config, model: Any, batch: RLBatch, advantages: Any, p: RLPass
    ) -> MicroStats | None:
        t = cfg.train
        cmask = batch.batch.completion_mask
        logprobs, entropy = completion_logprobs(
            model,
            batch.batch,
            return_entropy=True,
            share_prompts=t.share_prompts,
            chunk_tokens=t.logprob_chunk_tokens,
            entropy_grad=t.entropy_coef != 0.0,
        )
        if advantages is None:  # the other ranks' passes need this one; it adds nothing
            (logprobs.sum() * 0.0).backward()
            return None
        old = batch.old if batch.old is not None else logprobs.detach()
        adv = advantages.to(cmask.device)  # (b,)
        stats = MicroStats(
            weight=agg_share(t.loss_agg, cmask, p.total_tokens, p.total_seqs), tokens=0.0
        )
        if batch.sampled is not None:  # the sampler's log-probs against the trainer's
            sampled = batch.sampled
            if t.tis_cap > 0:
                tis, capped = truncated_is_weights(old, sampled, cmask, t.tis_cap)
                adv = adv[:, None] * tis  # (b, T): each token's policy loss reweighted
                stats.tis_capped = capped.sum().item()
            if p.first:
                stats.lp_diff = ((old - sampled).abs() * cmask).sum().item()
        if t.top_entropy_quantile < 1.0:  # only the high-entropy tokens carry policy gradient
            keep = top_entropy_mask(entropy, cmask, t.top_entropy_quantile)  # (b, T)
            adv = (adv[:, None] if adv.dim() == 1 else adv) * keep.to(adv.dtype)
            stats.entropy_masked = float((cmask.bool() & ~keep).sum().item())
        out = compute_loss(
            logprobs,
            old,
            batch.ref,
            adv,
            cmask,
            p.loss_cfg,
            t.policy_loss,
            t.kl_coef,
            t.kl_estimator,
            entropy,
            t.entropy_coef,
        )
        (out.loss * stats.weight).backward()
        stats.tokens = cmask.sum().item()
        stats.loss_stats = dict(out.metrics)
        stats.entropy_sum = (entropy.detach() * cmask).sum().item()
        return stats

    def sft_backward(
        self, model: Any, chunk: list[Encoded], n_tokens: int, pad_id: int, weight: float = 1.0
    ) -> float:
        device = next(model.parameters()).device
        ids, attn, mask = pad_batch(
            [c[0] for c in chunk], [c[1] for c in chunk], pad_id, device, pad_multiple(model)
        )
        loss_sum, _ = sft_loss(model, ids, attn, mask)
        (loss_sum * (weight / n_tokens)).backward()
        return float(loss_sum.item())

    def checkpoint_state(
        self, model: Any, optimizer: Any | None
    ) -> tuple[dict[str, Any] | None, dict[str, Any], Callable[[Path], None] | None]:
        weights, optim = fsdp.full_state(model, optimizer)  # FSDP: the ranks gather shards
        return weights, ({"optimizer": optim} if optimizer is not None else {}), None

    def save_model(
        self, model: Any, tokenizer: Any, out: Path, weights: dict[str, Any] | None
    ) -> None:
        """HF format (from_pretrained, vLLM); under LoRA the adapters and their base's name."""
        if is_peft_model(model):
            save_adapters(model, out)
        elif weights is not None:
            with fsdp.plain_class(model):
                model.save_pretrained(out, state_dict=weights)
        else:
            model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)

    def nonfinite_weight(self, model: Any, weights: dict[str, Any] | None) -> str | None:
        named = model.named_parameters() if weights is None else weights.items()
        return next((name for name, p in named if not torch.isfinite(p).all()), None)


def make_optimizer(
    params: list[torch.Tensor], lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """AdamW over `params`; warns when their dtype would round the updates away."""
    if (warning := low_precision_weights_warning(params, lr)) is not None:
        warn(warning)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def lr_schedule(cfg: Config, optimizer: torch.optim.Optimizer) -> Any:
    """train.schedule after train.warmup_steps of linear warm-up (transformers' schedules)."""
    t = cfg.train
    if t.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, t.warmup_steps, t.steps)
    return get_constant_schedule_with_warmup(optimizer, t.warmup_steps)


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


def logprobs_of(model: Any, batch: CompletionBatch, share: bool) -> torch.Tensor:
    """(b, T) completion log-probs, without entropies."""
    return cast(torch.Tensor, completion_logprobs(model, batch, share_prompts=share))


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


def sft_loss(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response-token cross-entropy and the number of response tokens."""
    with forward_autocast(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), targets, reduction="none"
    )  # (B, L-1)
    return (nll * mask).sum(), mask.sum()
