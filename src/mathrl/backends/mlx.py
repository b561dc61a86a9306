"""The MLX backend: mlx-lm models, one process (Apple silicon; mlx[cpu] on Linux).

Its steps equal torch's (tests/test_mlx_backend.py): the same losses in their MLX form
(algorithms/mlx_forms.py), AdamW with torch's bias correction, torch's gradient clip and
the LR schedules of backends/torch.py. What differs: MLX has no separate prompt pass
(share_prompts is a torch speed-up with the same result), gradients are accumulated as a
tree here instead of in the parameters, and checkpoints hold the model in mlx-lm's format
(model/) and the optimizer's state as safetensors (optimizer.safetensors).

mlx is imported at the top: this module is imported only when backend = "mlx"
(`mathrl.backends.backend_for`), so torch-only processes never load it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mathrl.algorithms.mlx_forms import (
    MLX_TWINS,
    agg_share,
    compute_loss_mlx,
    top_entropy_mask_mlx,
    truncated_is_weights_mlx,
)
from mathrl.backends.base import Backend, Encoded, MicroStats, RLPass
from mathrl.config import REGISTRY_CHOICES, Config
from mathrl.config.validate import get_value
from mathrl.errors import ConfigError, MathrlError
from mathrl.groups import Group
from mathrl.models.mlx_model import (
    base_model,
    completion_arrays,
    completion_logprobs_mlx,
    load_mlx_model,
    save_mlx_model,
)
from mathrl.policy import load_mlx_policy
from mathrl.run_setup import derive_seed

OPTIMIZER_FILE = "optimizer.safetensors"


class Schedule:
    """backends/torch.py's schedules (transformers' constant / cosine with linear warm-up)
    for an MLX optimizer, with the slice of torch's LRScheduler API the loops use."""

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


@dataclass
class RLBatch:
    """A micro-batch's arrays (ids, positions, completion mask) and its fixed log-probs."""

    ids: Any
    pos: Any
    mask: Any
    old: Any | None
    ref: Any | None
    sampled: Any


