"""AdamW, the learning-rate schedule, the trainer's resumable state and its checkpoints.

SFT (`mathrl sft`, the warm-up, expert iteration) and RL build their optimizer here, so
both warn the same way about weights too coarse for their learning rate.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from mathrl import checkpoint as ckpt_mod
from mathrl import dist, fsdp
from mathrl.config import Config, dumps_toml
from mathrl.errors import MathrlError
from mathrl.loggers import warn
from mathrl.models.precision import low_precision_weights_warning
from mathrl.run_setup import checkpoint_meta


@dataclass
class TrainState:
    """Everything besides model/optimizer weights that an exact continuation needs."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0
    samples: int = 0
    baseline: float | None = None
    """State of a stateful advantage estimator (REINFORCE's EMA baseline); None otherwise."""
    extra: dict[str, Any] = field(default_factory=dict)


def make_optimizer(
    params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0
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


def step_scheduler(scheduler: Any) -> None:
    """Advance the LR schedule; quiet about a skipped (non-finite) optimizer step.

    The schedule follows training steps, taken or skipped, so that a resumed run and an
    uninterrupted one agree; torch warns when no optimizer.step() came first.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
        scheduler.step()


def optimizer_state(
    cfg: Config, model: Any, resume_from: Path | None
) -> tuple[Any, Any, TrainState, dict[str, Any] | None]:
    """AdamW + LR schedule + TrainState, restored from a checkpoint when resuming.

    Also returns the loaded payload (None when fresh): its RNG states must be restored by
    the caller last, after everything else that draws random numbers.
    """
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, t.lr, t.weight_decay)
    scheduler = lr_schedule(cfg, optimizer)
    if resume_from is None:
        return optimizer, scheduler, TrainState(), None
    saved = ckpt_mod.load_trainer_state(resume_from)
    fsdp.load_optimizer(model, optimizer, saved["optimizer"])  # FSDP: this rank's shard
    scheduler.load_state_dict(saved["scheduler"])
    return optimizer, scheduler, TrainState(**saved["train_state"]), saved


def save_checkpoint(
    cfg: Config,
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    scheduler: Any,
    state: TrainState,
    fingerprint: str,
) -> Path:
    """Commit an RL checkpoint (model, optimizer, schedule, TrainState, RNG states); every
    rank calls it, rank 0 writes (under FSDP the ranks first gather the shards)."""
    weights, optim = fsdp.full_state(model, optimizer)

    def write() -> Path:
        for p in model.parameters() if weights is None else weights.values():
            if not torch.isfinite(p).all():
                raise MathrlError(
                    f"Refusing to checkpoint step {state.step}: model weights are not finite"
                )
        payload = {
            "optimizer": optim,
            "scheduler": scheduler.state_dict(),
            "train_state": state.__dict__.copy(),
            "rng": ckpt_mod.rng_state(),
        }
        return ckpt_mod.save_training_checkpoint(
            run_dir,
            state.step,
            model,
            tokenizer,
            payload,
            dumps_toml(cfg),
            checkpoint_meta(cfg, fingerprint, {"kind": "rl"}),
            cfg.checkpoint.keep_last,
            weights=weights,
        )

    return dist.on_main(write)
