"""The interface every framework implements, and the one checkpoint writer built on it.

A `Backend` holds only what differs between frameworks: the policy and its KL reference,
log-probs and the backward pass of one micro-batch (RL and SFT), gradient clipping and
the optimizer step, optimizer state, and the pieces of a checkpoint (gathered weights,
optimizer state, the finiteness check). What both share (micro-batch split, metric sums,
the zero-advantage skip, the non-finite policy, the checkpoint's payload) is written once
above it, in rl/step.py, rl/state.py and sft.py, which call these methods and nothing
else framework-specific.

An instance lives for one run (`mathrl.backends.backend_for`): an MLX one keeps the
gradients it accumulates between `zero_grad` and `optimizer_step`.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathrl import checkpoint as ckpt_mod
from mathrl import dist
from mathrl.algorithms import PolicyLossConfig
from mathrl.config import Config, dumps_toml
from mathrl.errors import MathrlError
from mathrl.groups import Group
from mathrl.run_setup import checkpoint_meta
from mathrl.shards import Encoded


@dataclass(frozen=True)
class RLPass:
    """What one RL update pass needs besides the micro-batch (the same for all of them)."""

    loss_cfg: PolicyLossConfig
    total_tokens: int
    """Completion tokens of the whole batch, over all ranks (the loss normaliser)."""
    total_seqs: int
    first: bool
    """The first of train.mu passes: the sampler-vs-trainer log-prob gap is measured."""
    rollout_logprobs: bool
    """Old log-probs are the sampler's (a buffer, a lagging server): no IS correction."""


@dataclass
class MicroStats:
    """One micro-batch's contribution to the step's metrics, summed above the backend."""

    weight: float
    """Its share of the whole batch's loss (agg_share)."""
    tokens: float
    loss_stats: dict[str, float] = field(default_factory=dict)
    """compute_loss's metrics of the micro-batch (unweighted)."""
    entropy_sum: float = 0.0
    entropy_masked: float | None = None
    """Valid tokens train.top_entropy_quantile kept out of the policy gradient."""
    lp_diff: float | None = None
    tis_capped: float | None = None


class Backend(ABC):
    """Model, step and checkpoint pieces of one framework (torch, MLX)."""

    name: str

    # ---------------------------------------------------------------- models

    @abstractmethod
    def load_policy(self, cfg: Config, source: str, shard: bool = True) -> tuple[Any, Any]:
        """Model and tokenizer from `source` (a dir or hub name), LoRA per model.lora."""

    @abstractmethod
    def reference(self, cfg: Config, model: Any, source: str | None = None) -> Any | None:
        """The frozen KL reference (None at kl_coef 0): `source` loaded, else the start weights."""

    # ---------------------------------------------------------------- optimizer

    @abstractmethod
    def optimizer(self, model: Any, lr: float, weight_decay: float) -> Any:
        """AdamW as torch's (bias correction, decoupled decay) over the trainable weights."""

    @abstractmethod
    def schedule(self, cfg: Config, optimizer: Any) -> Any:
        """train.schedule after train.warmup_steps, with torch's LRScheduler methods."""

    @abstractmethod
    def load_optimizer(self, model: Any, optimizer: Any, ckpt: Path, saved: dict[str, Any]) -> None:
        """Restore the optimizer's state from checkpoint `ckpt` (trainer state `saved`)."""

    @abstractmethod
    def seed_updates(self, cfg: Config, optimizer: Any) -> None:
        """Seed the framework's own draws in the update (LoRA dropout) for this step."""

    @abstractmethod
    def zero_grad(self, optimizer: Any) -> None:
        """Drop accumulated gradients."""

    @abstractmethod
    def clip_gradients(self, model: Any, max_norm: float) -> float:
        """Sum the gradients over ranks, clip their global norm (0: no clip); the norm."""

    @abstractmethod
    def optimizer_step(self, model: Any, optimizer: Any) -> None:
        """Apply the accumulated (clipped) gradients."""

    # ---------------------------------------------------------------- RL step

    @abstractmethod
    def rl_batches(
        self,
        cfg: Config,
        model: Any,
        ref: Any | None,
        groups: list[Group],
        micro: list[list[int]],
        pad_id: int,
        rollout_logprobs: bool,
    ) -> list[Any]:
        """One batch per list of rows, with its old and reference log-probs fixed."""

    @abstractmethod
    def rl_backward(
        self, cfg: Config, model: Any, batch: Any, advantages: Any, p: RLPass
    ) -> MicroStats | None:
        """Loss x its share of the batch, backward (gradients accumulate); its statistics.
        advantages None: a pass that adds nothing (the other ranks' collectives need it)."""

    # ---------------------------------------------------------------- SFT step

    @abstractmethod
    def sft_backward(
        self, model: Any, chunk: list[Encoded], n_tokens: int, pad_id: int, weight: float = 1.0
    ) -> float:
        """Backward of weight x the chunk's summed response-token loss / n_tokens; returns
        the summed loss."""

    # ---------------------------------------------------------------- checkpoints

    @abstractmethod
    def checkpoint_state(
        self, model: Any, optimizer: Any | None
    ) -> tuple[dict[str, Any] | None, dict[str, Any], Callable[[Path], None] | None]:
        """(gathered weights or None, trainer-state entries, extra files writer) of a
        checkpoint; every rank calls it (under FSDP a collective)."""

    @abstractmethod
    def save_model(
        self, model: Any, tokenizer: Any, out: Path, weights: dict[str, Any] | None
    ) -> None:
        """The model and tokenizer in the framework's format, which mathrl's loader and
        the framework's own read; weights: the gathered state dict of a sharded model."""

    @abstractmethod
    def nonfinite_weight(self, model: Any, weights: dict[str, Any] | None) -> str | None:
        """The name of a weight that is not finite, or None."""

    def write_checkpoint(
        self,
        cfg: Config,
        run_dir: Path,
        step: int,
        model: Any,
        tokenizer: Any,
        payload: dict[str, Any],
        kind: str,
        fingerprint: str,
        optimizer: Any | None = None,
    ) -> Path:
        """Commit a checkpoint of any kind (RL, SFT, expert iteration): the model, the
        optimizer's state when given, `payload` in trainer_state.pt. Refuses non-finite
        weights. Every rank calls it; rank 0 writes."""
        weights, state, write_extra = self.checkpoint_state(model, optimizer)

        def write() -> Path:
            if (bad := self.nonfinite_weight(model, weights)) is not None:
                raise MathrlError(
                    f"Refusing to checkpoint step {step}: model weights are not finite ({bad})"
                )
            return ckpt_mod.save_training_checkpoint(
                run_dir,
                step,
                functools.partial(self.save_model, model, tokenizer, weights=weights),
                {**state, **payload},
                dumps_toml(cfg),
                checkpoint_meta(cfg, fingerprint, {"kind": kind}),
                cfg.checkpoint.keep_last,
                write_extra=write_extra,
            )

        return dist.on_main(write)