class MlxBackend(Backend):
    name = "mlx"

    def __init__(self, cfg: Config | None = None) -> None:
        if cfg is not None:
            check_forms(cfg)
        self.grads: Any = None  # accumulated between zero_grad and optimizer_step
        self._grad_fns: dict[tuple[int, str], Any] = {}

    def load_policy(self, cfg: Config, source: str, shard: bool = True) -> tuple[Any, Any]:
        return load_mlx_policy(cfg, source)

    def reference(self, cfg: Config, model: Any, source: str | None = None) -> Any | None:
        """None at kl 0; under LoRA the base weights (never trained); else the run's start
        weights (`source` loaded when resuming, or a copy)."""
        if cfg.train.kl_coef <= 0:
            return None
        if source is not None and getattr(model, "lora_config", None) is None:
            ref, _ = load_mlx_model(source, dtype=cfg.model.dtype)
            ref.freeze()
            return ref
        return base_model(model)

    def optimizer(self, model: Any, lr: float, weight_decay: float) -> Any:
        return make_optimizer(weight_decay, lr)

    def schedule(self, cfg: Config, optimizer: Any) -> Schedule:
        t = cfg.train
        return Schedule(optimizer, t.lr, t.warmup_steps, t.steps, t.schedule)

    def load_optimizer(self, model: Any, optimizer: Any, ckpt: Path, saved: dict[str, Any]) -> None:
        """The moments and update count, from the checkpoint's safetensors file."""
        path = ckpt / OPTIMIZER_FILE
        if not path.is_file():
            raise MathrlError(f"Checkpoint {ckpt} has no {OPTIMIZER_FILE}: not an MLX run's")
        saved = cast(dict[str, Any], mx.load(str(path)))
        optimizer.state = tree_unflatten(list(saved.items()))

    def seed_updates(self, cfg: Config, optimizer: Any) -> None:
        """From the run seed and the optimizer's update count, which checkpoints restore:
        a resumed run draws what the straight one drew."""
        step = int(optimizer.state["step"].item()) if "step" in optimizer.state else 0
        mx.random.seed(derive_seed(cfg.seed, step) % 2**32)

    def zero_grad(self, optimizer: Any) -> None:
        self.grads = None

    def clip_gradients(self, model: Any, max_norm: float) -> float:
        if self.grads is None:
            return 0.0
        self.grads, norm = clip_gradients(self.grads, max_norm)
        return norm

    def optimizer_step(self, model: Any, optimizer: Any) -> None:
        if self.grads is None:  # no micro-batch: an update would still decay the weights
            return
        optimizer.update(model, self.grads)
        mx.eval(model.parameters(), optimizer.state)

    def _accumulate(self, g: Any) -> None:
        self.grads = g if self.grads is None else tree_map(lambda a, b: a + b, self.grads, g)

    def _grad_fn(self, model: Any, kind: str, fn: Callable[..., Any]) -> Any:
        key = (id(model), kind)
        if key not in self._grad_fns:
            self._grad_fns[key] = nn.value_and_grad(model, fn)
        return self._grad_fns[key]

    def rl_batches(
        self,
        cfg: Config,
        model: Any,
        ref: Any | None,
        groups: list[Group],
        micro: list[list[int]],
        pad_id: int,
        rollout_logprobs: bool,
    ) -> list[RLBatch]:
        comps = [c for g in groups for c in g.completions]
        prompt_of = [list(g.prompt_ids) for g in groups for _ in g.completions]
        out = []
        for rows in micro:
            ids, pos, mask = completion_arrays(
                [prompt_of[i] for i in rows], [comps[i].token_ids for i in rows], pad_id
            )
            sampled = _padded([comps[i].logprobs for i in rows], mask.shape)
            old = None
            if rollout_logprobs:
                old = sampled
            elif cfg.train.mu > 1:
                old = mx.stop_gradient(completion_logprobs_mlx(model, ids, pos)[0])
            ref_lp = None
            if ref is not None:
                ref_lp = mx.stop_gradient(completion_logprobs_mlx(ref, ids, pos)[0])
            out.append(RLBatch(ids, pos, mask, old, ref_lp, sampled))
        return out

    def rl_backward(
        self, cfg: Config, model: Any, batch: RLBatch, advantages: Any, p: RLPass
    ) -> MicroStats | None:
        t = cfg.train
        if advantages is None:
            return None
        tis_cap = t.tis_cap if not p.rollout_logprobs else 0.0
        weight = agg_share(t.loss_agg, batch.mask, p.total_tokens, p.total_seqs)
        grad_fn = self._grad_fn(model, "rl", rl_objective)
        adv = mx.array(advantages.numpy())  # (b,)
        (_, old, entropy, loss_stats, capped, masked), g = grad_fn(
            model, batch, adv, weight, cfg, p, tis_cap
        )
        self._accumulate(g)
        # evaluate now: a lazy sum would keep every micro-batch's activations alive until
        # the clip, so micro_batch_size would no longer bound memory
        mx.eval(self.grads, old, entropy, loss_stats, capped, masked)
        stats = MicroStats(weight=weight, tokens=float(batch.mask.sum()))
        if t.top_entropy_quantile < 1.0:
            stats.entropy_masked = float(masked)
        if tis_cap > 0:
            stats.tis_capped = float(capped)
        if not p.rollout_logprobs and p.first:
            stats.lp_diff = float((mx.abs(old - batch.sampled) * batch.mask).sum())
        stats.loss_stats = {k: float(v) for k, v in loss_stats.items()}
        stats.entropy_sum = float((entropy * batch.mask).sum())
        return stats

    def sft_backward(
        self, model: Any, chunk: list[Encoded], n_tokens: int, pad_id: int, weight: float = 1.0
    ) -> float:
        width = max(len(ids) for ids, _ in chunk)
        ids = np.full((len(chunk), width), pad_id, dtype=np.int32)
        mask = np.zeros((len(chunk), width), dtype=np.float32)
        for i, (row, prompt_len) in enumerate(chunk):
            ids[i, : len(row)] = row
            mask[i, prompt_len : len(row)] = 1.0
        grad_fn = self._grad_fn(model, "sft", sft_objective)
        (_, share), g = grad_fn(model, mx.array(ids), mx.array(mask), n_tokens, weight)
        self._accumulate(g)
        mx.eval(self.grads)
        return float(share) * n_tokens

    def checkpoint_state(
        self, model: Any, optimizer: Any | None
    ) -> tuple[dict[str, Any] | None, dict[str, Any], Callable[[Path], None] | None]:
        if optimizer is None:
            return None, {}, None

        def optimizer_file(tmp: Path) -> None:
            mx.save_safetensors(str(tmp / OPTIMIZER_FILE), dict(tree_flatten(optimizer.state)))

        return None, {}, optimizer_file

    def save_model(
        self, model: Any, tokenizer: Any, out: Path, weights: dict[str, Any] | None
    ) -> None:
        """mlx-lm's format (under LoRA: the base and the adapters), tokenizer included."""
        save_mlx_model(model, tokenizer, out)

    def nonfinite_weight(self, model: Any, weights: dict[str, Any] | None) -> str | None:
        for name, p in cast(list[tuple[str, Any]], tree_flatten(model.parameters())):
            if mx.issubdtype(p.dtype, mx.floating) and not bool(mx.all(mx.isfinite(p))):
                return str(name)
        return None


