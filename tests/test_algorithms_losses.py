"""Losses against hand-computed numbers; gradients where the clip says they must vanish."""

from __future__ import annotations

import math

import pytest
import torch

from mathrl.algorithms import (
    AGG_MODES,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    LossOutputs,
    PolicyLossConfig,
    agg_loss,
    compute_loss,
    gspo,
    kl_penalty,
    selective_logprobs,
    token_entropy_from_logits,
    top_entropy_mask,
)
from mathrl.errors import ConfigError

D = torch.float64
LOG2 = math.log(2)

# ---------------------------------------------------------------- agg_loss

LOSS_MAT = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=D)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    ("mode", "max_len", "expected"),
    [
        ("token-mean", None, 7 / 3),  # (1 + 2 + 4) / 3 valid tokens
        ("seq-mean-token-mean", None, 2.75),  # mean(1.5, 4)
        ("seq-mean-token-sum-norm", 4, 0.875),  # mean(3 / 4, 4 / 4)
    ],
)
def test_agg_loss_hand_computed(mode: str, max_len: int | None, expected: float) -> None:
    assert agg_loss(LOSS_MAT, MASK, mode, max_len).item() == pytest.approx(expected)
    assert agg_loss(LOSS_MAT, MASK.double(), mode, max_len).item() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", 1.5),  # (1 + 2) / 2
        ("seq-mean-token-mean", 1.5),  # the empty row has no mean and is left out
        ("seq-mean-token-sum-norm", 0.5),  # mean(3 / 3, 0)
    ],
)
def test_agg_loss_empty_row(mode: str, expected: float) -> None:
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    loss_mat = LOSS_MAT.clone()
    loss_mat[1] = float("inf")  # whatever sits under the mask must not leak
    assert agg_loss(loss_mat, mask, mode, max_len=3).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", AGG_MODES.names())
def test_agg_loss_all_masked_is_zero(mode: str) -> None:
    loss_mat = LOSS_MAT.clone().requires_grad_()
    loss = agg_loss(loss_mat, torch.zeros(2, 3, dtype=torch.bool), mode, max_len=3)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(loss_mat.grad, torch.zeros(2, 3, dtype=D))


def test_agg_loss_errors() -> None:
    with pytest.raises(ConfigError, match="needs max_len"):
        agg_loss(LOSS_MAT, MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ConfigError, match="did you mean 'token-mean'"):
        agg_loss(LOSS_MAT, MASK, "token_mean")
    with pytest.raises(ConfigError, match="did you mean 'seq-mean-token-mean'"):
        PolicyLossConfig(agg_mode="seq-mean-tok-mean")


# ---------------------------------------------------------------- ppo_clip


def _run(
    name: str,
    ratios: list[list[float]],
    advantages: list[float],
    mask: list[list[bool]] | None = None,
    cfg: PolicyLossConfig | None = None,
) -> tuple[LossOutputs, torch.Tensor]:
    """Run a policy loss with old_logprobs = 0, so ratio = exp(logprobs); return out, grad."""
    logprobs = torch.tensor(ratios, dtype=D).log().requires_grad_()
    mask_t = torch.ones_like(logprobs, dtype=torch.bool) if mask is None else torch.tensor(mask)
    old_logprobs, adv = torch.zeros_like(logprobs), torch.tensor(advantages, dtype=D)
    out = POLICY_LOSSES.get(name)(logprobs, old_logprobs, adv, mask_t, cfg or PolicyLossConfig())
    out.loss.backward()
    return out, logprobs.grad


@pytest.mark.parametrize(
    ("adv", "ratio", "loss", "clipped"),
    [
        # loss = max(-A r, -A clip(r, 0.8, 1.2)); grad wrt logp = -A r unless clipped
        (1.0, 1.1, -1.1, False),  # inside
        (1.0, 1.5, -1.2, True),  # A > 0, above 1 + eps: clipped, no grad
        (1.0, 0.5, -0.5, False),  # A > 0, below 1 - eps: pessimistic term is unclipped
        (-1.0, 0.5, 0.8, True),  # A < 0, below 1 - eps: clipped, no grad
        (-1.0, 1.5, 1.5, False),  # A < 0, above 1 + eps: unclipped
        (2.0, 0.9, -1.8, False),
        (0.0, 3.0, 0.0, False),  # no advantage, no loss, no clipping
    ],
)
def test_ppo_clip_single_token(adv: float, ratio: float, loss: float, clipped: bool) -> None:
    out, grad = _run("ppo_clip", [[ratio]], [adv])
    assert out.loss.item() == pytest.approx(loss)
    assert out.metrics["clip_frac"] == float(clipped)
    expected_grad = 0.0 if clipped else -adv * ratio
    if clipped:
        assert torch.equal(grad, torch.zeros(1, 1, dtype=D))  # exactly zero
    else:
        assert grad.item() == pytest.approx(expected_grad)
    assert out.metrics["ratio_mean"] == pytest.approx(ratio)
    assert out.metrics["approx_kl"] == pytest.approx((ratio - 1) - math.log(ratio))


