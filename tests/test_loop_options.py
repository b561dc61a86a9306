"""What the loop's options promise, each checked in a real tiny run (or on the stream itself)."""

from __future__ import annotations

import zlib

import pytest

from mathrl.data import PromptStream, StreamPosition
from mathrl.io import read_jsonl
from mathrl.rewards.scoring import RewardResult
from mathrl.rl import TrainState
from mathrl.tasks import Example


def test_prompt_stream_resumes_at_its_cursor():
    examples = [Example(f"p{i}", str(i), str(i)) for i in range(5)]
    straight = PromptStream(examples, seed=7, state=TrainState())
    first = [e.id for e in straight.take(7)]  # crosses into the second epoch
    rest = [e.id for e in straight.take(6)]
    assert sorted(first[:5]) == [e.id for e in examples]  # an epoch is a permutation
    state = TrainState(epoch=1, cursor=2)  # where `straight` stood after 7 prompts
    assert [e.id for e in PromptStream(examples, 7, state).take(6)] == rest
    again = PromptStream.at_position(examples, 7, 7)
    assert [e.id for e in again.take(6)] == rest
    assert PromptStream(examples, 8, StreamPosition()).take(5) != first[:5]  # seed matters


def hashed_reward(completion: str, *args) -> RewardResult:
    """Reward 1 for about a third of the completions, by a stable hash of the text."""
    hit = zlib.crc32(completion.encode()) % 3 == 0
    return RewardResult(reward=float(hit), correct=hit, reason="ok")


def rare_reward(completion: str, *args) -> RewardResult:
    """Reward 1 for about a fifth of the completions: many groups are all-zero."""
    hit = zlib.crc32(completion.encode()) % 5 == 0
    return RewardResult(reward=float(hit), correct=hit, reason="ok")


def zero_reward(completion: str, *args) -> RewardResult:
    return RewardResult(reward=0.0, reason="ok")


def groups_of(rows: list[dict]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in rows:
        out.setdefault(f"{r['step']}/{r['group_id']}", []).append(r["reward"])
    return out


def test_drop_zero_std_keeps_no_flat_group(run_train, tmp_path, use_reward):
    use_reward(rare_reward)
    out = tmp_path / "run"
    res = run_train(out, "train.drop_zero_std=true", "warmup.steps=0", "train.steps=3")
    assert res.code == 0, res.err
    metrics = [m for m in read_jsonl(out / "metrics.jsonl") if "reward/mean" in m]
    groups = groups_of(read_jsonl(out / "rollouts.jsonl"))
    assert groups and all(len(set(rewards)) > 1 for rewards in groups.values())
    assert all(m["reward/frac_zero_std"] == 0.0 for m in metrics)
    assert sum(m["rollout/dropped_groups"] for m in metrics) > 0  # the option did drop some


def test_min_positive_resamples_until_enough(run_train, tmp_path, use_reward):
    use_reward(hashed_reward)
    out = tmp_path / "run"
    res = run_train(out, "train.min_positive=5", "warmup.steps=0", "train.group_size=4")
    assert res.code == 0, res.err
    metrics = [m for m in read_jsonl(out / "metrics.jsonl") if "reward/mean" in m]
    by_step: dict[int, float] = {}
    for r in read_jsonl(out / "rollouts.jsonl"):
        by_step[r["step"]] = by_step.get(r["step"], 0) + (r["reward"] > 0)
    for m in metrics:
        short = m.get("rollout/short_batch", 0.0)
        assert by_step[m["step"]] >= 5 or short == 1.0
    assert any(m["rollout/rounds"] > 1 for m in metrics)  # it had to resample


def test_max_total_rollouts_bounds_resampling(run_train, tmp_path, use_reward):
    use_reward(zero_reward)  # every group is flat: drop_zero_std would resample forever
    out = tmp_path / "run"
    res = run_train(
        out, "train.drop_zero_std=true", "train.max_total_rollouts=24", "warmup.steps=0"
    )
    assert res.code == 0, res.err
    metrics = [m for m in read_jsonl(out / "metrics.jsonl") if "rollout/sampled" in m]
    # 2 prompts x 4 samples in the first round, then one prompt (4) a round, up to >= 24
    assert [m["rollout/sampled"] for m in metrics] == [24, 24]
    assert [m["rollout/short_batch"] for m in metrics] == [1.0, 1.0]
    assert [m["train/trained_seqs"] for m in metrics] == [0, 0]  # nothing reached the loss


@pytest.mark.parametrize("mu", [1, 2])
def test_mu_reuses_old_logprobs_in_a_run(run_train, tmp_path, use_reward, mu):
    use_reward(hashed_reward)
    out = tmp_path / "run"
    res = run_train(out, f"train.mu={mu}", "warmup.steps=0", "train.lr=0.01")
    assert res.code == 0, res.err
    metrics = [m for m in read_jsonl(out / "metrics.jsonl") if "loss/approx_kl" in m]
    trained = [m for m in metrics if m["train/trained_seqs"] > 0]
    assert trained
    if mu == 1:  # old log-probs are the current ones: ratio 1 exactly
        assert all(m["loss/approx_kl"] == 0.0 for m in trained)
    else:  # the second update sees the policy moved by the first
        assert all(m["loss/approx_kl"] > 0.0 for m in trained)
