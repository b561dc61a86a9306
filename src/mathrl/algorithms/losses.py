"""Token-level losses: aggregation, policy-gradient losses, KL to a reference, logit helpers.

Shapes: B completions, T completion tokens (right-padded), V vocabulary. `mask` is the
completion mask (B, T), bool or 0/1 float. Values at masked positions may be garbage
(padding): every function selects them away with `torch.where` *before* any exp, so they
change neither the loss nor the gradient of real tokens.

Metric keys in `LossOutputs.metrics` are bare (`clip_frac`, `kl`, ...); the trainer adds
the `loss/` prefix when logging.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mathrl.errors import ConfigError
from mathrl.registry import Registry

# exp() of a log-ratio beyond this overflows or dominates the batch; verl uses the same bound
LOG_RATIO_CLAMP = 20.0


@dataclass
class PolicyLossConfig:
    """Options shared by all policy losses."""

    clip_eps: float = 0.2
    """Lower clip: the ratio is kept >= 1 - clip_eps (and <= 1 + clip_eps unless clip_eps_high)."""
    clip_eps_high: float | None = None
    """Upper clip (DAPO clip-higher); None means the same as clip_eps."""
    agg_mode: str = "token-mean"
    """How (B, T) token losses become a scalar: a name in AGG_MODES."""
    max_len: int | None = None
    """Constant divisor of seq-mean-token-sum-norm (Dr. GRPO): the max completion length."""
    sapo_tau_pos: float = 1.0
    """sapo: gate temperature for positive advantages."""
    sapo_tau_neg: float = 1.05
    """sapo: gate temperature for negative advantages."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_eps < 1.0:
            raise ConfigError(f"clip_eps must be in [0, 1), got {self.clip_eps}")
        if self.clip_eps_high is not None and self.clip_eps_high < 0.0:
            raise ConfigError(f"clip_eps_high must be >= 0, got {self.clip_eps_high}")
        if self.sapo_tau_pos <= 0 or self.sapo_tau_neg <= 0:
            raise ConfigError(
                f"sapo temperatures must be > 0, got {self.sapo_tau_pos}, {self.sapo_tau_neg}"
            )
        AGG_MODES.get(self.agg_mode)  # fail at config time, with a suggestion

    @property
    def upper_eps(self) -> float:
        """The effective upper clip."""
        return self.clip_eps if self.clip_eps_high is None else self.clip_eps_high


@dataclass
class LossOutputs:
    """A scalar loss with grad, plus detached float diagnostics."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- masking and aggregation


def _fmask(mask: Tensor, like: Tensor) -> Tensor:
    """The mask as 0/1 in `like`'s dtype."""
    return mask.to(dtype=like.dtype)


def _select(x: Tensor, mask: Tensor) -> Tensor:
    """x at valid positions, 0 elsewhere; unlike x * mask it cannot turn inf padding into NaN."""
    return torch.where(mask.bool(), x, torch.zeros_like(x))


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over valid positions; 0 (not NaN) when nothing is valid."""
    return _select(x, mask).sum() / mask.sum().clamp(min=1).to(x.dtype)


AggFn = Callable[[Tensor, Tensor, int | None], Tensor]
AGG_MODES: Registry[AggFn] = Registry("loss aggregation mode")


@AGG_MODES.register("token-mean")
def _token_mean(loss_mat: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    """Every valid token in the batch weighs the same (DAPO)."""
    return masked_mean(loss_mat, mask)


@AGG_MODES.register("seq-mean-token-mean")
def _seq_mean_token_mean(loss_mat: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    """Mean over each sequence's tokens, then over sequences that have any (original GRPO)."""
    tokens = _fmask(mask, loss_mat).sum(dim=1)  # (B,)
    seq_loss = _select(loss_mat, mask).sum(dim=1) / tokens.clamp(min=1)  # (B,)
    # an empty completion has no mean, so it is left out of the average instead of counting 0
    return seq_loss.sum() / (tokens > 0).sum().clamp(min=1).to(loss_mat.dtype)


@AGG_MODES.register("seq-mean-token-sum-norm")
def _seq_mean_token_sum_norm(loss_mat: Tensor, mask: Tensor, max_len: int | None) -> Tensor:
    """Token sum per sequence / constant max_len, mean over all B sequences (Dr. GRPO)."""
    if max_len is None or max_len < 1:
        raise ConfigError("agg_mode 'seq-mean-token-sum-norm' needs max_len >= 1")
    # a constant divisor removes GRPO's length bias; empty sequences simply add 0
    seq_loss = _select(loss_mat, mask).sum(dim=1) / max_len  # (B,)
    return seq_loss.mean() if seq_loss.numel() else seq_loss.sum()