def test_ppo_clip_batch_token_mean() -> None:
    out, grad = _run(
        "ppo_clip",
        [[1.1, 1.5, 0.5], [0.5, 1.5, 1.0]],
        [1.0, -1.0],
        mask=[[True, True, True], [True, True, False]],
    )
    # token losses: row 0 [-1.1, -1.2, -0.5], row 1 [0.8, 1.5]: sum -0.5 over 5 tokens
    assert out.loss.item() == pytest.approx(-0.1)
    assert out.metrics["clip_frac"] == pytest.approx(2 / 5)
    expected = torch.tensor([[-1.1, 0.0, -0.5], [0.0, 1.5, 0.0]], dtype=D) / 5
    torch.testing.assert_close(grad, expected)
    assert grad[0, 1] == 0 and grad[1, 0] == 0 and grad[1, 2] == 0


@pytest.mark.parametrize(
    ("adv", "ratio", "loss", "clipped"),
    [
        (1.0, 1.25, -1.25, False),  # inside [0.8, 1.28], clipped by symmetric 0.2
        (1.0, 1.3, -1.28, True),
        (-1.0, 0.75, 0.8, True),  # the lower bound stays 1 - clip_eps
    ],
)
def test_clip_higher(adv: float, ratio: float, loss: float, clipped: bool) -> None:
    cfg = PolicyLossConfig(clip_eps=0.2, clip_eps_high=0.28)
    out, grad = _run("ppo_clip", [[ratio]], [adv], cfg=cfg)
    assert out.loss.item() == pytest.approx(loss)
    assert out.metrics["clip_frac"] == float(clipped)
    assert (grad.item() == 0.0) == clipped


