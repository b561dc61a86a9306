"""Expert iteration: the selection rule, and the command's files, rounds and resume."""

from __future__ import annotations

import json

import pytest

from mathrl.expert_iter import round_prompts, select_correct
from mathrl.io import read_jsonl
from mathrl.rewards.scoring import RewardResult
from mathrl.tasks import Example


def _ex(i: int) -> Example:
    return Example(id=f"p{i}", question="q", gold="1", meta={})


def _s(text: str, correct: bool) -> dict:
    return {"completion": text, "correct": correct}


def test_select_correct_dedupes_and_caps():
    exs = [_ex(0), _ex(1), _ex(2)]
    scored = [
        [_s("a", True), _s("a", True), _s("b", False), _s("c", True), _s("d", True)],
        [_s("x", False), _s("y", False)],
        [_s("z", True)],
    ]
    assert select_correct(exs, scored, max_per_prompt=2) == [
        {"prompt_id": "p0", "response": "a"},
        {"prompt_id": "p0", "response": "c"},
        {"prompt_id": "p2", "response": "z"},
    ]
    assert len(select_correct(exs, scored, max_per_prompt=10)) == 4


def test_round_prompts_are_seeded_distinct_and_differ_by_round():
    exs = [_ex(i) for i in range(50)]
    r1 = round_prompts(exs, 10, seed=0, round_no=1)
    assert r1 == round_prompts(exs, 10, seed=0, round_no=1)
    assert len({e.id for e in r1}) == 10
    assert r1 != round_prompts(exs, 10, seed=0, round_no=2)
    assert len(round_prompts(exs, 99, seed=0, round_no=1)) == 50


def sometimes_correct(completion: str, *args) -> RewardResult:
    """Every completion with an even length counts as correct (a stand-in expert)."""
    ok = len(completion) % 2 == 0
    return RewardResult(reward=float(ok), correct=ok, format_ok=True, reason="ok")


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_expert_iter_command_rounds_and_resume(run_cli, tiny_config, tmp_path, use_reward, backend):
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    use_reward(sometimes_correct)
    out = tmp_path / "ei"
    sets = [
        "expert_iter.prompts=4",
        "expert_iter.samples=4",
        "expert_iter.sft_steps=2",
        f"backend={backend}",
    ]
    args = ["expert-iter", "-c", tiny_config, "--out", out]
    for s in sets:
        args += ["--set", s]
    res = run_cli(*args, "--set", "expert_iter.rounds=1")
    assert res.code == 0, res.err
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1]
    kept = read_jsonl(out / "expert_iter" / "round_001" / "data.jsonl")
    assert len(kept) == rows[0]["ei/kept"] and kept
    assert all(len(k["response"]) % 2 == 0 for k in kept)
    # at most max_per_prompt (2) distinct correct texts for each of the 4 prompts
    assert 0 < rows[0]["ei/kept"] <= min(8, round(rows[0]["ei/sample_accuracy"] * 16))
    assert [m["step"] for m in read_jsonl(out / "expert_iter/round_001/metrics.jsonl")] == [1, 2]
    assert not (out / "expert_iter" / "round_001" / "checkpoints").exists()  # folded into step 1
    manifest = json.loads((out / "checkpoints" / "step_00000001" / "manifest.json").read_text())
    assert manifest["kind"] == "expert_iter"
    # one more round: resumes after round 1 without redoing it
    res = run_cli(*args, "--set", "expert_iter.rounds=2", "--resume", "--allow-config-change")
    assert res.code == 0, res.err
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    assert read_jsonl(out / "expert_iter" / "round_001" / "data.jsonl") == kept
    assert (out / "checkpoints" / "step_00000002").is_dir()
