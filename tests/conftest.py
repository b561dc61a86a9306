"""Shared fixtures: the real CLI entry point in-process, tiny offline configs."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import mathrl  # noqa: F401  (first: its hook gives mlx, imported by test modules, OpenBLAS)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
# The official GSM8K, read through the same variable the product reads (never a path
# outside the repository): .ci/run sets it. Without it the GSM8K tests skip, except in CI.
_GSM8K_ENV = os.environ.get("MATHRL_GSM8K", "")
GSM8K_DIR = Path(_GSM8K_ENV).resolve() if _GSM8K_ENV else None
if GSM8K_DIR is not None and GSM8K_DIR.is_file():
    GSM8K_DIR = GSM8K_DIR.parent


def _gsm8k_missing() -> bool:
    if GSM8K_DIR is not None and (GSM8K_DIR / "train.jsonl").is_file():
        return False
    if os.environ.get("CI"):
        raise RuntimeError(f"CI needs MATHRL_GSM8K (a dir with train.jsonl), got {_GSM8K_ENV!r}")
    return True


needs_gsm8k = pytest.mark.skipif(_gsm8k_missing(), reason="set MATHRL_GSM8K to run GSM8K tests")

OVERLONG_SETS = (
    'task.rewards=[{fn = "task"}, {fn = "overlong", weight = 0.5}]',
    "task.overlong_buffer=4",
    "rollout.max_new_tokens=16",
    "data.countdown_train_size=20",
    "data.countdown_test_size=5",
)
"""task.rewards = task + 0.5 x overlong (a 4-token buffer of 16 new tokens) on a small
Countdown task: the overlong reward tests' config."""

TINY_COUNTDOWN = """
seed = 0
[model]
path = "scratch"
threads = 2
[model.scratch]
hidden = 32
layers = 1
heads = 2
vocab_size = 300
max_position = 256
[task]
name = "countdown"
system_prompt = ""
[data]
countdown_max_number = 9
countdown_max_target = 30
countdown_train_size = 60
countdown_test_size = 20
[sft]
steps = 3
batch_size = 8
max_len = 128
[warmup]
steps = 3
[rollout]
max_new_tokens = 8
batch_size = 16
[train]
steps = 2
prompts_per_step = 2
group_size = 4
lr = 1e-3
micro_batch_size = 8
[checkpoint]
every = 1
keep_last = 5
[log]
quiet = true
"""


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_COUNTDOWN)
    return path


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run `mathrl ARGS` through the real entry point (mathrl.cli.main), in-process."""
    from mathrl.cli import main

    def run(*args: object) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["mathrl", *map(str, args)])
        capsys.readouterr()
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@contextlib.contextmanager
def serve_in_thread(state) -> Iterator[str]:
    """`mathrl serve`'s app on uvicorn, 127.0.0.1 and a free port, in a thread; yields the
    base URL (without /v1)."""
    import socket
    import threading
    import time

    import uvicorn

    from mathrl.serve.app import create_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(create_app(state), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def assert_same_run(a: Path, b: Path, step: int, weights: str = "model.safetensors") -> None:
    """Two runs agree bitwise at `step`: weights (LoRA: adapter_model.safetensors), Adam
    moments, train state, logs, rollouts."""
    import torch
    from safetensors.torch import load_file

    from mathrl.io import read_jsonl

    ckpt = f"checkpoints/step_{step:08d}"
    wa = load_file(a / ckpt / "model" / weights)
    wb = load_file(b / ckpt / "model" / weights)
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa = torch.load(a / ckpt / "trainer_state.pt", weights_only=True)
    sb = torch.load(b / ckpt / "trainer_state.pt", weights_only=True)
    assert sa["train_state"] == sb["train_state"]
    for pa, pb in zip(
        sa["optimizer"]["state"].values(), sb["optimizer"]["state"].values(), strict=True
    ):
        assert torch.equal(pa["exp_avg"], pb["exp_avg"])
        assert torch.equal(pa["exp_avg_sq"], pb["exp_avg_sq"])

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]

    assert strip(read_jsonl(a / "metrics.jsonl")) == strip(read_jsonl(b / "metrics.jsonl"))
    assert read_jsonl(a / "rollouts.jsonl") == read_jsonl(b / "rollouts.jsonl")


@pytest.fixture
def same_run():
    """assert_same_run as a fixture (conftest is not importable as a module)."""
    return assert_same_run


@pytest.fixture
def use_reward(monkeypatch):
    """use_reward(fn): Countdown scores with fn(completion, *its usual args) in this test.

    fn must be a module-level function (it is pickled to the reward worker processes).
    """
    from mathrl.tasks.countdown import CountdownTask

    real = CountdownTask.reward_call

    def use(fn) -> None:
        monkeypatch.setattr(CountdownTask, "reward_call", lambda self, ex: (fn, real(self, ex)[1]))

    return use


@pytest.fixture
def run_train(run_cli, tiny_config):
    """run_train(out, "key=value", ..., extra=(...)): `mathrl train` on the tiny config."""

    def run(out: Path, *sets: str, extra: tuple = (), config: Path | None = None) -> CliResult:
        args = [a for s in sets for a in ("--set", s)]
        return run_cli("train", "-c", config or tiny_config, "--out", out, *args, *extra)

    return run