@pytest.mark.parametrize("mode", AGG_MODES.names())
def test_vanilla_equals_ppo_on_policy(mode: str) -> None:
    gen = torch.Generator().manual_seed(0)
    base = -torch.rand(4, 6, generator=gen, dtype=D) * 3  # (B, T)
    advantages = torch.randn(4, generator=gen, dtype=D)
    mask = torch.rand(4, 6, generator=gen) > 0.3
    cfg = PolicyLossConfig(agg_mode=mode, max_len=6)
    results = []
    for name in ("vanilla", "ppo_clip"):
        logprobs = base.clone().requires_grad_()
        out = POLICY_LOSSES.get(name)(logprobs, base.clone(), advantages, mask, cfg)
        out.loss.backward()
        results.append((out.loss, logprobs.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_vanilla_ignores_old_logprobs_in_the_gradient() -> None:
    # ratio 3 would be clipped by PPO; REINFORCE grad is -A / n_tokens whatever old says
    out, grad = _run("vanilla", [[3.0, 0.1]], [2.0])
    torch.testing.assert_close(grad, torch.tensor([[-1.0, -1.0]], dtype=D))
    assert out.loss.item() == -2.0 and out.metrics["clip_frac"] == 0.0
    assert out.metrics["ratio_mean"] == pytest.approx(1.55)


# ---------------------------------------------------------------- gspo


def test_gspo_hand_computed() -> None:
    # row 0 log-ratios [0.1, 0.2, 0.3] -> s0 = e^0.2 = 1.2214 > 1.1: clipped, no grad
    # row 1 log-ratios [0.0, -0.1] (3rd masked) -> s1 = e^-0.05 = 0.9512, inside [0.9, 1.1]
    log_ratios = torch.tensor([[0.1, 0.2, 0.3], [0.0, -0.1, 7.0]], dtype=D)
    mask = [[True, True, True], [True, True, False]]
    cfg = PolicyLossConfig(clip_eps=0.1, agg_mode="seq-mean-token-mean")
    out, grad = _run("gspo", log_ratios.exp().tolist(), [1.0, 1.0], mask=mask, cfg=cfg)
    s0, s1 = math.exp(0.2), math.exp(-0.05)
    assert out.loss.item() == pytest.approx((-1.1 - s1) / 2)
    assert torch.equal(grad[0], torch.zeros(3, dtype=D))
    # d/dlogp_t of -A s_{1,t}, times 1/2 tokens, times 1/2 sequences
    torch.testing.assert_close(grad[1], torch.tensor([-s1 / 4, -s1 / 4, 0.0], dtype=D))
    assert out.metrics["clip_frac"] == pytest.approx(3 / 5)
    assert out.metrics["ratio_mean"] == pytest.approx((3 * s0 + 2 * s1) / 5)


def test_gspo_gradient_is_the_sequence_ratio_gradient() -> None:
    # inside the clip, GSPO's token form must give grad of -mean_i(A_i * s_i)
    gen = torch.Generator().manual_seed(1)
    old = -torch.rand(3, 5, generator=gen, dtype=D)
    logprobs = (old + 1e-3 * torch.randn(3, 5, generator=gen, dtype=D)).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    advantages = torch.tensor([1.0, -0.5, 2.0], dtype=D)
    cfg = PolicyLossConfig(clip_eps=0.5, agg_mode="seq-mean-token-mean")
    gspo(logprobs, old, advantages, mask, cfg).loss.backward()
    ref = logprobs.detach().clone().requires_grad_()
    seq_ratio = (((ref - old) * mask).sum(1) / mask.sum(1)).exp()  # (B,)
    (-(advantages * seq_ratio).mean()).backward()
    torch.testing.assert_close(logprobs.grad, ref.grad)


@pytest.mark.parametrize(
    ("adv", "mean_log_ratio", "clipped"),
    [
        (1.0, 3.5e-4, False),  # below 1 + 4e-4
        (1.0, 5e-4, True),
        (-1.0, -2e-4, False),  # above 1 - 3e-4
        (-1.0, -5e-4, True),
    ],
)
def test_gspo_paper_clip_range(adv: float, mean_log_ratio: float, clipped: bool) -> None:
    cfg = PolicyLossConfig(clip_eps=3e-4, clip_eps_high=4e-4, agg_mode="seq-mean-token-mean")
    log_ratios = torch.tensor([[mean_log_ratio - 1e-4, mean_log_ratio + 1e-4]], dtype=D)
    out, grad = _run("gspo", log_ratios.exp().tolist(), [adv], cfg=cfg)
    assert out.metrics["clip_frac"] == float(clipped)
    if clipped:
        assert torch.equal(grad, torch.zeros(1, 2, dtype=D))
    else:
        s = math.exp(mean_log_ratio)
        torch.testing.assert_close(grad, torch.full((1, 2), -adv * s / 2, dtype=D))


# ---------------------------------------------------------------- padding invariance


@pytest.mark.parametrize("mode", AGG_MODES.names())
@pytest.mark.parametrize("name", POLICY_LOSSES.names())
@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_padding_invariance(name: str, mode: str, kl_coef: float) -> None:
    gen = torch.Generator().manual_seed(2)
    old = -torch.rand(3, 4, generator=gen, dtype=D) * 2
    base = old + 0.3 * torch.randn(3, 4, generator=gen, dtype=D)
    ref = old + 0.3 * torch.randn(3, 4, generator=gen, dtype=D)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    advantages = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    cfg = PolicyLossConfig(agg_mode=mode, max_len=8)

    def run(lp, old_lp, ref_lp, m):
        lp = lp.clone().requires_grad_()
        out = compute_loss(lp, old_lp, ref_lp, advantages, m, cfg, name, kl_coef, "k3")
        out.loss.backward()
        return out, lp.grad

    out, grad = run(base, old, ref, mask)
    garbage = torch.tensor([[1e4, -1e4, 3e3]], dtype=D).expand(3, 3)  # (B, 3) extra columns
    padded_mask = torch.cat([mask, torch.zeros(3, 3, dtype=torch.bool)], 1)  # (B, 7)
    # garbage also under the existing in-row padding
    bad_base, bad_old = base.masked_fill(~mask, 5e3), old.masked_fill(~mask, -5e3)
    out_p, grad_p = run(
        torch.cat([bad_base, garbage], 1),
        torch.cat([bad_old, -garbage], 1),
        torch.cat([ref, garbage * 2], 1),
        padded_mask,
    )
    torch.testing.assert_close(out_p.loss, out.loss)
    torch.testing.assert_close(grad_p[:, :4][mask], grad[mask])
    assert not grad_p[~padded_mask].any()  # exactly zero at every padded position
    assert out_p.metrics == pytest.approx(out.metrics)


# ---------------------------------------------------------------- KL and compute_loss


@pytest.mark.parametrize(
    ("p", "p_ref", "k1", "k3"),
    [
        (0.5, 0.25, LOG2, LOG2 - 0.5),  # d = log(0.25 / 0.5) = -log 2: 0.5 + log 2 - 1
        (0.25, 0.5, -LOG2, 1 - LOG2),  # d = log 2: 2 - log 2 - 1
        (0.3, 0.3, 0.0, 0.0),
    ],
)
def test_kl_hand_computed(p: float, p_ref: float, k1: float, k3: float) -> None:
    logp, ref = torch.tensor([[math.log(p)]], dtype=D), torch.tensor([[math.log(p_ref)]], dtype=D)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(k1)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(k3, abs=1e-15)


def test_k3_nonnegative_and_finite() -> None:
    gen = torch.Generator().manual_seed(3)
    logp, ref = torch.randn(50, 20, generator=gen) * 5, torch.randn(50, 20, generator=gen) * 5
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    # |d| is clamped to 20: e^-20 + 20 - 1 and e^20 - 20 - 1, not inf
    extreme = kl_penalty(torch.tensor([0.0, -1000.0]), torch.tensor([-1000.0, 0.0]), "k3")
    torch.testing.assert_close(extreme, torch.tensor([math.exp(-20) + 19, math.exp(20) - 21]))


def test_compute_loss_adds_kl() -> None:
    # on-policy (ratio 1), A = 1: policy loss = -1 per token, token-mean -1
    logprobs = torch.tensor([[math.log(0.5), math.log(0.25)]], dtype=D)
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]], dtype=D)
    mask, adv, cfg = (
        torch.ones(1, 2, dtype=torch.bool),
        torch.tensor([1.0], dtype=D),
        PolicyLossConfig(),
    )
    out = compute_loss(logprobs, logprobs, ref, adv, mask, cfg, "ppo_clip", 0.1, "k3")
    # k3 = [log 2 - 0.5, 1 - log 2], mean 0.25 -> total -1 + 0.1 * 0.25
    assert out.loss.item() == pytest.approx(-0.975)
    assert out.metrics["kl"] == pytest.approx(0.25)
    assert out.metrics["policy_loss"] == pytest.approx(-1.0)
    assert out.metrics["loss"] == pytest.approx(-0.975)
    # k1 = [log 2, -log 2], mean 0
    out = compute_loss(logprobs, logprobs, ref, adv, mask, cfg, "ppo_clip", 0.1, "k1")
    assert out.loss.item() == pytest.approx(-1.0) and out.metrics["kl"] == pytest.approx(0.0)
    # kl is reported but not added when kl_coef = 0; no ref -> no kl metric
    assert compute_loss(logprobs, logprobs, ref, adv, mask, cfg).loss.item() == pytest.approx(-1.0)
    assert "kl" not in compute_loss(logprobs, logprobs, None, adv, mask, cfg).metrics
    with pytest.raises(ValueError, match="needs ref_logprobs"):
        compute_loss(logprobs, logprobs, None, adv, mask, cfg, kl_coef=0.1)