def agg_loss(loss_mat: Tensor, mask: Tensor, mode: str, max_len: int | None = None) -> Tensor:
    """Reduce a (B, T) token loss to a scalar with one of AGG_MODES."""
    return AGG_MODES.get(mode)(loss_mat, mask, max_len)


def agg_share(mode: str, mask: Tensor, total_tokens: int, total_seqs: int) -> float:
    """The weight of one micro-batch's agg_loss in the loss of the whole batch.

    token-mean divides by every token of the batch, the seq-mean modes by every sequence,
    so sum(share * agg_loss(micro-batch)) equals agg_loss(whole batch) exactly; the totals
    may count rows that are not in any micro-batch (their loss is zero).
    """
    AGG_MODES.get(mode)  # a bad name fails here, with the registry's message
    if mode == "token-mean":
        return float(mask.sum().item()) / max(1, total_tokens)
    return mask.shape[0] / max(1, total_seqs)


# ---------------------------------------------------------------- policy losses

PolicyLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, PolicyLossConfig], LossOutputs]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss")
register_policy_loss = POLICY_LOSSES.register


def _log_ratio(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor) -> Tensor:
    """(B, T) log(pi / pi_old), 0 at padding, clamped so exp() stays finite."""
    log_ratio = _select(logprobs - old_logprobs, mask)
    return log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def _diagnostics(
    log_ratio: Tensor, ratio: Tensor, clipped: Tensor, mask: Tensor
) -> dict[str, float]:
    """clip_frac, approx_kl (k3 of KL(old || new)) and ratio_mean over valid tokens."""
    with torch.no_grad():
        log_ratio = log_ratio.detach()
        approx_kl = (torch.exp(log_ratio) - 1.0) - log_ratio  # (B, T), >= 0
        return {
            "clip_frac": masked_mean(clipped.to(ratio.dtype), mask).item(),
            "approx_kl": masked_mean(approx_kl, mask).item(),
            "ratio_mean": masked_mean(ratio.detach(), mask).item(),
        }


def _token_advantages(advantages: Tensor, dtype: torch.dtype) -> Tensor:
    """Detached advantages as (B, 1) from one per sequence (B,), or as given per token (B, T)
    (e.g. scaled by truncated importance weights)."""
    adv = advantages.detach().to(dtype)
    return adv[:, None] if adv.dim() == 1 else adv


def truncated_is_weights(
    trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, cap: float
) -> tuple[Tensor, Tensor]:
    """Truncated importance sampling (TIS): per-token weights min(pi_trainer / pi_sampler, cap)
    (B, T), detached, for samples drawn by a sampler that is not the trainer (another
    precision, another engine), and where the cap bit (B, T). Padding gets weight 0."""
    log_w = _select(trainer_logprobs.detach() - sampler_logprobs.detach(), mask)  # (B, T)
    weights = torch.exp(log_w.clamp(max=math.log(cap)))
    capped = (log_w > math.log(cap)) & mask.bool()
    return weights * _fmask(mask, weights), capped


def _clipped_objective(
    ratio: Tensor, advantages: Tensor, mask: Tensor, cfg: PolicyLossConfig
) -> tuple[Tensor, Tensor]:
    """PPO's pessimistic max(pg_loss1, pg_loss2) per token, and where the clip is active."""
    adv = _token_advantages(advantages, ratio.dtype)  # (B, 1) or (B, T)
    pg_loss1 = -adv * ratio  # (B, T)
    clipped_ratio = ratio.clamp(1.0 - cfg.clip_eps, 1.0 + cfg.upper_eps)  # (B, T)
    pg_loss2 = -adv * clipped_ratio  # (B, T)
    # the clip is active (gradient 0) exactly where the clipped term is the larger one
    clipped = (pg_loss2 > pg_loss1) & mask.bool()  # (B, T)
    return torch.maximum(pg_loss1, pg_loss2), clipped


@register_policy_loss("vanilla")
def vanilla(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig,
) -> LossOutputs:
    """REINFORCE: -A * exp(logp - sg(logp)); value -A, gradient -A * grad(logp), no clip.

    Written with a ratio to itself (not -A * logp) so the loss value equals ppo_clip's
    on-policy value and the logged numbers are comparable. old_logprobs only feed the
    diagnostics: this loss is for on-policy updates (one step per rollout batch).
    """
    log_self = _select(logprobs - logprobs.detach(), mask)  # (B, T), value 0
    pg_loss = -_token_advantages(advantages, logprobs.dtype) * torch.exp(log_self)  # (B, T)
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)
    never = torch.zeros_like(mask, dtype=torch.bool)
    metrics = _diagnostics(log_ratio, torch.exp(log_ratio), never, mask)
    return LossOutputs(agg_loss(pg_loss, mask, cfg.agg_mode, cfg.max_len), metrics)


