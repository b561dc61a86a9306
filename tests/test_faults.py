"""Injected faults: non-finite loss, failing rewards. Each asserts what survives."""

from __future__ import annotations

import math
import time
import zlib

import pytest
import torch

import mathrl.backends.torch as torch_backend_mod
import mathrl.trainer as trainer_mod
from mathrl.checkpoint import list_checkpoints
from mathrl.io import read_jsonl
from mathrl.rewards.scoring import RewardResult, score_countdown


@pytest.fixture
def nan_at_step_one(monkeypatch):
    """compute_loss returns NaN on its first call (step 1), the real loss afterwards."""
    real = torch_backend_mod.compute_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(torch_backend_mod, "compute_loss", poisoned)
    return calls


def test_nonfinite_loss_skips_the_step(run_train, tmp_path, nan_at_step_one):
    out = tmp_path / "run"
    # a high reward variance is not guaranteed in 2 tiny steps: KL keeps every sequence in the batch
    res = run_train(out, "warmup.steps=0", "train.kl_coef=0.1")
    assert res.code == 0, res.err
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["optim/skipped"] for m in metrics] == [1, 0]
    assert metrics[0]["optim/grad_norm"] is None and metrics[0]["nonfinite"] == ["optim/grad_norm"]
    for path in list_checkpoints(out):
        from safetensors.torch import load_file

        weights = load_file(path / "model" / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values())


def test_nonfinite_loss_can_stop_the_run(run_train, tmp_path, nan_at_step_one):
    out = tmp_path / "run"
    res = run_train(out, "warmup.steps=0", "train.kl_coef=0.1", "train.nonfinite=stop")
    assert res.code == 2
    assert "Non-finite gradient norm; stopping (train.nonfinite = 'stop')" in res.err
    assert list_checkpoints(out) == []  # nothing written from the non-finite state


def test_out_of_memory_mid_step_then_resume(run_train, tmp_path, monkeypatch, same_run):
    """An OOM in step 3's update: exit 3, nothing of step 3 on disk, --resume == straight run."""
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    # kl_coef > 0 so every step moves the weights even when the groups carry no reward signal
    sets = ("train.kl_coef=0.1", "train.steps=4")
    assert run_train(straight, *sets).code == 0
    real = trainer_mod.train_step  # what the loop calls
    calls = {"n": 0}

    def oom_on_third(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*a, **kw)

    monkeypatch.setattr(trainer_mod, "train_step", oom_on_third)
    res = run_train(crashed, *sets)
    assert res.code == 3
    last = res.err.strip().splitlines()[-1]
    assert last.startswith("error: out of memory (OutOfMemoryError: CUDA out of memory.")
    assert last.endswith("continue from the last checkpoint with --resume")
    assert [p.name for p in list_checkpoints(crashed)] == ["step_00000001", "step_00000002"]
    assert [m["step"] for m in read_jsonl(crashed / "metrics.jsonl")] == [1, 2]
    assert {r["step"] for r in read_jsonl(crashed / "rollouts.jsonl")} == {1, 2}
    assert not [p for p in (crashed / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    monkeypatch.setattr(trainer_mod, "train_step", real)
    assert run_train(crashed, *sets, extra=("--resume",)).code == 0
    same_run(straight, crashed, 4)


def _fate(completion: str) -> str:
    """Which fault the flaky reward injects for a completion (stable across processes)."""
    return ("raise", "nan", "none", "hang", "ok")[zlib.crc32(completion.encode()) % 5]


def flaky_reward(completion: str, *args):
    """A user reward that raises, returns NaN or None, or hangs, depending on the text."""
    fate = _fate(completion)
    if fate == "raise":
        raise ValueError("boom")
    if fate == "nan":
        return RewardResult(reward=float("nan"), components={}, pred=None, correct=False)
    if fate == "none":
        return None
    if fate == "hang":
        time.sleep(30)
    return score_countdown(completion, *args)


def test_raising_hanging_and_nan_rewards_inside_a_run(run_train, tmp_path, use_reward):
    """Each faulty sample gets reward 0 with its reason; the run goes on; advantages stay finite."""
    use_reward(flaky_reward)
    out = tmp_path / "run"
    # 2 s, not 0.5: on a loaded 2-core CI machine a plain Countdown reward once took more
    # than 0.5 s of wall time, so an "ok" row read "timeout"; the hanging reward sleeps 30 s
    # and still times out (this test takes ~40 s instead of ~10)
    res = run_train(out, "train.reward_timeout_s=2", "train.group_size=8")
    assert res.code == 0, res.err
    rows = read_jsonl(out / "rollouts.jsonl")
    assert len(rows) == 2 * 2 * 8
    want = {"raise": "error: ValueError: boom", "nan": "invalid_reward", "none": "invalid_reward"}
    seen = set()
    for r in rows:
        fate = _fate(r["completion"])
        seen.add(fate)
        assert math.isfinite(r["advantage"])
        if fate == "hang":
            assert (r["reason"], r["reward"]) == ("timeout", 0.0)
        elif fate in want:
            assert (r["reason"], r["reward"]) == (want[fate], 0.0)
        else:
            assert not r["reason"].startswith(("error", "timeout", "invalid"))
    assert {"raise", "nan", "ok"} <= seen  # the table is exercised, not skipped
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2]
