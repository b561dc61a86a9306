"""MLX forms of losses.py: mlx.core arrays in, the same numbers out.

Every function here is the twin of the torch function of the same name, in the same
order and with the same docstring gist; the entry points a backend calls end in `_mlx`
(compute_loss_mlx, truncated_is_weights_mlx, selective_logprobs_mlx, token_entropy_mlx
for token_entropy_from_logits). Every torch registry entry has an entry of the same name
in the MLX registry below it. Advantages have one form, torch's (advantages.py): they are
computed from a (B,) reward vector once per step, for every backend, before the model's
framework is involved. A new
variant is added to both files: tests/test_mlx_algorithms.py runs every torch registry
name in both forms and fails for one without an MLX twin, and `missing_mlx_forms` lets
the trainer refuse, in one line, a config that names a torch-only variant.

Imported only when backend = "mlx" is used: `mathrl.algorithms` does not import this
module, so the torch path never needs mlx. Config and constants are the torch module's
own, not copies.

As in torch, values at masked positions may be garbage (inf, nan): they are selected
away with `mx.where` before any exp. `.detach()` is `mx.stop_gradient` here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from mathrl.algorithms.losses import (
    AGG_MODES,
    KL_ESTIMATORS,
    LOG_RATIO_CLAMP,
    POLICY_LOSSES,
    PolicyLossConfig,
)
from mathrl.errors import ConfigError
from mathrl.registry import Registry


def _item(x: mx.array) -> float:
    """A real scalar array as a Python float (mlx's stubs also allow complex)."""
    value = x.item()
    assert isinstance(value, int | float), f"expected a real scalar, got {value!r}"
    return float(value)


# ================================================================ losses.py


@dataclass
class MlxLossOutputs:
    """A scalar loss with grad, plus detached diagnostics (torch's LossOutputs).

    `stats` stay lazy mx scalars, so they can leave an `mx.value_and_grad` function as
    auxiliary outputs without an evaluation inside it; `metrics` reads them as floats.
    """

    loss: mx.array
    stats: dict[str, mx.array] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        """The same float keys as torch's LossOutputs.metrics."""
        return {key: _item(value) for key, value in self.stats.items()}


# ---------------------------------------------------------------- masking and aggregation


def _fmask(mask: mx.array, like: mx.array) -> mx.array:
    """The mask as 0/1 in `like`'s dtype."""
    return mask.astype(like.dtype)


def _select(x: mx.array, mask: mx.array) -> mx.array:
    """x at valid positions, 0 elsewhere; unlike x * mask it cannot turn inf padding into NaN."""
    return mx.where(mask.astype(mx.bool_), x, mx.zeros_like(x))


def masked_mean(x: mx.array, mask: mx.array) -> mx.array:
    """Mean of x over valid positions; 0 (not NaN) when nothing is valid."""
    return _select(x, mask).sum() / mx.maximum(_fmask(mask, x).sum(), 1)


MlxAggFn = Callable[[mx.array, mx.array, int | None], mx.array]
MLX_AGG_MODES: Registry[MlxAggFn] = Registry("MLX loss aggregation mode")


@MLX_AGG_MODES.register("token-mean")
def _token_mean(loss_mat: mx.array, mask: mx.array, max_len: int | None) -> mx.array:
    """Every valid token in the batch weighs the same (DAPO)."""
    return masked_mean(loss_mat, mask)


@MLX_AGG_MODES.register("seq-mean-token-mean")
def _seq_mean_token_mean(loss_mat: mx.array, mask: mx.array, max_len: int | None) -> mx.array:
    """Mean over each sequence's tokens, then over sequences that have any (original GRPO)."""
    tokens = _fmask(mask, loss_mat).sum(axis=1)  # (B,)
    seq_loss = _select(loss_mat, mask).sum(axis=1) / mx.maximum(tokens, 1)  # (B,)
    # an empty completion has no mean, so it is left out of the average instead of counting 0
    return seq_loss.sum() / mx.maximum((tokens > 0).astype(loss_mat.dtype).sum(), 1)


@MLX_AGG_MODES.register("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(loss_mat: mx.array, mask: mx.array, max_len: int | None) -> mx.array:
    """Token sum per sequence / constant max_len, mean over all B sequences (Dr. GRPO)."""
    if max_len is None or max_len < 1:
        raise ConfigError("agg_mode 'seq-mean-token-sum-norm' needs max_len >= 1")
    seq_loss = _select(loss_mat, mask).sum(axis=1) / max_len  # (B,)
    return seq_loss.mean() if seq_loss.size else seq_loss.sum()


def agg_loss(loss_mat: mx.array, mask: mx.array, mode: str, max_len: int | None = None) -> mx.array:
    """Reduce a (B, T) token loss to a scalar with one of MLX_AGG_MODES."""
    return MLX_AGG_MODES.get(mode)(loss_mat, mask, max_len)


def agg_share(mode: str, mask: mx.array, total_tokens: int, total_seqs: int) -> float:
    """The weight of one micro-batch's agg_loss in the loss of the whole batch (see torch's)."""
    MLX_AGG_MODES.get(mode)  # a bad name fails here, with the registry's message
    if mode == "token-mean":
        return _item(mask.astype(mx.float32).sum()) / max(1, total_tokens)
    return mask.shape[0] / max(1, total_seqs)


# ---------------------------------------------------------------- policy losses

MlxPolicyLossFn = Callable[
    [mx.array, mx.array, mx.array, mx.array, PolicyLossConfig], MlxLossOutputs
]
MLX_POLICY_LOSSES: Registry[MlxPolicyLossFn] = Registry("MLX policy loss")


def _log_ratio(logprobs: mx.array, old_logprobs: mx.array, mask: mx.array) -> mx.array:
    """(B, T) log(pi / pi_old), 0 at padding, clamped so exp() stays finite."""
    log_ratio = _select(logprobs - old_logprobs, mask)
    return mx.clip(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def _diagnostics(
    log_ratio: mx.array, ratio: mx.array, clipped: mx.array, mask: mx.array
) -> dict[str, mx.array]:
    """clip_frac, approx_kl (k3 of KL(old || new)) and ratio_mean over valid tokens."""
    log_ratio = mx.stop_gradient(log_ratio)
    approx_kl = (mx.exp(log_ratio) - 1.0) - log_ratio  # (B, T), >= 0
    return {
        "clip_frac": masked_mean(clipped.astype(ratio.dtype), mask),
        "approx_kl": masked_mean(approx_kl, mask),
        "ratio_mean": masked_mean(mx.stop_gradient(ratio), mask),
    }


def _token_advantages(advantages: mx.array, dtype: mx.Dtype) -> mx.array:
    """Detached advantages as (B, 1) from one per sequence (B,), or as given per token (B, T)."""
    adv = mx.stop_gradient(advantages.astype(dtype))
    return adv[:, None] if adv.ndim == 1 else adv


def truncated_is_weights_mlx(
    trainer_logprobs: mx.array, sampler_logprobs: mx.array, mask: mx.array, cap: float
) -> tuple[mx.array, mx.array]:
    """Truncated importance sampling (TIS): detached (B, T) weights min(pi_trainer /
    pi_sampler, cap) and where the cap bit (B, T). Padding gets weight 0."""
    log_w = _select(
        mx.stop_gradient(trainer_logprobs) - mx.stop_gradient(sampler_logprobs), mask
    )  # (B, T)
    weights = mx.exp(mx.minimum(log_w, math.log(cap)))
    capped = (log_w > math.log(cap)) & mask.astype(mx.bool_)
    return weights * _fmask(mask, weights), capped


def _clipped_objective(
    ratio: mx.array, advantages: mx.array, mask: mx.array, cfg: PolicyLossConfig
) -> tuple[mx.array, mx.array]:
    """PPO's pessimistic max(pg_loss1, pg_loss2) per token, and where the clip is active."""
    adv = _token_advantages(advantages, ratio.dtype)  # (B, 1) or (B, T)
    pg_loss1 = -adv * ratio  # (B, T)
    clipped_ratio = mx.clip(ratio, 1.0 - cfg.clip_eps, 1.0 + cfg.upper_eps)  # (B, T)
    pg_loss2 = -adv * clipped_ratio  # (B, T)
    # the clip is active (gradient 0) exactly where the clipped term is the larger one
    clipped = (pg_loss2 > pg_loss1) & mask.astype(mx.bool_)  # (B, T)
    return mx.maximum(pg_loss1, pg_loss2), clipped


@MLX_POLICY_LOSSES.register("vanilla")
def vanilla(
    logprobs: mx.array,
    old_logprobs: mx.array,
    advantages: mx.array,
    mask: mx.array,
    cfg: PolicyLossConfig,
) -> MlxLossOutputs:
    """REINFORCE: -A * exp(logp - sg(logp)); value -A, gradient -A * grad(logp), no clip."""
    log_self = _select(logprobs - mx.stop_gradient(logprobs), mask)  # (B, T), value 0
    pg_loss = -_token_advantages(advantages, logprobs.dtype) * mx.exp(log_self)  # (B, T)
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)
    never = mx.zeros(mask.shape, dtype=mx.bool_)
    stats = _diagnostics(log_ratio, mx.exp(log_ratio), never, mask)
    return MlxLossOutputs(agg_loss(pg_loss, mask, cfg.agg_mode, cfg.max_len), stats)


@MLX_POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    logprobs: mx.array,
    old_logprobs: mx.array,
    advantages: mx.array,
    mask: mx.array,
    cfg: PolicyLossConfig,
) -> MlxLossOutputs:
    """PPO clipped surrogate per token, ratio in [1 - clip_eps, 1 + clip_eps_high] (GRPO, DAPO)."""
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)  # (B, T)
    ratio = mx.exp(log_ratio)  # (B, T)
    pg_loss, clipped = _clipped_objective(ratio, advantages, mask, cfg)
    stats = _diagnostics(log_ratio, ratio, clipped, mask)
    return MlxLossOutputs(agg_loss(pg_loss, mask, cfg.agg_mode, cfg.max_len), stats)


