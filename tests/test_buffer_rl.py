"""The decoupled loop's rollout: the same prompt filter and step seeds as online RL, and a
buffer that keeps what was scored (three bugs of the first version, one test each)."""

from __future__ import annotations

import json

import torch

from mathrl import buffer_rl
from mathrl.config import load_config
from mathrl.data import PromptStream, make_task, training_examples
from mathrl.groups import Group
from mathrl.io import append_jsonl, read_jsonl
from mathrl.rewards import RewardResult
from mathrl.rollout.types import Completion

SETS = [
    "task.name=countdown",
    "data.countdown_train_size=40",
    "data.countdown_test_size=8",
    "data.countdown_max_number=9",
    "data.countdown_max_target=30",
    "train.prompts_per_step=3",
    "train.group_size=2",
    "rollout.batch_size=6",
]


def fake_rollout(monkeypatch, calls: list) -> None:
    """collect_groups that records (step, prompt ids) and returns one scored group per prompt."""

    def collect(cfg, stream, engine, pool, task, cache, tokenizer, step):
        examples = stream.take(cfg.train.prompts_per_step)
        calls.append((step, [ex.id for ex in examples]))
        groups = []
        for ex in examples:
            comps = [
                Completion(0, j, [1, 2], [3, 4], f"c{j}", "eos", [-0.5, -0.25]) for j in (0, 1)
            ]
            results = [RewardResult(1.0, correct=False, correct_lenient=True, reason="ok")] * 2
            groups.append(Group(ex, [1, 2], comps, results))
        return groups, {}

    monkeypatch.setattr(buffer_rl, "collect_groups", collect)
    monkeypatch.setattr(buffer_rl, "rollout_engine", lambda *a, **k: None)


def test_rollout_samples_with_the_global_steps_seeds_and_positions(monkeypatch, tmp_path):
    cfg = load_config(overrides=SETS, env=False)
    task = make_task(cfg)
    calls: list = []
    fake_rollout(monkeypatch, calls)
    # a loop of 3 steps in iterations of 2: iteration 1 runs the single global step 2
    buffer_rl.rollout_iteration(cfg, task, torch.nn.Linear(1, 1), None, tmp_path, 1, 1, 2)
    stream = PromptStream.at_position(training_examples(cfg, task), cfg.seed, 0)
    online = [[ex.id for ex in stream.take(3)] for _ in range(3)]  # steps 0, 1, 2 online
    assert calls == [(2, online[2])]  # the step's own seed (was it*1000+s) and prompts
    rows = read_jsonl(buffer_rl.buffer_path(tmp_path, 1))
    assert {r["step"] for r in rows} == {3}  # 1-based, like rollouts.jsonl of online RL


def test_rollout_keeps_only_prompts_in_the_pass_rate_band(monkeypatch, tmp_path):
    base = load_config(overrides=SETS, env=False)
    ids = [ex.id for ex in make_task(base).examples("train")]
    rates = tmp_path / "pass_rates.jsonl"
    append_jsonl(
        rates,
        [
            {"prompt_id": i, "pass_rate": 0.5 if k % 4 == 0 else 0.0, "n": 4}
            for k, i in enumerate(ids)
        ],
    )
    cfg = load_config(
        overrides=[*SETS, f"data.pass_rates={rates}", "data.keep_pass_rate=[0.25, 0.75]"],
        env=False,
    )
    calls: list = []
    fake_rollout(monkeypatch, calls)
    buffer_rl.rollout_iteration(cfg, make_task(cfg), torch.nn.Linear(1, 1), None, tmp_path, 0, 3)
    kept = {i for k, i in enumerate(ids) if k % 4 == 0}
    sampled = {pid for _, pids in calls for pid in pids}
    assert sampled and sampled <= kept  # was: every training prompt


def test_buffer_keeps_the_lenient_grade(monkeypatch, tmp_path):
    cfg = load_config(overrides=SETS, env=False)
    calls: list = []
    fake_rollout(monkeypatch, calls)
    path = buffer_rl.rollout_iteration(
        cfg, make_task(cfg), torch.nn.Linear(1, 1), None, tmp_path, 0, 1
    )
    rows = read_jsonl(path)
    assert all(r["correct"] is False and r["correct_lenient"] is True for r in rows)
    groups = buffer_rl.load_buffer(path, group_size=2)
    results = [r for g in groups for r in g.results]
    assert results and all(
        r.correct_lenient and not r.correct for r in results
    )  # was: copied strict
    # a buffer from before the field existed reads as not lenient-correct, not as strict
    old = tmp_path / "old.jsonl"
    old.write_text(
        "".join(
            json.dumps({k: v for k, v in r.items() if k != "correct_lenient"}) + "\n" for r in rows
        )
    )
    assert not any(r.correct_lenient for g in buffer_rl.load_buffer(old, 2) for r in g.results)
