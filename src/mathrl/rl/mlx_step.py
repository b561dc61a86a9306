"""The MLX backend's RL update: the same step as rl/step.py, on an mlx-lm model.

Same inputs, same outputs, same metric names as the torch step (rl/step.py), so the loop
(trainer.py) calls either through rl/backend.py. What is the same: advantages (the MLX
form of the configured estimator), zero-advantage rows skipped unless a KL term needs
them, losses normalised by the whole batch's counts (agg_share), mu passes with
old log-probs fixed before the first, truncated IS weights, gradient clipping, a
non-finite norm skipping the step, AdamW with bias correction (torch's) and the LR
schedule of rl/state.py. What differs: MLX has no separate prompt pass (share_prompts is
a torch speed-up with the same result) and runs in one process (no ranks).

Checkpoints hold the model in mlx-lm's format (model/), the optimizer's state as
safetensors (optimizer.safetensors) and the rest as on torch (trainer_state.pt).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mathrl import checkpoint as ckpt_mod
from mathrl.config import Config, dumps_toml
from mathrl.errors import MathrlError
from mathrl.groups import Group
from mathrl.models.mlx_model import (
    base_model,
    completion_arrays,
    completion_logprobs_mlx,
)
from mathrl.rl.state import TrainState
from mathrl.rl.step import LOSS_KEYS, _step_metrics
from mathrl.run_setup import checkpoint_meta

OPTIMIZER_FILE = "optimizer.safetensors"


class Schedule:
    """rl/state.py's schedules (transformers' constant / cosine with linear warm-up) for an
    MLX optimizer, with the slice of torch's LRScheduler API the loop uses."""

    def __init__(self, optimizer: Any, base_lr: float, warmup: int, total: int, kind: str):
        self.optimizer, self.base_lr = optimizer, base_lr
        self.warmup, self.total, self.kind = warmup, total, kind
        self.last_epoch = 0
        self._apply()

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        if self.kind == "constant":
            return 1.0
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    def _apply(self) -> None:
        import mlx.core as mx

        self.optimizer.learning_rate = mx.array(self.get_last_lr()[0], dtype=mx.float32)

    def get_last_lr(self) -> list[float]:
        return [self.base_lr * self.factor(self.last_epoch)]

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last_epoch = int(state["last_epoch"])
        self._apply()


def make_optimizer(cfg: Config, weight_decay: float, lr: float) -> Any:
    """AdamW as torch's: betas (0.9, 0.999), eps 1e-8, bias correction, decoupled decay."""
    import mlx.optimizers as optim

    return optim.AdamW(learning_rate=lr, weight_decay=weight_decay, bias_correction=True)


def optimizer_state(
    cfg: Config, model: Any, resume_from: Path | None
) -> tuple[Any, Any, TrainState, dict[str, Any] | None]:
    """AdamW + schedule + TrainState (restored from a checkpoint when resuming)."""

    t = cfg.train
    optimizer = make_optimizer(cfg, t.weight_decay, t.lr)
    scheduler = Schedule(optimizer, t.lr, t.warmup_steps, t.steps, t.schedule)
    if resume_from is None:
        return optimizer, scheduler, TrainState(), None
    saved = ckpt_mod.load_trainer_state(resume_from)
    load_optimizer(optimizer, resume_from)
    scheduler.load_state_dict(saved["scheduler"])
    return optimizer, scheduler, TrainState(**saved["train_state"]), saved


def reference_model(cfg: Config, model: Any, source: str | None = None) -> Any | None:
    """rl/step.py's reference_model on MLX: None at kl 0; under LoRA the base weights (never
    trained); else the run's start weights (`source` loaded when resuming, or a copy)."""
    if cfg.train.kl_coef <= 0:
        return None
    if source is not None and getattr(model, "lora_config", None) is None:
        from mathrl.models.mlx_model import load_mlx_model

        ref, _ = load_mlx_model(source, dtype=cfg.model.dtype)
        ref.freeze()
        return ref
    return base_model(model)