def check_forms(cfg: Config) -> None:
    """A variant registered in torch form only (a user's own loss) stops an MLX run,
    naming the key, before any work."""
    twins = {id(torch_form): mlx_form for torch_form, mlx_form in MLX_TWINS}
    for key, registry in REGISTRY_CHOICES.items():
        mlx_form = twins.get(id(registry))
        name = get_value(cfg, key)
        if mlx_form is not None and name not in mlx_form:
            raise ConfigError(
                f"{key} = {name!r} has no MLX form: register one in its {mlx_form.kind} "
                "registry (mathrl.algorithms.mlx_forms), or use backend = 'torch'"
            )


def rl_objective(
    model: Any, b: RLBatch, adv: Any, weight: float, cfg: Config, p: RLPass, tis_cap: float
) -> tuple[Any, ...]:
    """The micro-batch's loss share (differentiated) and, as side outputs, the old
    log-probs, entropies, loss statistics, the count of capped IS weights and of tokens
    the entropy quantile kept out of the gradient."""
    t = cfg.train
    logprobs, entropy = completion_logprobs_mlx(model, b.ids, b.pos, return_entropy=True)
    old = mx.stop_gradient(logprobs) if b.old is None else b.old
    capped = mx.array(0.0)
    if tis_cap > 0:  # the sampler's log-probs against the trainer's, per token
        tis, capped_mask = truncated_is_weights_mlx(old, b.sampled, b.mask, tis_cap)
        adv = adv[:, None] * tis
        capped = capped_mask.sum()
    masked = mx.array(0.0)
    if t.top_entropy_quantile < 1.0:  # only the high-entropy tokens carry policy gradient
        keep = top_entropy_mask_mlx(entropy, b.mask, t.top_entropy_quantile)  # (b, T)
        adv = (adv[:, None] if adv.ndim == 1 else adv) * keep.astype(adv.dtype)
        masked = (b.mask.astype(mx.bool_) & ~keep).astype(mx.float32).sum()
    out = compute_loss_mlx(
        logprobs,
        old,
        b.ref,
        adv,
        b.mask,
        p.loss_cfg,
        t.policy_loss,
        t.kl_coef,
        t.kl_estimator,
        entropy,
        t.entropy_coef,
    )
    return out.loss * weight, old, mx.stop_gradient(entropy), out.stats, capped, masked


def sft_objective(model: Any, ids: Any, mask: Any, n_tokens: int, weight: float) -> tuple[Any, Any]:
    """weight x the summed response-token cross-entropy / n_tokens (differentiated), and
    the unweighted share."""
    logits = model(ids[:, :-1]).astype(mx.float32)
    nll = nn.losses.cross_entropy(logits, ids[:, 1:], reduction="none")
    share = (nll * mask[:, 1:]).sum() / n_tokens
    return share * weight, share


def make_optimizer(weight_decay: float, lr: float) -> Any:
    """AdamW as torch's: betas (0.9, 0.999), eps 1e-8, bias correction, decoupled decay."""
    return optim.AdamW(learning_rate=lr, weight_decay=weight_decay, bias_correction=True)


def clip_gradients(grads: Any, max_norm: float) -> tuple[Any, float]:
    """torch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when the norm exceeds it."""
    flat = cast(list[tuple[str, Any]], tree_flatten(grads))
    squares = [mx.sum(g.astype(mx.float32) ** 2) for _, g in flat]
    norm = math.sqrt(float(mx.sum(mx.stack(squares)))) if squares else 0.0  # one sync
    if max_norm > 0 and math.isfinite(norm):
        scale = min(1.0, max_norm / (norm + 1e-6))
        if scale < 1.0:
            grads = tree_map(lambda g: g * scale, grads)
    return grads, norm


def _padded(rows: list[list[float]], shape: tuple[int, ...]) -> Any:
    """Sampler log-probs laid out like the batch's completion tokens."""
    out = np.zeros(shape, dtype=np.float32)
    for i, lp in enumerate(rows):
        out[i, : len(lp)] = lp
    return mx.array(out)
