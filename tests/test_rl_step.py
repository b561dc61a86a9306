"""rl.train_step: micro-batching is exact, zero-advantage rows are skipped exactly, the
sampler's log-probs are the old ones of a buffer; agg_share against hand-computed values."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from mathrl.algorithms import agg_loss, agg_share
from mathrl.config import load_config
from mathrl.groups import Group
from mathrl.rewards import RewardResult
from mathrl.rl import train_step
from mathrl.rollout.types import Completion
from mathrl.tasks import Example

VOCAB = 40


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    return Qwen2ForCausalLM(cfg).float()


def make_groups(
    n_groups: int = 3, group_size: int = 4, vocab: int = VOCAB, low: int = 1
) -> list[Group]:
    """Groups of different prompt and completion lengths (so padding is exercised); token
    ids in [low, vocab)."""
    g = torch.Generator().manual_seed(1)
    groups = []
    for gi in range(n_groups):
        prompt = torch.randint(low, vocab, (3 + gi,), generator=g).tolist()
        comps, results = [], []
        for j in range(group_size):
            n = 2 + (gi + 3 * j) % 5
            ids = torch.randint(low, vocab, (n,), generator=g).tolist()
            lps = (-torch.rand(n, generator=g) * 3).tolist()
            comps.append(Completion(gi, j, prompt, ids, "", "eos", lps))
            results.append(RewardResult(reward=float((gi + j) % 2)))
        groups.append(Group(Example(f"p{gi}", "", "0"), prompt, comps, results))
    return groups


class RecordingOptimizer:
    """Keeps the gradients each step would apply; changes no weight."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.steps = model, []

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.model.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.steps.append(
            {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}
        )


def run_step(micro: int, agg: str, kl: float = 0.0, **kw) -> tuple[dict, list[dict]]:
    cfg = load_config(
        overrides=[
            f"train.micro_batch_size={micro}",
            f"train.loss_agg={agg}",
            f"train.kl_coef={kl}",
            "train.group_size=4",
            "train.grad_clip=0",
            "rollout.max_new_tokens=8",
        ],
        env=False,
    )
    model = tiny_model()
    ref = None
    if kl:
        from mathrl.backends.torch import Reference

        ref_model = copy.deepcopy(model)
        with torch.no_grad():  # a reference that differs, so the KL term has a gradient
            for p in ref_model.parameters():
                p.add_(0.05)
        ref = Reference(ref_model)
    opt = RecordingOptimizer(model)
    groups = make_groups()
    advantages = torch.tensor([1.0, -1.0, 0.0, 0.5] * 3)  # (B,)
    metrics = train_step(cfg, model, ref, opt, groups, advantages, pad_id=0, **kw)
    return metrics, opt.steps


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("kl", [0.0, 0.1])
def test_micro_batched_step_equals_full_batch(agg, kl):
    full_m, full_g = run_step(12, agg, kl)
    for micro in (1, 2, 5):
        m, g = run_step(micro, agg, kl)
        assert len(g) == len(full_g) == 1
        for name, grad in full_g[0].items():
            torch.testing.assert_close(g[0][name], grad, rtol=1e-5, atol=1e-7, msg=name)
        assert m["loss/policy"] == pytest.approx(full_m["loss/policy"], rel=1e-5, abs=1e-7)
        assert m["loss/total"] == pytest.approx(full_m["loss/total"], rel=1e-5, abs=1e-7)
    # zero-advantage rows are skipped exactly when no KL term needs them (3 of 12 here)
    assert full_m["train/trained_seqs"] == (12 if kl else 9)
    assert any(grad.abs().sum() > 0 for grad in full_g[0].values())


def test_mu_two_second_update_uses_the_old_logprobs():
    """With mu = 2 the second update's ratio moves away from 1: approx_kl > 0 (exactly 0 at mu 1)."""
    cfg_over = ["train.group_size=4", "rollout.max_new_tokens=8", "train.lr=0.05"]
    out = {}
    for mu in (1, 2):
        cfg = load_config(overrides=[*cfg_over, f"train.mu={mu}"], env=False)
        model = tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        advantages = torch.tensor([1.0, -1.0, 0.0, 0.5] * 3)
        out[mu] = train_step(cfg, model, None, opt, make_groups(), advantages, pad_id=0)
    assert out[1]["loss/approx_kl"] == 0.0
    assert out[2]["loss/approx_kl"] > 1e-6