def advantages_for(cfg: Config, state: TrainState, rewards: torch.Tensor) -> torch.Tensor:
    """rl/step.py's advantages_for through the estimator's MLX form (the loop keeps a
    torch copy for its logs)."""
    import mlx.core as mx

    from mathrl.algorithms.mlx_forms import compute_advantages_mlx

    t = cfg.train
    adv, state.baseline = compute_advantages_mlx(
        t.algorithm,
        mx.array(rewards.numpy()),
        t.group_size,
        baseline=state.baseline,
        baseline_momentum=t.baseline_momentum,
    )
    return torch.from_numpy(np.array(adv, dtype=np.float32))


def train_step(
    cfg: Config,
    model: Any,
    ref: Any | None,
    optimizer: Any,
    groups: list[Group],
    advantages: torch.Tensor,
    pad_id: int,
    rollout_logprobs: bool = False,
    loss_fn: Any = None,
) -> dict[str, float]:
    """rl/step.py's train_step on an MLX model (same metrics). loss_fn is accepted for the
    signature's sake; the MLX loss is compute_loss_mlx."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_map

    from mathrl.algorithms.mlx_forms import agg_share as agg_share_mlx
    from mathrl.algorithms.mlx_forms import compute_loss_mlx, truncated_is_weights_mlx
    from mathrl.rl.step import keep_rows, loss_config

    t = cfg.train
    comps = [c for g in groups for c in g.completions]
    prompt_of = [list(g.prompt_ids) for g in groups for _ in g.completions]
    total_tokens, total_seqs = sum(len(c.token_ids) for c in comps), len(comps)
    keep = keep_rows(cfg, advantages)
    loss_cfg = loss_config(cfg)
    micro = [keep[i : i + t.micro_batch_size] for i in range(0, len(keep), t.micro_batch_size)]
    batches = [
        completion_arrays([prompt_of[i] for i in mb], [comps[i].token_ids for i in mb], pad_id)
        for mb in micro
    ]
    sampled = [
        _padded([comps[i].logprobs for i in mb], b[2].shape)
        for mb, b in zip(micro, batches, strict=True)
    ]
    old_lp: list[Any] = [None] * len(micro)
    ref_lp: list[Any] = [None] * len(micro)
    for j, (ids, pos, _mask) in enumerate(batches):
        if rollout_logprobs:
            old_lp[j] = sampled[j]
        elif t.mu > 1:
            old_lp[j] = mx.stop_gradient(completion_logprobs_mlx(model, ids, pos)[0])
        if ref is not None:
            ref_lp[j] = mx.stop_gradient(completion_logprobs_mlx(ref, ids, pos)[0])
    adv_all = mx.array(advantages.numpy())

    tis_cap = t.tis_cap if not rollout_logprobs else 0.0

    def objective(
        mdl: Any, ids: Any, pos: Any, mask: Any, old: Any, ref_j: Any, adv: Any, lp_s: Any, w: float
    ) -> tuple[Any, ...]:
        """The micro-batch's loss share (differentiated) and, as side outputs, the old
        log-probs, entropies, loss statistics and the count of capped IS weights."""
        logprobs, entropy = completion_logprobs_mlx(mdl, ids, pos, return_entropy=True)
        old_j = mx.stop_gradient(logprobs) if old is None else old
        capped = mx.array(0.0)
        if tis_cap > 0:  # the sampler's log-probs against the trainer's, per token
            tis, capped_mask = truncated_is_weights_mlx(old_j, lp_s, mask, tis_cap)
            adv = adv[:, None] * tis
            capped = capped_mask.sum()
        out = compute_loss_mlx(
            logprobs, old_j, ref_j, adv, mask, loss_cfg, t.policy_loss, t.kl_coef, t.kl_estimator
        )
        return out.loss * w, old_j, entropy, out.stats, capped

    grad_fn = nn.value_and_grad(model, objective)
    seed_updates(cfg, optimizer)
    sums: dict[str, float] = {}
    grad_norm = 0.0
    skipped = 0
    for epoch in range(t.mu):
        grads = None
        for j, mb in enumerate(micro):
            ids, pos, mask = batches[j]
            weight = agg_share_mlx(t.loss_agg, mask, total_tokens, total_seqs)
            adv = adv_all[mx.array(mb)]
            (_, old_j, entropy, stats, capped), g = grad_fn(
                model, ids, pos, mask, old_lp[j], ref_lp[j], adv, sampled[j], weight
            )
            grads = g if grads is None else tree_map(lambda a, b: a + b, grads, g)
            # evaluate now: a lazy sum would keep every micro-batch's activations alive
            # until the clip, so micro_batch_size would no longer bound memory
            mx.eval(grads, old_j, entropy, stats, capped)
            if tis_cap > 0:
                sums["_tis_capped"] = sums.get("_tis_capped", 0.0) + float(capped)
            n_tok = float(mask.sum())
            if not rollout_logprobs and epoch == 0:
                gap = (mx.abs(old_j - sampled[j]) * mask).sum()
                sums["_lp_diff"] = sums.get("_lp_diff", 0.0) + float(gap)
            for k, v in stats.items():
                w = weight / t.mu if k in LOSS_KEYS else n_tok
                sums[k] = sums.get(k, 0.0) + float(v) * w
            sums["entropy"] = sums.get("entropy", 0.0) + float((entropy * mask).sum())
            sums["_tokens"] = sums.get("_tokens", 0.0) + n_tok
        if grads is None:
            continue
        grads, grad_norm = clip_gradients(grads, t.grad_clip)
        if not math.isfinite(grad_norm):
            if t.nonfinite == "stop":
                raise MathrlError("Non-finite gradient norm; stopping (train.nonfinite = 'stop')")
            skipped += 1
            continue
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)
    return _step_metrics(sums, torch.tensor(grad_norm), skipped, len(keep), bool(micro), t.mu)


def seed_updates(cfg: Config, optimizer: Any) -> None:
    """Seed MLX's generator (LoRA dropout) from the run seed and the optimizer's update
    count, which checkpoints restore: a resumed run draws what the straight one drew."""
    import mlx.core as mx

    from mathrl.run_setup import derive_seed

    step = int(optimizer.state["step"].item()) if "step" in optimizer.state else 0
    mx.random.seed(derive_seed(cfg.seed, step) % 2**32)


def clip_gradients(grads: Any, max_norm: float) -> tuple[Any, float]:
    """torch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when the norm exceeds it."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map

    squares = [mx.sum(g.astype(mx.float32) ** 2) for _, g in tree_flatten(grads)]
    norm = math.sqrt(float(mx.sum(mx.stack(squares)))) if squares else 0.0  # one sync
    if max_norm > 0 and math.isfinite(norm):
        scale = min(1.0, max_norm / (norm + 1e-6))
        if scale < 1.0:
            grads = tree_map(lambda g: g * scale, grads)
    return grads, norm


