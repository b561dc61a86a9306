"""The automatic SFT warm-up decision, both ways, and what it leaves on disk."""

from __future__ import annotations

import json

import pytest

from mathrl.config import load_config
from mathrl.io import read_jsonl
from mathrl.rewards.scoring import RewardResult
from mathrl.tasks.countdown import CountdownTask
from mathrl.warmup import decide


def _cfg(**warmup):
    return load_config(None, [f"warmup.{k}={v}" for k, v in warmup.items()])


@pytest.mark.parametrize(
    ("warmup", "rate", "want", "steps", "reason"),
    [
        ({}, None, False, 0, "no warm-up configured"),
        ({"steps": 50}, None, True, 50, "warmup.steps = 50"),
        ({"steps": 50, "min_positive": 0.2}, 0.9, True, 50, "warmup.steps = 50"),
        (
            {"min_positive": 0.2},
            0.1,
            True,
            200,
            "0.100 of first-round samples correct < warmup.min_positive = 0.2",
        ),
        ({"min_positive": 0.2, "auto_steps": 7}, 0.0, True, 7, "0.000 of first-round"),
        (
            {"min_positive": 0.2},
            0.2,
            False,
            0,
            "0.200 of first-round samples correct >= warmup.min_positive = 0.2: no warm-up",
        ),
    ],
)
def test_decision_table(warmup, rate, want, steps, reason):
    d = decide(_cfg(**warmup), rate)
    assert (d.warmup, d.steps, d.first_round_correct) == (want, steps, rate)
    assert reason in d.reason


@pytest.mark.parametrize(
    ("sets", "strict", "lenient", "want", "steps", "reason"),
    [
        # the skill is there, the format is not: the format reward teaches it, no SFT
        ((), 0.0, 0.3, False, 0, "0.300 leniently: only the format is missing; RL's format"),
        (("task.reward_scheme=binary",), 0.05, 0.2, True, 50, "a short warm-up (50 steps)"),
        # lenient below the bar as well: the skill is missing, the full warm-up
        ((), 0.0, 0.1, True, 200, "< warmup.min_positive = 0.2: SFT warm-up first"),
        ((), 0.25, 0.9, False, 0, ">= warmup.min_positive = 0.2: no warm-up"),
    ],
)
def test_format_only_skips_or_shortens_the_warmup(sets, strict, lenient, want, steps, reason):
    cfg = load_config(None, ["warmup.min_positive=0.2", *sets])
    d = decide(cfg, strict, lenient)
    assert (d.warmup, d.steps, d.first_round_correct, d.first_round_lenient) == (
        want,
        steps,
        strict,
        lenient,
    )
    assert reason in d.reason


def test_bad_warmup_values_are_refused():
    from mathrl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"warmup.min_positive must be in \[0, 1\], got 1.5"):
        load_config(None, ["warmup.min_positive=1.5"])
    with pytest.raises(ConfigError, match="warmup.steps must be >= 0"):
        load_config(None, ["warmup.steps=-1"])


def always_correct(completion: str, *args) -> RewardResult:
    return RewardResult(reward=1.0, correct=True, format_ok=True, reason="ok")


PROBE = ("warmup.steps=0", "warmup.min_positive=0.5", "warmup.auto_steps=2")


def test_weak_model_is_warmed_up_first(run_train, tmp_path):
    out = tmp_path / "run"
    res = run_train(out, *PROBE)
    assert res.code == 0, res.err
    decision = json.loads((out / "warmup_sft" / "decision.json").read_text())
    # an untrained scratch model gets nothing right in its first round
    assert decision == {
        "warmup": True,
        "steps": 2,
        "reason": "0.000 of first-round samples correct < warmup.min_positive = 0.5: SFT warm-up first",
        "first_round_correct": 0.0,
        "first_round_lenient": 0.0,
        # the same round from the warmed-up model: 2 SFT steps teach a scratch model nothing
        "after_correct": 0.0,
        "after_lenient": 0.0,
    }
    assert "warm-up decision: 0.000 of first-round" in res.err
    assert [m["step"] for m in read_jsonl(out / "warmup_sft" / "metrics.jsonl")] == [1, 2]
    data = read_jsonl(out / "warmup_sft" / "data.jsonl")
    assert len(data) == 60  # every train prompt of the tiny config
    task = CountdownTask(max_number=9, max_target=30, train_size=60, test_size=20)
    from mathrl.rewards.scoring import score_countdown

    for row in data[:10]:
        ex = next(e for e in task.examples("train") if e.id == row["prompt_id"])
        assert row["responses"] and all(
            score_countdown(r, ex.meta["nums"], ex.meta["target"], "final_line", "binary").correct
            for r in row["responses"]
        )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["warmup"] == decision