@register_policy_loss("ppo_clip")
def ppo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig,
) -> LossOutputs:
    """PPO clipped surrogate per token, ratio in [1 - clip_eps, 1 + clip_eps_high] (GRPO, DAPO)."""
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    pg_loss, clipped = _clipped_objective(ratio, advantages, mask, cfg)
    metrics = _diagnostics(log_ratio, ratio, clipped, mask)
    return LossOutputs(agg_loss(pg_loss, mask, cfg.agg_mode, cfg.max_len), metrics)


@register_policy_loss("gspo")
def gspo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig,
) -> LossOutputs:
    """GSPO (Zheng et al., 2025): one clipped ratio per sequence, the geometric mean of tokens'.

    Token form s_i,t = sg(s_i) * pi_t / sg(pi_t): its value is s_i on every token, its
    gradient s_i * grad(logp_t). With agg_mode 'seq-mean-token-mean' (the paper's choice)
    this is exactly the gradient of s_i; other modes reweight sequences by length. The
    paper clips tightly, e.g. clip_eps=3e-4, clip_eps_high=4e-4.
    """
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)  # (B, T)
    tokens = _fmask(mask, log_ratio).sum(dim=1).clamp(min=1)  # (B,)
    seq_log_ratio = log_ratio.sum(dim=1) / tokens  # (B,) log s_i
    log_token_ratio = seq_log_ratio.detach()[:, None] + logprobs - logprobs.detach()  # (B, T)
    log_token_ratio = _select(log_token_ratio, mask).clamp(max=LOG_RATIO_CLAMP)
    ratio = torch.exp(log_token_ratio)  # (B, T), value s_i
    pg_loss, clipped = _clipped_objective(ratio, advantages, mask, cfg)
    metrics = _diagnostics(log_ratio, ratio, clipped, mask)
    return LossOutputs(agg_loss(pg_loss, mask, cfg.agg_mode, cfg.max_len), metrics)


@register_policy_loss("cispo")
def cispo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig,
) -> LossOutputs:
    """CISPO (MiniMax-M1, 2025): -sg(clip(ratio)) * A * logp, a REINFORCE term weighted by
    the clipped, stop-gradient importance ratio, so no token loses its gradient to the clip.

    Written as -A * sg(w) * exp(logp - sg(logp)): value -A * w, gradient -A * w * grad(logp).
    w = clamp(ratio, 1 - clip_eps, 1 + clip_eps_high); the paper bounds it above only, with
    a large upper bound (e.g. clip_eps_high = 4: w <= 5).
    """
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    weight = ratio.detach().clamp(1.0 - cfg.clip_eps, 1.0 + cfg.upper_eps)  # (B, T)
    log_self = _select(logprobs - logprobs.detach(), mask)  # (B, T), value 0
    pg_loss = -_token_advantages(advantages, logprobs.dtype) * weight * torch.exp(log_self)
    clipped = (weight != ratio.detach()) & mask.bool()  # (B, T): where the clamp bit
    metrics = _diagnostics(log_ratio, ratio, clipped, mask)
    return LossOutputs(agg_loss(pg_loss, mask, cfg.agg_mode, cfg.max_len), metrics)


@register_policy_loss("sapo")
def sapo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig,
) -> LossOutputs:
    """SAPO (Gao et al., 2025): a soft gate instead of the hard clip, -g(ratio) * A with
    g(r) = sigmoid(tau * (r - 1)) * 4 / tau, tau = sapo_tau_pos where A > 0, else
    sapo_tau_neg (TRL's and verl's form). g'(1) = 1: on-policy the gradient is
    REINFORCE's; far from 1 it fades smoothly. The paper uses tau_pos 1.0, tau_neg 1.05.
    """
    log_ratio = _log_ratio(logprobs, old_logprobs, mask)  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    adv = _token_advantages(advantages, ratio.dtype)  # (B, 1) or (B, T)
    tau = torch.where(adv > 0, cfg.sapo_tau_pos, cfg.sapo_tau_neg)  # (B, 1) or (B, T)
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)  # (B, T)
    pg_loss = -adv * gate  # (B, T)
    never = torch.zeros_like(mask, dtype=torch.bool)
    metrics = _diagnostics(log_ratio, ratio, never, mask)
    return LossOutputs(agg_loss(pg_loss, mask, cfg.agg_mode, cfg.max_len), metrics)


def top_entropy_mask(entropy: Tensor, mask: Tensor, quantile: float) -> Tensor:
    """(B, T) bool: the valid tokens whose entropy is in the top `quantile` fraction of the
    valid tokens' ("Beyond the 80/20 Rule", Wang et al., 2025; TRL's top_entropy_quantile).

    The threshold is the (1 - quantile) quantile (linear interpolation, torch.quantile's)
    of the valid entropies; quantile 1 keeps every valid token.
    """
    valid = mask.bool()
    if quantile >= 1.0 or not bool(valid.any()):
        return valid
    threshold = torch.quantile(entropy.detach()[valid].float(), 1.0 - quantile)
    return valid & (entropy.detach() >= threshold)


