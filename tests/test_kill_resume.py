"""SIGKILL the training process mid-run; --resume must reproduce the uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mathrl.io import read_jsonl


def _train(config, out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "mathrl.cli",
        "train",
        "-c",
        str(config),
        "--out",
        str(out),
        "--set",
        "train.steps=6",
        "--set",
        "checkpoint.every=2",
        # a reward that varies (so RL moves the weights), a KL term (its reference must be
        # the start weights after the resume too) and a schedule (restored mid-way)
        "--set",
        'task.rewards=[{fn = "reward_fixtures:brevity", completions = "text"}]',
        "--set",
        "rollout.max_new_tokens=16",
        "--set",
        "train.kl_coef=0.05",
        "--set",
        "train.schedule=cosine",
        "--set",
        "train.warmup_steps=2",
        *extra,
    ]
    tests = str(Path(__file__).parent)  # reward_fixtures, imported by path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigkill_then_resume_is_bitwise_identical(tiny_config, tmp_path, same_run):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _train(tiny_config, straight)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    proc = _train(tiny_config, killed)
    # kill once step 3 has been logged: after the step-2 checkpoint, mid-way to step 4
    deadline = time.time() + 300
    while time.time() < deadline:
        path = killed / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= 3:
            break
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc = _train(tiny_config, killed, "--resume")
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    same_run(straight, killed, 6)  # weights, Adam moments, train state, metrics, rollouts
    rows = read_jsonl(straight / "metrics.jsonl")
    assert all(r["optim/grad_norm"] > 0 for r in rows if "optim/grad_norm" in r)
    assert any(r.get("loss/kl", 0) > 0 for r in rows if r["step"] > 3)  # after the resume point