def _padded(rows: list[list[float]], shape: tuple[int, ...]) -> Any:
    """Sampler log-probs laid out like the batch's completion tokens."""
    import mlx.core as mx

    out = np.zeros(shape, dtype=np.float32)
    for i, lp in enumerate(rows):
        out[i, : len(lp)] = lp
    return mx.array(out)


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
    """Commit an RL checkpoint: the model in mlx-lm's format, optimizer, schedule, state."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    for name, p in tree_flatten(model.parameters()):
        if mx.issubdtype(p.dtype, mx.floating) and not bool(mx.all(mx.isfinite(p))):
            raise MathrlError(
                f"Refusing to checkpoint step {state.step}: model weights are not finite ({name})"
            )
    payload = {
        "scheduler": scheduler.state_dict(),
        "train_state": state.__dict__.copy(),
        "rng": ckpt_mod.rng_state(),
    }
    return save(cfg, run_dir, state.step, model, tokenizer, optimizer, payload, "rl", fingerprint)


def save(
    cfg: Config,
    run_dir: Path,
    step: int,
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    payload: dict[str, Any],
    kind: str,
    fingerprint: str,
) -> Path:
    """checkpoint.save_training_checkpoint plus the MLX optimizer state beside it."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    def optimizer_file(tmp: Path) -> None:
        mx.save_safetensors(str(tmp / OPTIMIZER_FILE), dict(tree_flatten(optimizer.state)))

    return ckpt_mod.save_training_checkpoint(
        run_dir,
        step,
        model,
        tokenizer,
        payload,
        dumps_toml(cfg),
        checkpoint_meta(cfg, fingerprint, {"kind": kind}),
        cfg.checkpoint.keep_last,
        write_extra=optimizer_file,
    )


