"""Every torch registry entry against its MLX form: same values, metrics and gradients.

The tables iterate the torch registries' names, so a torch variant added without an MLX
twin fails here. Inputs are float32 (the trainer's dtype) with inf / nan / 1e4 garbage
under the mask; values, metrics and d loss / d logprobs must agree to 1e-5.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

mx = pytest.importorskip("mlx.core")

from mathrl.algorithms import (  # noqa: E402
    ADVANTAGES,
    AGG_MODES,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    PolicyLossConfig,
    agg_loss,
    agg_share,
    compute_loss,
    kl_penalty,
    register_advantage,
    register_policy_loss,
    selective_logprobs,
    token_entropy_from_logits,
    top_entropy_mask,
    truncated_is_weights,
    unregister_advantage,
)
from mathrl.algorithms import mlx_forms as mf  # noqa: E402

ATOL = 1e-5
B, T = 4, 6
LENGTHS = [6, 4, 1, 0]  # a full row, a short one, one token, an empty completion


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(x))


def _m(x: np.ndarray):
    return mx.array(np.array(x))


def _np(x) -> np.ndarray:
    """A torch tensor or mx array as float64 numpy (bf16 included)."""
    if isinstance(x, torch.Tensor):
        return x.detach().double().numpy()
    return np.array(x.astype(mx.float32) if x.dtype == mx.bfloat16 else x, dtype=np.float64)


def _close(mlx_value, torch_value, atol: float = ATOL) -> None:
    np.testing.assert_allclose(_np(mlx_value), _np(torch_value), rtol=0, atol=atol)


# ---------------------------------------------------------------- shared random inputs


def _garbage(values: np.ndarray, mask: np.ndarray, fill: list[float]) -> np.ndarray:
    """values with `fill` cycled over the masked positions."""
    out = values.copy()
    out[~mask] = np.resize(np.array(fill, dtype=values.dtype), int((~mask).sum()))
    return out


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    """(B, T) float32 log-probs around a policy, with garbage wherever the mask is False."""
    rng = np.random.default_rng(seed)
    mask = np.arange(T)[None, :] < np.array(LENGTHS)[:, None]  # (B, T)
    old = (-rng.random((B, T)) * 2).astype(np.float32)
    noise = rng.standard_normal((3, B, T)).astype(np.float32)
    return {
        "mask": mask,
        "old": _garbage(old, mask, [-math.inf, math.nan, 1e4]),
        "logprobs": _garbage(old + 0.3 * noise[0], mask, [math.inf, 1e4, math.nan, -1e4]),
        "ref": _garbage(old + 0.3 * noise[1], mask, [math.nan, -math.inf, 3e3]),
        "sampler": _garbage(old + 0.2 * noise[2], mask, [-math.inf, math.inf, math.nan]),
        "advantages": rng.standard_normal(B).astype(np.float32),  # (B,)
        "entropy": _garbage((rng.random((B, T)) * 3).astype(np.float32), mask, [math.nan, 1e4]),
    }


INPUTS = _inputs()
CAP = 1.2  # the TIS cap: some tokens in INPUTS exceed it

# one row a case; each runs for every policy loss x agg mode
CASES = {
    "plain": {},
    "clip-higher": {"clip_eps_high": 0.25},
    "per-token advantages (TIS)": {"tis": True},
    "kl reported, not added": {"ref": True},
    **{f"kl {name}": {"ref": True, "kl_coef": 0.1, "kl_estimator": name} for name in KL_ESTIMATORS},
    "TIS + clip-higher + kl": {"tis": True, "clip_eps_high": 0.25, "ref": True, "kl_coef": 0.05},
    "entropy bonus": {"entropy_coef": 0.01},
    "top-entropy 20 % + TIS": {"top_entropy": 0.2, "tis": True},
    "sapo temperatures": {"sapo": (0.5, 2.0)},
}


def _cfg(case: dict, mode: str) -> PolicyLossConfig:
    tau_pos, tau_neg = case.get("sapo", (1.0, 1.05))
    return PolicyLossConfig(
        clip_eps=0.1,
        clip_eps_high=case.get("clip_eps_high"),
        agg_mode=mode,
        max_len=T,
        sapo_tau_pos=tau_pos,
        sapo_tau_neg=tau_neg,
    )


def _torch_loss(case: dict, policy_loss: str, mode: str):
    """compute_loss on INPUTS: (LossOutputs, d loss / d logprobs)."""
    logprobs = _t(INPUTS["logprobs"]).requires_grad_()
    mask, advantages = _t(INPUTS["mask"]), _t(INPUTS["advantages"])
    if case.get("tis"):
        weights, _ = truncated_is_weights(logprobs, _t(INPUTS["sampler"]), mask, CAP)
        advantages = advantages[:, None] * weights  # (B, T)
    if "top_entropy" in case:
        keep = top_entropy_mask(_t(INPUTS["entropy"]), mask, case["top_entropy"])
        advantages = (advantages[:, None] if advantages.dim() == 1 else advantages) * keep
    cfg = _cfg(case, mode)
    ref = _t(INPUTS["ref"]) if case.get("ref") else None
    kl = (case.get("kl_coef", 0.0), case.get("kl_estimator", "k3"))
    out = compute_loss(
        logprobs,
        _t(INPUTS["old"]),
        ref,
        advantages,
        mask,
        cfg,
        policy_loss,
        *kl,
        entropy=_t(INPUTS["entropy"]),
        entropy_coef=case.get("entropy_coef", 0.0),
    )
    out.loss.backward()
    return out, logprobs.grad


def _mlx_loss(case: dict, policy_loss: str, mode: str):
    """compute_loss_mlx on INPUTS: (MlxLossOutputs, mx.grad of the loss w.r.t. logprobs)."""
    mask, advantages = _m(INPUTS["mask"]), _m(INPUTS["advantages"])
    if case.get("tis"):
        weights, _ = mf.truncated_is_weights_mlx(
            _m(INPUTS["logprobs"]), _m(INPUTS["sampler"]), mask, CAP
        )
        advantages = advantages[:, None] * weights  # (B, T)
    if "top_entropy" in case:
        keep = mf.top_entropy_mask_mlx(_m(INPUTS["entropy"]), mask, case["top_entropy"])
        advantages = (advantages[:, None] if advantages.ndim == 1 else advantages) * keep
    cfg = _cfg(case, mode)
    ref = _m(INPUTS["ref"]) if case.get("ref") else None
    kl = (case.get("kl_coef", 0.0), case.get("kl_estimator", "k3"))
    entropy = (_m(INPUTS["entropy"]), case.get("entropy_coef", 0.0))

    def run(logprobs):
        return mf.compute_loss_mlx(
            logprobs, _m(INPUTS["old"]), ref, advantages, mask, cfg, policy_loss, *kl, *entropy
        )

    grad = mx.grad(lambda logprobs: run(logprobs).loss)(_m(INPUTS["logprobs"]))
    return run(_m(INPUTS["logprobs"])), grad


# ---------------------------------------------------------------- the table


def test_every_torch_entry_has_an_mlx_form_and_no_more() -> None:
    assert mf.missing_mlx_forms() == []
    assert mf.MLX_AGG_MODES.names() == AGG_MODES.names()
    assert mf.MLX_POLICY_LOSSES.names() == POLICY_LOSSES.names()
    assert mf.MLX_KL_ESTIMATORS.names() == KL_ESTIMATORS.names()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", AGG_MODES.names())
@pytest.mark.parametrize("policy_loss", POLICY_LOSSES.names())
def test_loss_matches_torch(policy_loss: str, mode: str, case: str) -> None:
    out_t, grad_t = _torch_loss(CASES[case], policy_loss, mode)
    out_m, grad_m = _mlx_loss(CASES[case], policy_loss, mode)
    assert math.isfinite(out_t.loss.item())
    assert out_m.loss.shape == () and abs(out_m.loss.item() - out_t.loss.item()) <= ATOL
    assert list(out_m.metrics) == list(out_t.metrics)  # same keys, same order
    assert out_m.metrics == pytest.approx(out_t.metrics, rel=0, abs=ATOL)
    _close(grad_m, grad_t)
    # garbage under the mask reaches neither gradient: exactly 0, not NaN
    assert not _np(grad_m)[~INPUTS["mask"]].any() and not _np(grad_t)[~INPUTS["mask"]].any()
    assert np.abs(_np(grad_t)).sum() > 0  # the real tokens do get a gradient


def test_table_inputs_exercise_the_clip_and_the_cap() -> None:
    for name in ("ppo_clip", "gspo"):
        clip_frac = _torch_loss({}, name, "token-mean")[0].metrics["clip_frac"]
        assert 0.0 < clip_frac < 1.0, name
    capped = _t(INPUTS["logprobs"]) - _t(INPUTS["sampler"]) > math.log(CAP)
    assert (capped & _t(INPUTS["mask"])).any()


def test_metrics_leave_value_and_grad_as_aux() -> None:
    # the trainer's pattern: loss and lazy stats out of one mx.value_and_grad call
    out_t, grad_t = _torch_loss(CASES["kl k3"], "ppo_clip", "token-mean")
    mask, cfg = _m(INPUTS["mask"]), PolicyLossConfig(clip_eps=0.1)

    def loss_fn(logprobs):
        out = mf.compute_loss_mlx(
            logprobs,
            _m(INPUTS["old"]),
            _m(INPUTS["ref"]),
            _m(INPUTS["advantages"]),
            mask,
            cfg,
            "ppo_clip",
            0.1,
            "k3",
        )
        return out.loss, out.stats

    (loss, stats), grad = mx.value_and_grad(loss_fn)(_m(INPUTS["logprobs"]))
    assert mf.MlxLossOutputs(loss, stats).metrics == pytest.approx(out_t.metrics, abs=ATOL)
    _close(grad, grad_t)


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.75, 1.0])
def test_top_entropy_mask_matches_torch(quantile: float) -> None:
    keep_t = top_entropy_mask(_t(INPUTS["entropy"]), _t(INPUTS["mask"]), quantile)
    keep_m = mf.top_entropy_mask_mlx(_m(INPUTS["entropy"]), _m(INPUTS["mask"]), quantile)
    assert np.array_equal(np.array(keep_m), keep_t.numpy())
    assert 0 < keep_t.sum() <= INPUTS["mask"].sum()


def test_truncated_is_weights_match_torch() -> None:
    args = ("logprobs", "sampler", "mask")
    w_t, capped_t = truncated_is_weights(*(_t(INPUTS[k]) for k in args), CAP)
    w_m, capped_m = mf.truncated_is_weights_mlx(*(_m(INPUTS[k]) for k in args), CAP)
    _close(w_m, w_t)
    assert np.array_equal(np.array(capped_m), capped_t.numpy()) and capped_t.any()
    assert np.array(w_m)[~INPUTS["mask"]].tolist() == [0.0] * int((~INPUTS["mask"]).sum())


@pytest.mark.parametrize("mode", AGG_MODES.names())
def test_agg_loss_matches_torch(mode: str) -> None:
    loss_mat = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]], dtype=np.float32)
    mask = np.array([[1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=bool)
    loss_mat[~mask] = math.inf
    expected = agg_loss(_t(loss_mat), _t(mask), mode, 3).item()
    assert mf.agg_loss(_m(loss_mat), _m(mask), mode, 3).item() == pytest.approx(expected)
    none = np.zeros_like(mask)
    grad = mx.grad(lambda x: mf.agg_loss(x, _m(none), mode, 3))(_m(loss_mat))
    assert mf.agg_loss(_m(loss_mat), _m(none), mode, 3).item() == 0.0
    assert np.array_equal(np.array(grad), np.zeros_like(loss_mat))
    share = (mode, _m(mask), 10, 7)
    assert mf.agg_share(*share) == agg_share(mode, _t(mask), 10, 7)


@pytest.mark.parametrize("estimator", KL_ESTIMATORS.names())
def test_kl_estimators_match_torch_including_the_clamp(estimator: str) -> None:
    logprobs = np.array([0.0, -1000.0, -0.7, -2.0], dtype=np.float32)
    ref = np.array([-1000.0, 0.0, -0.2, -2.5], dtype=np.float32)
    expected = kl_penalty(_t(logprobs), _t(ref), estimator)
    got = mf.kl_penalty(_m(logprobs), _m(ref), estimator)
    np.testing.assert_allclose(_np(got), _np(expected), rtol=1e-6)


# ---------------------------------------------------------------- advantages


def test_advantages_have_one_form_for_every_backend() -> None:
    # computed from (B,) rewards once per step, in torch, whatever the backend: a user's
    # own estimator needs no MLX twin, and an MLX run accepts it
    assert not hasattr(mf, "MLX_ADVANTAGES") and not hasattr(mf, "compute_advantages_mlx")
    register_advantage("zz_user_adv")(ADVANTAGES.get("dr_grpo"))
    try:
        assert mf.missing_mlx_forms() == []
    finally:
        unregister_advantage("zz_user_adv")


# ---------------------------------------------------------------- logit helpers


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_selective_logprobs_match_torch(dtype: str) -> None:
    gen = torch.Generator().manual_seed(4)
    logits_t = (torch.randn(3, 5, 97, generator=gen) * 4).to(getattr(torch, dtype))
    ids = torch.randint(0, 97, (3, 5), generator=gen)
    logits_m = _m(logits_t.float().numpy()).astype(getattr(mx, dtype))  # the same bf16 values
    got = mf.selective_logprobs_mlx(logits_m, _m(ids.numpy()))
    assert got.dtype == mx.float32
    _close(got, selective_logprobs(logits_t, ids))
    # the gradient w.r.t. the logits (softmax minus one-hot), fp32
    logits32 = logits_t.float().requires_grad_()
    selective_logprobs(logits32, ids).sum().backward()
    grad = mx.grad(lambda x: mf.selective_logprobs_mlx(x, _m(ids.numpy())).sum())(
        _m(logits32.detach().numpy())
    )
    _close(grad, logits32.grad)


def test_entropy_matches_torch() -> None:
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 11, generator=gen) * 3
    logits[0, 0, :4] = -math.inf  # banned tokens: no NaN in value or gradient
    logits_t = logits.clone().requires_grad_()
    entropy_t = token_entropy_from_logits(logits_t)
    entropy_t.sum().backward()
    entropy_m, grad_m = mx.value_and_grad(lambda x: mf.token_entropy_mlx(x).sum())(
        _m(logits.numpy())
    )
    _close(mf.token_entropy_mlx(_m(logits.numpy())), entropy_t)
    assert entropy_m.item() == pytest.approx(entropy_t.sum().item(), abs=ATOL)
    assert np.isfinite(np.array(grad_m)).all()
    _close(grad_m, logits_t.grad)
    uniform = mf.token_entropy_mlx(mx.zeros((1, 2, 7)))
    np.testing.assert_allclose(np.array(uniform), np.full((1, 2), math.log(7)), rtol=1e-6)


# ---------------------------------------------------------------- parity guard, import guard


def test_missing_mlx_forms_names_a_torch_only_variant() -> None:
    register_policy_loss("zz_torch_only")(POLICY_LOSSES.get("vanilla"))
    try:
        assert mf.missing_mlx_forms() == ["policy loss 'zz_torch_only'"]
    finally:
        POLICY_LOSSES.remove("zz_torch_only")
    assert mf.missing_mlx_forms() == []


def test_importing_algorithms_does_not_import_mlx() -> None:
    # nor load the OpenBLAS meant for mlx (mathrl.mlx_blas only installs its import hook)
    code = (
        "import sys, mathrl.algorithms, mathrl.mlx_blas as b; "
        "print(sorted(m for m in sys.modules if 'mlx' in m and m != 'mathrl.mlx_blas'), b._loaded)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] []"