def test_buffer_step_uses_the_sampler_logprobs_as_old():
    """rollout_logprobs=True: ratio = exp(logprob - sampler logprob), far from 1 for random lps."""
    on, _ = run_step(12, "token-mean")
    off, _ = run_step(12, "token-mean", rollout_logprobs=True)
    assert on["loss/approx_kl"] == 0.0 and on["loss/clip_frac"] == 0.0
    assert off["loss/approx_kl"] > 0.1 and off["loss/clip_frac"] > 0.0


def test_agg_share_hand_computed():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])  # 3 tokens, 2 sequences
    assert agg_share("token-mean", mask, total_tokens=12, total_seqs=5) == pytest.approx(0.25)
    assert agg_share("seq-mean-token-mean", mask, 12, 5) == pytest.approx(0.4)
    assert agg_share("seq-mean-token-sum-norm", mask, 12, 5) == pytest.approx(0.4)
    with pytest.raises(Exception, match="did you mean 'token-mean'"):
        agg_share("token-men", mask, 12, 5)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_agg_share_weights_split_a_batch_exactly(agg):
    torch.manual_seed(3)
    loss = torch.randn(6, 5)
    mask = (torch.rand(6, 5) > 0.3).long()
    mask[:, 0] = 1
    whole = agg_loss(loss, mask, agg, max_len=5)
    parts = sum(
        agg_share(agg, mask[s], int(mask.sum()), 6) * agg_loss(loss[s], mask[s], agg, max_len=5)
        for s in (slice(0, 2), slice(2, 3), slice(3, 6))
    )
    torch.testing.assert_close(parts, whole)


def with_true_logprobs(groups: list[Group], model: torch.nn.Module, offset: float) -> None:
    """Set each completion's sampler log-probs to the model's own plus `offset`."""
    from mathrl.models.logprobs import completion_batch, completion_logprobs

    comps = [c for g in groups for c in g.completions]
    prompts = [g.prompt_ids for g in groups]
    rows = [gi for gi, g in enumerate(groups) for _ in g.completions]
    batch = completion_batch(prompts, rows, [c.token_ids for c in comps], 0, torch.device("cpu"))
    with torch.no_grad():
        lps = completion_logprobs(model, batch)  # (B, T)
    for i, c in enumerate(comps):
        c.logprobs = (lps[i, : len(c.token_ids)] + offset).tolist()


@pytest.mark.parametrize(
    ("offset", "cap", "scale", "capped"),
    [
        (0.0, 0.0, 1.0, None),  # sampler == trainer: nothing to correct, diff 0
        (0.25, 0.0, 1.0, None),  # a sampler 0.25 nats more confident, no correction
        (0.25, 2.0, math.exp(-0.25), 0.0),  # TIS: every token weighted pi_t / pi_s
        (-1.0, 2.0, 2.0, 1.0),  # weight e^1 = 2.72, cut at the cap on every token
    ],
)
def test_truncated_importance_sampling_scales_the_gradient(offset, cap, scale, capped):
    """On-policy (ratio 1, no clip active) the policy gradient is linear in the advantages,
    so TIS weights that are one constant w on every token scale it by exactly w."""
    cfg_over = ["train.group_size=4", "train.grad_clip=0", "rollout.max_new_tokens=8"]
    grads, metrics = [], []
    for tis in (0.0, cap):
        cfg = load_config(overrides=[*cfg_over, f"train.tis_cap={tis}"], env=False)
        model = tiny_model()
        groups = make_groups()
        with_true_logprobs(groups, model, offset)
        opt = RecordingOptimizer(model)
        advantages = torch.tensor([1.0, -1.0, 0.0, 0.5] * 3)
        metrics.append(train_step(cfg, model, None, opt, groups, advantages, pad_id=0))
        grads.append(opt.steps[0])
    assert metrics[1]["rollout/logprob_diff"] == pytest.approx(abs(offset), abs=1e-5)
    assert metrics[1].get("rollout/tis_capped") == (
        None if capped is None else pytest.approx(capped)
    )
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g * scale, rtol=1e-4, atol=1e-7, msg=name)