def load_optimizer(optimizer: Any, ckpt: Path) -> None:
    """Restore an MLX optimizer's state (moments and update count) from a checkpoint."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten

    path = ckpt / OPTIMIZER_FILE
    if not path.is_file():
        raise MathrlError(f"Checkpoint {ckpt} has no {OPTIMIZER_FILE}: not an MLX run's")
    optimizer.state = tree_unflatten(list(mx.load(str(path)).items()))


class MlxSFT:
    """sft.py's TorchSFT on an MLX model: AdamW (sft.lr), summed response-token
    cross-entropy / the batch's response tokens, gradients accumulated over micro-batches."""

    def __init__(self, cfg: Config, model: Any, resume_from: Path | None) -> None:
        import mlx.core as mx
        import mlx.nn as nn

        self.model, self.cfg = model, cfg
        self.optimizer = make_optimizer(cfg, cfg.sft.weight_decay, cfg.sft.lr)
        self.step = 0
        self.grads: Any = None
        if resume_from is not None:
            saved = ckpt_mod.load_trainer_state(resume_from)
            load_optimizer(self.optimizer, resume_from)
            self.step = int(saved["step"])

        def loss(mdl: Any, ids: Any, mask: Any, n_tokens: int) -> Any:
            logits = mdl(ids[:, :-1]).astype(mx.float32)
            nll = nn.losses.cross_entropy(logits, ids[:, 1:], reduction="none")
            return (nll * mask[:, 1:]).sum() / n_tokens

        self.grad_fn = nn.value_and_grad(model, loss)

    def zero_grad(self) -> None:
        self.grads = None
        seed_updates(self.cfg, self.optimizer)

    def accumulate(self, chunk: list[tuple[list[int], int]], n_tokens: int, pad_id: int) -> float:
        import mlx.core as mx
        from mlx.utils import tree_map

        width = max(len(ids) for ids, _ in chunk)
        ids = np.full((len(chunk), width), pad_id, dtype=np.int32)
        mask = np.zeros((len(chunk), width), dtype=np.float32)
        for i, (row, prompt_len) in enumerate(chunk):
            ids[i, : len(row)] = row
            mask[i, prompt_len : len(row)] = 1.0
        value, g = self.grad_fn(self.model, mx.array(ids), mx.array(mask), n_tokens)
        self.grads = g if self.grads is None else tree_map(lambda a, b: a + b, self.grads, g)
        mx.eval(self.grads)
        return float(value) * n_tokens

    def update(self, grad_clip: float) -> float:
        import mlx.core as mx

        if self.grads is None:
            return 0.0
        grads, norm = clip_gradients(self.grads, grad_clip)
        if math.isfinite(norm):
            self.optimizer.update(self.model, grads)
            mx.eval(self.model.parameters(), self.optimizer.state)
        return norm

    def save(
        self, cfg: Config, run_dir: Path, model: Any, tokenizer: Any, step: int, fp: str
    ) -> Path:

        payload = {"step": step, "rng": ckpt_mod.rng_state()}
        return save(cfg, run_dir, step, model, tokenizer, self.optimizer, payload, "sft", fp)