def test_strong_model_skips_the_warmup(run_train, tmp_path, use_reward):
    use_reward(always_correct)
    out = tmp_path / "run"
    res = run_train(out, *PROBE)
    assert res.code == 0, res.err
    decision = json.loads((out / "warmup_sft" / "decision.json").read_text())
    assert (decision["warmup"], decision["first_round_correct"]) == (False, 1.0)
    assert not (out / "warmup_sft" / "metrics.jsonl").exists()
    assert not (out / "warmup_sft" / "data.jsonl").exists()
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [1, 2]


def test_the_report_states_accuracy_before_and_after_the_warmup():
    from mathrl.report.headline import run_facts, warmup_text

    d = {
        "warmup": True,
        "steps": 60,
        "first_round_correct": 0.0,
        "first_round_lenient": 0.03125,
        "after_correct": 0.28125,
        "after_lenient": 0.3,
    }
    assert warmup_text(d) == "strict 0.0 % -> 28.1 %, lenient 3.1 % -> 30.0 %"
    skipped = {"warmup": False, "first_round_correct": 0.5, "first_round_lenient": 0.75}
    assert warmup_text(skipped) == "strict 50.0 %, lenient 75.0 %"
    facts = dict(run_facts({"warmup": d, "steps": 25}, {}, {}, []))
    assert facts["SFT warm-up"] == "60 steps"
    assert facts["first-round accuracy (warm-up probe)"] == warmup_text(d)


BOXED = """
seed = 0
[model]
path = "scratch"
threads = 2
[model.scratch]
hidden = 64
layers = 2
heads = 2
vocab_size = 400
max_position = 256
[task]
name = "arithmetic"
prompt_style = "hash"
[data]
arithmetic_kind = "add"
arithmetic_digits = 1
arithmetic_test_size = 30
[sft]
steps = 300
batch_size = 64
lr = 3e-3
max_len = 128
[warmup]
min_positive = 0.3
[rollout]
max_new_tokens = 24
batch_size = 64
[train]
steps = 1
prompts_per_step = 8
group_size = 4
micro_batch_size = 32
[checkpoint]
every = 0
keep_last = 1
[log]
quiet = true
"""


@pytest.mark.slow
@pytest.mark.timeout(900)  # 300 SFT steps of a scratch model: ~1 min alone, more beside others
def test_a_model_with_the_skill_in_another_format_skips_the_warmup(run_cli, tmp_path):
    """A scratch model taught to answer 1-digit sums in \\boxed{} (to prompts asking for
    `####`) has the skill but not the format: the probe finds lenient accuracy above
    warmup.min_positive and strict accuracy at 0, so the run skips the SFT warm-up (on
    `####` solutions) and leaves the format to RL's format reward."""
    from mathrl.tasks.arithmetic import ArithmeticTask
    from mathrl.tasks.prompts import format_answer

    config = tmp_path / "boxed.toml"
    config.write_text(BOXED)
    task = ArithmeticTask("add", 1, prompt_style="hash", test_size=30)
    pairs = tmp_path / "boxed.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(
                {
                    "messages": task.messages(ex)
                    + [
                        {
                            "role": "assistant",
                            "content": format_answer(ex.solution, ex.gold, "boxed"),
                        }
                    ]
                }
            )
            + "\n"
            for ex in task.examples("train")
        )
    )
    sft = run_cli("sft", "-c", config, "--data", pairs, "--out", tmp_path / "boxed")
    assert sft.code == 0, sft.err
    run = tmp_path / "rl"
    model = tmp_path / "boxed" / "checkpoints" / "step_00000300" / "model"
    res = run_cli("train", "-c", config, "--out", run, "--set", f"model.path={model}")
    assert res.code == 0, res.err
    d = json.loads((run / "warmup_sft" / "decision.json").read_text())
    assert d["warmup"] is False and d["steps"] == 0
    assert d["first_round_correct"] == 0.0  # never `####`
    assert d["first_round_lenient"] >= 0.3  # but the sums are right (measured: ~0.5)
    assert "only the format is missing; RL's format reward teaches it, no warm-up" in d["reason"]
    assert not (run / "warmup_sft" / "metrics.jsonl").exists()