@pytest.mark.parametrize(
    ("registry", "name", "match"),
    [
        (POLICY_LOSSES, "ppo_clp", "Unknown policy loss 'ppo_clp' (did you mean 'ppo_clip'?)"),
        (POLICY_LOSSES, "gpso", "did you mean 'gspo'?"),
        (KL_ESTIMATORS, "k2", "choose from k1, k3"),
        (AGG_MODES, "seq_mean_token_mean", "did you mean 'seq-mean-token-mean'?"),
    ],
)
def test_unknown_names(registry, name: str, match: str) -> None:
    with pytest.raises(ConfigError) as err:
        registry.get(name)
    assert match in str(err.value)


def test_config_validation() -> None:
    assert PolicyLossConfig(clip_eps=0.2).upper_eps == 0.2
    assert PolicyLossConfig(clip_eps=0.2, clip_eps_high=0.28).upper_eps == 0.28
    with pytest.raises(ConfigError, match="clip_eps"):
        PolicyLossConfig(clip_eps=1.5)


# ---------------------------------------------------------------- logit helpers


@pytest.mark.parametrize("chunk_rows", [1, 2, 10])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_logprobs_matches_naive(chunk_rows: int, dtype) -> None:
    gen = torch.Generator().manual_seed(4)
    logits = (torch.randn(3, 5, 997, generator=gen) * 4).to(dtype)
    ids = torch.randint(0, 997, (3, 5), generator=gen)
    naive = torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None]).squeeze(-1)
    assert torch.equal(selective_logprobs(logits, ids, chunk_rows), naive)