@MLX_POLICY_LOSSES.register("gspo")
def gspo(
    logprobs: mx.array,
    old_logprobs: mx.array,
    advantages: mx.array,
    mask: mx.array,
    cfg: PolicyLossConfig,
) -> MlxLossOutputs:
    """GSPO (Zheng et al., 2025): one clipped ratio per sequence, the geometric mean of tokens'.

    Token form s_i,t = sg(s_i) * pi_t / sg(pi_t): value s_i, gradient s_i * grad(logp_t).
    """
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)  # (B, T)
    tokens = mx.maximum(_fmask(mask, log_ratio).sum(axis=1), 1)  # (B,)
    seq_log_ratio = log_ratio.sum(axis=1) / tokens  # (B,) log s_i
    log_token_ratio = (
        mx.stop_gradient(seq_log_ratio)[:, None] + logprobs - mx.stop_gradient(logprobs)
    )  # (B, T)
    log_token_ratio = mx.minimum(_select(log_token_ratio, mask), LOG_RATIO_CLAMP)
    ratio = mx.exp(log_token_ratio)  # (B, T), value s_i
    pg_loss, clipped = _clipped_objective(ratio, advantages, mask, cfg)
    stats = _diagnostics(log_ratio, ratio, clipped, mask)
    return MlxLossOutputs(agg_loss(pg_loss, mask, cfg.agg_mode, cfg.max_len), stats)