def _truncate(groups: list[Group], rows: set[int]) -> None:
    """Mark completions (global row numbers) as cut at max_new_tokens."""
    comps = [c for g in groups for c in g.completions]
    for i in rows:
        comps[i].finish_reason = "length"


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_mask_truncated_equals_leaving_the_rows_out(agg):
    """mask_truncated: truncated rows get advantage 0 and leave the normaliser, so the
    update is the one of the batch without them."""
    from mathrl.rl import TrainState, advantages_for, truncated_rows

    over = ["train.group_size=4", "train.grad_clip=0", "rollout.max_new_tokens=8"]
    cfg = load_config(
        overrides=[*over, f"train.loss_agg={agg}", "train.mask_truncated=true"], env=False
    )
    groups = make_groups()
    cut = {0, 5, 6}
    _truncate(groups, cut)
    rewards = torch.tensor([r for g in groups for r in g.rewards])
    truncated = truncated_rows(groups)
    assert truncated.nonzero().flatten().tolist() == sorted(cut)
    advantages = advantages_for(cfg, TrainState(), rewards, truncated)
    plain = advantages_for(load_config(overrides=over, env=False), TrainState(), rewards, truncated)
    assert advantages[sorted(cut)].tolist() == [0.0] * 3 and plain[sorted(cut)].abs().sum() > 0
    keep = [i for i in range(12) if i not in cut]
    torch.testing.assert_close(advantages[keep], plain[keep])  # the baseline counts them
    model = tiny_model()
    opt = RecordingOptimizer(model)
    train_step(cfg, model, None, opt, groups, advantages, pad_id=0)
    # the same update from the batch without the truncated rows, mask_truncated off
    fewer = make_groups()
    for gi, g in enumerate(fewer):
        rows = [j for j in range(4) if gi * 4 + j not in cut]
        g.completions = [g.completions[j] for j in rows]
        g.results = [g.results[j] for j in rows]
    cfg_off = load_config(overrides=[*over, f"train.loss_agg={agg}"], env=False)
    model_off = tiny_model()
    opt_off = RecordingOptimizer(model_off)
    train_step(cfg_off, model_off, None, opt_off, fewer, advantages[keep], pad_id=0)
    for name, grad in opt_off.steps[0].items():
        torch.testing.assert_close(opt.steps[0][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_entropy_bonus_gradient_and_zero_advantage_rows_kept():
    """With every advantage 0 the update is the entropy bonus's alone: the gradient of
    -entropy_coef x the token-mean entropy, from every row (none is skipped)."""
    from mathrl.backends.torch import micro_batches
    from mathrl.models.logprobs import completion_logprobs

    over = ["train.group_size=4", "train.grad_clip=0", "rollout.max_new_tokens=8"]
    cfg = load_config(overrides=[*over, "train.entropy_coef=0.1"], env=False)
    model = tiny_model()
    opt = RecordingOptimizer(model)
    groups = make_groups()
    metrics = train_step(cfg, model, None, opt, groups, torch.zeros(12), pad_id=0)
    assert metrics["train/trained_seqs"] == 12
    (batch,) = micro_batches(groups, [list(range(12))], 0, torch.device("cpu"), 1)
    model.zero_grad(set_to_none=True)
    _, ent = completion_logprobs(model, batch, return_entropy=True, entropy_grad=True)
    mask = batch.completion_mask
    mean_entropy = (ent * mask).sum() / mask.sum()
    (-0.1 * mean_entropy).backward()
    assert metrics["loss/entropy_bonus"] == pytest.approx(mean_entropy.item(), rel=1e-5)
    assert metrics["loss/total"] == pytest.approx(-0.1 * mean_entropy.item(), rel=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(opt.steps[0][name], p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_top_entropy_quantile_masks_the_low_entropy_tokens():
    """0.2: a fifth of the trained tokens carry policy gradient; the share masked is
    logged; 1.0 logs nothing and masks nothing."""
    over = ["train.group_size=4", "train.grad_clip=0", "rollout.max_new_tokens=8"]
    advantages = torch.tensor([1.0, -1.0, 0.0, 0.5] * 3)
    out = {}
    for q in (1.0, 0.2):
        cfg = load_config(overrides=[*over, f"train.top_entropy_quantile={q}"], env=False)
        model = tiny_model()
        opt = RecordingOptimizer(model)
        out[q] = (train_step(cfg, model, None, opt, make_groups(), advantages, pad_id=0), opt)
    assert "policy/entropy_masked_frac" not in out[1.0][0]
    # the 9 trained rows (advantage != 0) hold n = 33 tokens; the 0.8 quantile sits at
    # sorted position 0.8 * (n - 1) = 25.6, so the 26 tokens below it are masked
    comps = [c for g in make_groups() for c in g.completions]
    n = sum(len(c.token_ids) for c, a in zip(comps, advantages, strict=True) if a != 0)
    assert n == 33
    frac = out[0.2][0]["policy/entropy_masked_frac"]
    assert frac == pytest.approx(math.ceil(0.8 * (n - 1)) / n) == pytest.approx(26 / 33)
    assert out[0.2][0]["policy/entropy"] == out[1.0][0]["policy/entropy"]
    g1, g2 = out[1.0][1].steps[0], out[0.2][1].steps[0]
    assert any(not torch.allclose(g1[n], g2[n]) for n in g1)