def test_selective_logprobs_gradient() -> None:
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 11, generator=gen, dtype=D, requires_grad=True)
    ids = torch.randint(0, 11, (2, 3), generator=gen)
    selective_logprobs(logits, ids).sum().backward()
    naive = logits.detach().clone().requires_grad_()
    torch.log_softmax(naive, -1).gather(-1, ids[..., None]).sum().backward()
    torch.testing.assert_close(logits.grad, naive.grad)


def test_entropy() -> None:
    # uniform over V: log V
    for vocab in (2, 7, 1000):
        torch.testing.assert_close(
            token_entropy_from_logits(torch.zeros(2, 3, vocab)), torch.full((2, 3), math.log(vocab))
        )
    # a banned (-inf) token: [0.5, 0.5, 0] -> log 2, no NaN in value or gradient
    logits = torch.tensor([[[0.0, 0.0, -math.inf]]], requires_grad=True)
    entropy = token_entropy_from_logits(logits)
    entropy.sum().backward()
    assert entropy.item() == pytest.approx(LOG2) and torch.isfinite(logits.grad).all()
    # a one-hot distribution: 0
    assert token_entropy_from_logits(torch.tensor([[[0.0, -1e4, -1e4]]])).item() == 0.0


def test_truncated_is_weights_and_per_token_advantages_hand_computed():
    from mathrl.algorithms import ppo_clip, truncated_is_weights

    trainer = torch.tensor([[-1.0, -2.0, -0.5]])
    sampler = torch.tensor([[-1.2, -1.0, float("-inf")]])  # padding may hold anything
    mask = torch.tensor([[1, 1, 0]])
    w, capped = truncated_is_weights(trainer, sampler, mask, cap=2.0)
    assert w[0].tolist() == pytest.approx([math.exp(0.2), math.exp(-1.0), 0.0])
    assert capped.tolist() == [[False, False, False]]
    w, capped = truncated_is_weights(trainer, sampler, mask, cap=1.1)
    assert w[0].tolist() == pytest.approx([1.1, math.exp(-1.0), 0.0])
    assert capped.tolist() == [[True, False, False]]
    # ppo_clip with (B, T) advantages A * w, on-policy (ratio 1): token-mean of -A * w
    cfg = PolicyLossConfig()
    out = ppo_clip(trainer, trainer, 2.0 * w, mask, cfg)
    assert out.loss.item() == pytest.approx(-(2.0 * 1.1 + 2.0 * math.exp(-1.0)) / 2)


# ---------------------------------------------------------------- cispo, sapo


@pytest.mark.parametrize(
    ("adv", "ratio", "weight", "clipped"),
    [
        # loss = -A * w with w = clip(r, 0.8, 1.2) held constant: grad wrt logp = -A * w,
        # never zero (unlike ppo_clip, a clipped token keeps its gradient)
        (1.0, 1.1, 1.1, False),
        (1.0, 1.5, 1.2, True),
        (-1.0, 0.5, 0.8, True),
        (-1.0, 1.5, 1.2, True),
        (2.0, 0.9, 0.9, False),
        (1.0, 1.0, 1.0, False),
    ],
)
def test_cispo_single_token(adv: float, ratio: float, weight: float, clipped: bool) -> None:
    out, grad = _run("cispo", [[ratio]], [adv])
    assert out.loss.item() == pytest.approx(-adv * weight)
    assert grad.item() == pytest.approx(-adv * weight)
    assert out.metrics["clip_frac"] == float(clipped)
    assert out.metrics["ratio_mean"] == pytest.approx(ratio)