@MLX_POLICY_LOSSES.register("cispo")
def cispo(
    logprobs: mx.array,
    old_logprobs: mx.array,
    advantages: mx.array,
    mask: mx.array,
    cfg: PolicyLossConfig,
) -> MlxLossOutputs:
    """CISPO (MiniMax-M1, 2025): -sg(clip(ratio)) * A * logp; value -A * w, gradient
    -A * w * grad(logp), w = clip(ratio, 1 - clip_eps, 1 + clip_eps_high)."""
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)  # (B, T)
    ratio = mx.exp(log_ratio)  # (B, T)
    weight = mx.clip(mx.stop_gradient(ratio), 1.0 - cfg.clip_eps, 1.0 + cfg.upper_eps)
    log_self = _select(logprobs - mx.stop_gradient(logprobs), mask)  # (B, T), value 0
    pg_loss = -_token_advantages(advantages, logprobs.dtype) * weight * mx.exp(log_self)
    clipped = (weight != mx.stop_gradient(ratio)) & mask.astype(mx.bool_)  # (B, T)
    stats = _diagnostics(log_ratio, ratio, clipped, mask)
    return MlxLossOutputs(agg_loss(pg_loss, mask, cfg.agg_mode, cfg.max_len), stats)


@MLX_POLICY_LOSSES.register("sapo")
def sapo(
    logprobs: mx.array,
    old_logprobs: mx.array,
    advantages: mx.array,
    mask: mx.array,
    cfg: PolicyLossConfig,
) -> MlxLossOutputs:
    """SAPO (Gao et al., 2025): -g(ratio) * A, g(r) = sigmoid(tau * (r - 1)) * 4 / tau,
    tau = sapo_tau_pos where A > 0, else sapo_tau_neg."""
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)  # (B, T)
    ratio = mx.exp(log_ratio)  # (B, T)
    adv = _token_advantages(advantages, ratio.dtype)  # (B, 1) or (B, T)
    tau = mx.where(adv > 0, cfg.sapo_tau_pos, cfg.sapo_tau_neg).astype(ratio.dtype)
    gate = mx.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)  # (B, T)
    pg_loss = -adv * gate  # (B, T)
    never = mx.zeros(mask.shape, dtype=mx.bool_)
    stats = _diagnostics(log_ratio, ratio, never, mask)
    return MlxLossOutputs(agg_loss(pg_loss, mask, cfg.agg_mode, cfg.max_len), stats)


