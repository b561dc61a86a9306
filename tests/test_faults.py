"""Injected faults: non-finite loss, failing rewards. Each asserts what survives."""

from __future__ import annotations

import pytest
import torch

import mathrl.trainer as trainer_mod
from mathrl.checkpoint import list_checkpoints
from mathrl.rollout.buffer import read_jsonl


@pytest.fixture
def nan_at_step_one(monkeypatch):
    """compute_loss returns NaN on its first call (step 1), the real loss afterwards."""
    real = trainer_mod.compute_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer_mod, "compute_loss", poisoned)
    return calls


def test_nonfinite_loss_skips_the_step(run_cli, tiny_config, tmp_path, nan_at_step_one):
    out = tmp_path / "run"
    # a high reward variance is not guaranteed in 2 tiny steps: KL keeps every sequence in the batch
    res = run_cli(
        "train",
        "-c",
        tiny_config,
        "--out",
        out,
        "--set",
        "sft.steps=0",
        "--set",
        "train.kl_coef=0.1",
    )
    assert res.code == 0, res.err
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["optim/skipped"] for m in metrics] == [1, 0]
    assert metrics[0]["optim/grad_norm"] is None and metrics[0]["nonfinite"] == ["optim/grad_norm"]
    for path in list_checkpoints(out):
        from safetensors.torch import load_file

        weights = load_file(path / "model" / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values())


def test_nonfinite_loss_can_stop_the_run(run_cli, tiny_config, tmp_path, nan_at_step_one):
    out = tmp_path / "run"
    res = run_cli(
        "train",
        "-c",
        tiny_config,
        "--out",
        out,
        "--set",
        "sft.steps=0",
        "--set",
        "train.kl_coef=0.1",
        "--set",
        "train.nonfinite=stop",
    )
    assert res.code == 2
    assert "Non-finite gradient norm; stopping (train.nonfinite = 'stop')" in res.err
    assert list_checkpoints(out) == []  # nothing written from the non-finite state