# ---------------------------------------------------------------- KL to the reference

KlFn = Callable[[Tensor, Tensor], Tensor]
KL_ESTIMATORS: Registry[KlFn] = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """log(pi / pi_ref): unbiased for KL(pi || pi_ref) but can be negative per token."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """exp(d) - d - 1 with d = log(pi_ref / pi): unbiased and >= 0 (Schulman, 2020)."""
    # exp(d) overflows for |d| >~ 88 in fp32; the clamp keeps it finite (grad 0 beyond it)
    d = (ref_logprobs - logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1.0


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k3") -> Tensor:
    """(B, T) per-token KL(pi || pi_ref) estimate with one of KL_ESTIMATORS."""
    return KL_ESTIMATORS.get(estimator)(logprobs, ref_logprobs)


def compute_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig,
    policy_loss: str = "ppo_clip",
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
) -> LossOutputs:
    """Policy loss + kl_coef * KL penalty - entropy_coef * entropy, each aggregated with
    cfg.agg_mode; `entropy` (B, T) must carry its graph when entropy_coef != 0."""
    out = POLICY_LOSSES.get(policy_loss)(logprobs, old_logprobs, advantages, mask, cfg)
    metrics = {**out.metrics, "policy_loss": out.loss.item()}
    loss = out.loss
    if entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("entropy_coef != 0 needs the token entropies")
        bonus = agg_loss(entropy, mask, cfg.agg_mode, cfg.max_len)
        metrics["entropy_bonus"] = bonus.item()
        loss = loss - entropy_coef * bonus
    if ref_logprobs is None:
        if kl_coef != 0.0:
            raise ValueError("kl_coef != 0 needs ref_logprobs")
    else:
        # padding is selected away first: a garbage logprob must not leak into the grad
        kl_mat = kl_penalty(_select(logprobs, mask), _select(ref_logprobs, mask), kl_estimator)
        metrics["kl"] = masked_mean(kl_mat.detach(), mask).item()
        if kl_coef != 0.0:
            loss = loss + kl_coef * agg_loss(kl_mat, mask, cfg.agg_mode, cfg.max_len)
    metrics["loss"] = loss.item()
    return LossOutputs(loss, metrics)


# ---------------------------------------------------------------- logit helpers


def _row_chunks(n_rows: int, chunk_rows: int) -> list[slice]:
    """Slices covering range(n_rows) in steps of chunk_rows."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    return [slice(i, i + chunk_rows) for i in range(0, n_rows, chunk_rows)]


def _fp32_at_least(x: Tensor) -> Tensor:
    """Upcast bf16/fp16 to fp32 (softmax over 50k+ logits in bf16 loses digits); keep fp64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def selective_logprobs(logits: Tensor, ids: Tensor, chunk_rows: int = 1) -> Tensor:
    """(B, T) log_softmax(logits)[ids], bitwise equal to the naive fp32 version.

    Only chunk_rows rows of (T, V) fp32 log-probabilities exist at a time, which is the
    peak saved when computing old/ref logprobs under no_grad. With grad, each chunk's
    log-softmax is still kept for backward.
    """
    out = [
        torch.log_softmax(_fp32_at_least(logits[rows]), dim=-1)  # (b, T, V)
        .gather(-1, ids[rows].unsqueeze(-1))
        .squeeze(-1)  # (b, T)
        for rows in _row_chunks(logits.shape[0], chunk_rows)
    ]
    if not out:
        return logits.new_zeros(ids.shape, dtype=_fp32_at_least(logits).dtype)
    return torch.cat(out, dim=0)  # (B, T)


def token_entropy_from_logits(logits: Tensor, chunk_rows: int = 1) -> Tensor:
    """(B, T) entropy -sum p log p of each next-token distribution, chunked like above."""
    out = []
    for rows in _row_chunks(logits.shape[0], chunk_rows):
        logp = torch.log_softmax(_fp32_at_least(logits[rows]), dim=-1)  # (b, T, V)
        # a -inf logit (banned token) would give 0 * -inf = NaN; the clamp makes it 0 * finite
        safe_logp = logp.clamp(min=torch.finfo(logp.dtype).min)
        out.append(-(logp.exp() * safe_logp).sum(dim=-1))  # (b, T)
    if not out:
        return logits.new_zeros(logits.shape[:2], dtype=_fp32_at_least(logits).dtype)
    return torch.cat(out, dim=0)  # (B, T)