def top_entropy_mask_mlx(entropy: mx.array, mask: mx.array, quantile: float) -> mx.array:
    """(B, T) bool: valid tokens in the top `quantile` fraction of valid entropies
    (torch.quantile's linear interpolation, computed on the sorted valid values)."""
    valid = mask.astype(mx.bool_)
    n = int(_item(valid.astype(mx.int32).sum()))
    if quantile >= 1.0 or n == 0:
        return valid
    ent = mx.stop_gradient(entropy).astype(mx.float32)
    # valid entropies first, sorted ascending; padding goes to the end as +inf
    ordered = mx.sort(mx.where(valid, ent, mx.inf).reshape(-1))[:n]
    pos = (1.0 - quantile) * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    threshold = ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
    return valid & (ent >= threshold)


# ---------------------------------------------------------------- KL to the reference

MlxKlFn = Callable[[mx.array, mx.array], mx.array]
MLX_KL_ESTIMATORS: Registry[MlxKlFn] = Registry("MLX KL estimator")


@MLX_KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: mx.array, ref_logprobs: mx.array) -> mx.array:
    """log(pi / pi_ref): unbiased for KL(pi || pi_ref) but can be negative per token."""
    return logprobs - ref_logprobs


@MLX_KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: mx.array, ref_logprobs: mx.array) -> mx.array:
    """exp(d) - d - 1 with d = log(pi_ref / pi): unbiased and >= 0 (Schulman, 2020)."""
    d = mx.clip(ref_logprobs - logprobs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return mx.exp(d) - d - 1.0


def kl_penalty(logprobs: mx.array, ref_logprobs: mx.array, estimator: str = "k3") -> mx.array:
    """(B, T) per-token KL(pi || pi_ref) estimate with one of MLX_KL_ESTIMATORS."""
    return MLX_KL_ESTIMATORS.get(estimator)(logprobs, ref_logprobs)


def compute_loss_mlx(
    logprobs: mx.array,
    old_logprobs: mx.array,
    ref_logprobs: mx.array | None,
    advantages: mx.array,
    mask: mx.array,
    cfg: PolicyLossConfig,
    policy_loss: str = "ppo_clip",
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: mx.array | None = None,
    entropy_coef: float = 0.0,
) -> MlxLossOutputs:
    """Policy loss + kl_coef * KL penalty - entropy_coef * entropy, each aggregated with
    cfg.agg_mode."""
    out = MLX_POLICY_LOSSES.get(policy_loss)(logprobs, old_logprobs, advantages, mask, cfg)
    stats = {**out.stats, "policy_loss": mx.stop_gradient(out.loss)}
    loss = out.loss
    if entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs the token entropies")
        bonus = agg_loss(entropy, mask, cfg.agg_mode, cfg.max_len)
        stats["entropy_bonus"] = mx.stop_gradient(bonus)
        loss = loss - entropy_coef * bonus
    if ref_logprobs is None:
        if kl_coef != 0.0:
            raise ValueError("kl_coef != 0 needs ref_logprobs")
    else:
        # padding is selected away first: a garbage logprob must not leak into the grad
        kl_mat = kl_penalty(_select(logprobs, mask), _select(ref_logprobs, mask), kl_estimator)
        stats["kl"] = masked_mean(mx.stop_gradient(kl_mat), mask)
        if kl_coef != 0.0:
            loss = loss + kl_coef * agg_loss(kl_mat, mask, cfg.agg_mode, cfg.max_len)
    stats["loss"] = mx.stop_gradient(loss)
    return MlxLossOutputs(loss, stats)


# ---------------------------------------------------------------- logit helpers


def _fp32_at_least(x: mx.array) -> mx.array:
    """Upcast bf16/fp16 to fp32 (softmax over 50k+ logits in bf16 loses digits); keep fp64."""
    return x if x.dtype in (mx.float32, mx.float64) else x.astype(mx.float32)


def selective_logprobs_mlx(logits: mx.array, ids: mx.array) -> mx.array:
    """(B, T) log_softmax(logits)[ids] in fp32 at least, as logit[id] - logsumexp(logits).

    No (B, T, V) log-probability array is built; torch's chunk_rows has no MLX twin since
    a lazy graph would not free the chunks before the whole graph is evaluated anyway.
    """
    logits = _fp32_at_least(logits)  # (B, T, V)
    picked = mx.take_along_axis(logits, ids[..., None], axis=-1).squeeze(-1)  # (B, T)
    return picked - mx.logsumexp(logits, axis=-1)  # (B, T)


def token_entropy_mlx(logits: mx.array) -> mx.array:
    """(B, T) entropy -sum p log p of each next-token distribution."""
    logits = _fp32_at_least(logits)  # (B, T, V)
    logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)  # (B, T, V)
    # a -inf logit (banned token) would give 0 * -inf = NaN; the clamp makes it 0 * finite
    safe_logp = mx.maximum(logp, mx.finfo(logp.dtype).min)
    return -(mx.exp(logp) * safe_logp).sum(axis=-1)  # (B, T)


# ================================================================ parity with torch


MLX_TWINS: list[tuple[Registry[Any], Registry[Any]]] = [
    (AGG_MODES, MLX_AGG_MODES),
    (POLICY_LOSSES, MLX_POLICY_LOSSES),
    (KL_ESTIMATORS, MLX_KL_ESTIMATORS),
]
"""Each torch registry and its MLX twin (the trainer checks a config's names with it)."""


def missing_mlx_forms() -> list[str]:
    """Torch registry entries with no MLX twin, e.g. "policy loss 'foo'" (a user's variant)."""
    return [
        f"{torch_form.kind} '{name}'"
        for torch_form, mlx_form in MLX_TWINS
        for name in torch_form.names()
        if name not in mlx_form
    ]
