"""The trainer's resumable state, its optimizer and schedule, and its checkpoints.

The backend (mathrl.backends) builds the optimizer and schedule and saves what is its
own; what a checkpoint holds besides (schedule, TrainState, RNG states) is decided here,
once for every backend.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathrl import checkpoint as ckpt_mod
from mathrl.backends import Backend
from mathrl.config import Config


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


def step_scheduler(scheduler: Any) -> None:
    """Advance the LR schedule; quiet about a skipped (non-finite) optimizer step.

    The schedule follows training steps, taken or skipped, so that a resumed run and an
    uninterrupted one agree; torch warns when no optimizer.step() came first.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
        scheduler.step()


def optimizer_state(
    cfg: Config, backend: Backend, model: Any, resume_from: Path | None
) -> tuple[Any, Any, TrainState, dict[str, Any] | None]:
    """AdamW + LR schedule + TrainState, restored from a checkpoint when resuming.

    Also returns the loaded payload (None when fresh): its RNG states must be restored by
    the caller last, after everything else that draws random numbers.
    """
    t = cfg.train
    optimizer = backend.optimizer(model, t.lr, t.weight_decay)
    scheduler = backend.schedule(cfg, optimizer)
    if resume_from is None:
        return optimizer, scheduler, TrainState(), None
    saved = ckpt_mod.load_trainer_state(resume_from)
    backend.load_optimizer(model, optimizer, resume_from, saved)
    scheduler.load_state_dict(saved["scheduler"])
    return optimizer, scheduler, TrainState(**saved["train_state"]), saved


def save_checkpoint(
    cfg: Config,
    backend: Backend,
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    scheduler: Any,
    state: TrainState,
    fingerprint: str,
) -> Path:
    """Commit an RL checkpoint (model, optimizer, schedule, TrainState, RNG states) through
    the backend's one writer; every rank calls it, rank 0 writes."""
    payload = {
        "scheduler": scheduler.state_dict(),
        "train_state": state.__dict__.copy(),
        "rng": ckpt_mod.rng_state(),
    }
    return backend.write_checkpoint(
        cfg, run_dir, state.step, model, tokenizer, payload, "rl", fingerprint, optimizer
    )


START_MODEL = "start_model"
"""TrainState.extra key: the model a run started RL from (its KL reference on resume)."""


def reference_for(
    cfg: Config, b: Backend, model: Any, state: Any, run_dir: Path, resumed: bool
) -> Any:
    """The KL reference of a run: the weights RL started from. A fresh run records where
    they came from in its TrainState (relative to the run dir when inside it, so a copied
    run dir still finds them) and copies them; a resumed run loads them from there, since
    its model holds trained weights by now (a state without the record: a copy)."""
    if not resumed:
        source = str(getattr(model, "name_or_path", "") or "")
        if (
            source
            and Path(source).is_dir()
            and Path(source).resolve().is_relative_to(run_dir.resolve())
        ):
            source = str(Path(source).resolve().relative_to(run_dir.resolve()))
        state.extra[START_MODEL] = source or None
        return b.reference(cfg, model)
    recorded = state.extra.get(START_MODEL)
    if recorded and not Path(recorded).is_absolute() and (run_dir / recorded).is_dir():
        recorded = str(run_dir / recorded)
    return b.reference(cfg, model, recorded)