def test_cispo_large_upper_bound_as_the_paper() -> None:
    # clip_eps_high = 4: the weight is bounded by 5 only
    cfg = PolicyLossConfig(clip_eps=0.2, clip_eps_high=4.0)
    out, grad = _run("cispo", [[3.0, 7.0]], [1.0], cfg=cfg)
    assert out.loss.item() == pytest.approx(-(3.0 + 5.0) / 2)  # token-mean
    torch.testing.assert_close(grad, torch.tensor([[-1.5, -2.5]], dtype=D))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize(
    ("adv", "ratio", "tau"),
    [(1.0, 1.0, 1.0), (-1.0, 1.0, 1.05), (1.0, 2.0, 1.0), (-1.0, 0.5, 1.05), (2.0, 0.7, 1.0)],
)
def test_sapo_single_token(adv: float, ratio: float, tau: float) -> None:
    # g(r) = sigmoid(tau (r - 1)) * 4 / tau; loss -A g(r); d/dlogp = -A * 4 s (1 - s) * r
    out, grad = _run("sapo", [[ratio]], [adv])
    s = _sigmoid(tau * (ratio - 1.0))
    assert out.loss.item() == pytest.approx(-adv * s * 4.0 / tau)
    assert grad.item() == pytest.approx(-adv * 4.0 * s * (1.0 - s) * ratio)
    assert out.metrics["clip_frac"] == 0.0


def test_sapo_on_policy_gradient_is_reinforce() -> None:
    # g'(1) = 1 whatever tau: at ratio 1 the gradient equals vanilla's
    _, grad_sapo = _run("sapo", [[1.0, 1.0], [1.0, 1.0]], [1.5, -0.5])
    _, grad_vanilla = _run("vanilla", [[1.0, 1.0], [1.0, 1.0]], [1.5, -0.5])
    torch.testing.assert_close(grad_sapo, grad_vanilla)


def test_sapo_temperatures_are_checked() -> None:
    with pytest.raises(ConfigError, match="sapo temperatures must be > 0"):
        PolicyLossConfig(sapo_tau_neg=0.0)


# ---------------------------------------------------------------- entropy control


def test_top_entropy_mask_hand_computed() -> None:
    entropy = torch.tensor([[0.1, 0.5, 0.9, 99.0], [0.3, 0.7, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    # valid sorted [0.1, 0.3, 0.5, 0.7, 0.9]; the 0.6 quantile is at 2.4 -> 0.58
    expected = torch.tensor([[0, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(top_entropy_mask(entropy, mask, 0.4), expected)
    assert torch.equal(top_entropy_mask(entropy, mask, 1.0), mask)  # padding never kept
    # 0.2 of 5 tokens: the 0.8 quantile is at 3.2 -> 0.74: only 0.9
    assert top_entropy_mask(entropy, mask, 0.2).sum().item() == 1
    assert not top_entropy_mask(entropy, torch.zeros_like(mask), 0.2).any()


def test_entropy_bonus_in_compute_loss() -> None:
    logprobs = torch.zeros(2, 3, dtype=D, requires_grad=True)
    entropy = torch.tensor([[1.0, 2.0, 50.0], [3.0, 50.0, 50.0]], dtype=D, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -1.0], dtype=D)
    cfg = PolicyLossConfig()
    plain = compute_loss(logprobs, logprobs.detach(), None, adv, mask, cfg, "ppo_clip")
    out = compute_loss(
        logprobs,
        logprobs.detach(),
        None,
        adv,
        mask,
        cfg,
        "ppo_clip",
        entropy=entropy,
        entropy_coef=0.1,
    )
    # token-mean of the valid entropies (1 + 2 + 3) / 3 = 2; loss = policy - 0.1 * 2
    assert out.metrics["entropy_bonus"] == pytest.approx(2.0)
    assert out.loss.item() == pytest.approx(plain.loss.item() - 0.2)
    out.loss.backward()
    expected = torch.tensor([[-0.1 / 3, -0.1 / 3, 0.0], [-0.1 / 3, 0.0, 0.0]], dtype=D)
    torch.testing.assert_close(entropy.grad, expected)
    with pytest.raises(ValueError, match="needs the token entropies"):
        compute_loss(logprobs, logprobs, None, adv, mask, cfg, entropy_coef=0.1)
