"""Task mixtures and the learnability curriculum: hand-computed weights, draws that follow
the pass rates, exact resume, the same prompts on two ranks, and the config's refusals."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import OVERLONG_SETS
from mathrl.config import load_config
from mathrl.curriculum import STATE_KEY, WeightedStream, estimate, weight
from mathrl.data import StreamPosition, make_task, prompt_stream, training_examples
from mathrl.errors import ConfigError, DataError, MathrlError
from mathrl.io import read_jsonl
from mathrl.tasks import Example
from mathrl.tasks.arithmetic import ArithmeticTask
from mathrl.tasks.mixture import Component, MixtureTask

MIXTURE = (
    'task.mixture=[{name = "countdown"}, {name = "add-1digit", weight = 2, set = '
    '["task.name=arithmetic", "data.arithmetic_digits=1", "data.arithmetic_train_size=40", '
    '"data.arithmetic_test_size=10"]}]'
)


@dataclass
class _Result:
    correct: bool


@dataclass
class _Group:
    example: Example
    results: list[_Result]


def _group(ex: Example, hits: int, n: int = 8) -> _Group:
    return _Group(ex, [_Result(i < hits) for i in range(n)])


def _examples(prefix: str, n: int) -> list[Example]:
    return [Example(id=f"{prefix}{i}", question=f"{prefix} {i}", gold="1") for i in range(n)]


def test_estimates_and_weights_by_hand():
    # 3 of 8 right, task at 1/2: (3 + 2 * 0.5) / (8 + 2) = 0.4, weight 0.4 * 0.6 = 0.24
    assert estimate(3, 8, 0.5) == pytest.approx(0.4)
    assert weight(0.4, 0.02) == pytest.approx(0.24)
    # never seen: the task's rate; solved and failed prompts keep the floor
    assert estimate(0, 0, 0.3) == pytest.approx(0.3)
    assert weight(estimate(8, 8, 1.0), 0.02) == 0.02
    assert weight(estimate(0, 8, 0.0), 0.05) == 0.05
    assert weight(0.5, 0.02) == 0.25


def test_draws_move_to_the_learnable_task_and_repeat_exactly():
    a, b = _examples("a", 50), _examples("b", 50)
    state = StreamPosition()
    stream = WeightedStream(a + b, 7, state, 0.02, task_of=lambda ex: ex.id[0])
    first = stream.take(20)
    assert len({ex.id for ex in first}) == 20 and state.cursor == 20
    # nothing seen yet, equal tasks: both at 1/2, weight 0.25 each
    assert stream.weights() == pytest.approx([0.25 / 50] * 100)
    # task a: every sample wrong; task b: half right
    metrics = stream.observe([_group(ex, 0 if ex.id[0] == "a" else 4) for ex in first])
    n_a = sum(ex.id[0] == "a" for ex in first)
    assert metrics["curriculum/seen"] == 20
    assert metrics["curriculum/pass_rate/a"] == 0.0 and metrics["curriculum/pass_rate/b"] == 0.5
    # b's seen prompts: (4 + 2 * 0.5) / 10 = 0.5, inside the zone; a's: 0 = outside
    assert metrics["curriculum/zone"] == 20 - n_a
    w = dict(zip([ex.id for ex in a + b], stream.weights(), strict=True))
    assert w["a0"] == pytest.approx(0.02 / 50)  # unseen or not, task a is at 0: the floor
    assert w["b49"] == pytest.approx(0.25 / 50)
    # b holds 0.25 / (0.25 + 0.02) = 93 % of the weight: the next draw is mostly b
    again = copy.deepcopy(state)
    second = stream.take(40)
    assert sum(ex.id[0] == "b" for ex in second) >= 30
    # the same counts and cursor draw the same prompts (what a resumed run relies on)
    resumed = WeightedStream(a + b, 7, again, 0.02, task_of=lambda ex: ex.id[0])
    assert [ex.id for ex in resumed.take(40)] == [ex.id for ex in second]
    assert again.extra[STATE_KEY]["tasks"]["b"] == [4.0 * (20 - n_a), 8.0 * (20 - n_a)]


def test_mixture_weights_are_shares_of_the_draws_whatever_the_task_sizes():
    a, b = _examples("a", 400), _examples("b", 40)
    weights = {"a": 1.0, "b": 3.0}
    stream = WeightedStream(
        a + b,
        0,
        StreamPosition(),
        0.02,
        learnability=False,
        task_of=lambda ex: ex.id[0],
        task_weight=lambda ex: weights[ex.id[0]],
    )
    drawn = Counter(ex.id[0] for _ in range(10) for ex in stream.take(20))
    # b is a tenth of the prompts but three quarters of the weight
    assert drawn["b"] / 200 == pytest.approx(0.75, abs=0.08)


def test_a_mixture_keeps_each_tasks_prompt_and_reward():
    cfg = load_config(None, [MIXTURE, "data.countdown_train_size=30", "data.countdown_test_size=5"])
    task = make_task(cfg)
    assert isinstance(task, MixtureTask)
    assert [(c.label, c.weight) for c in task.components] == [
        ("countdown", 1.0),
        ("add-1digit", 2.0),
    ]
    assert len(task.examples("train")) == 30 + 40 and len(task.examples("test")) == 5 + 10
    add = next(ex for ex in task.examples("train") if task.label_of(ex) == "add-1digit")
    cd = next(ex for ex in task.examples("train") if task.label_of(ex) == "countdown")
    assert add.question.startswith("What is ") and "Final:" in task.response(add)
    fn, args = task.reward_call(add)
    assert fn(f"{add.solution}\nFinal: {add.gold}", *args).correct
    assert not fn("Final: -1", *args).correct
    cd_fn, cd_args = task.reward_call(cd)
    assert cd_fn.__name__ != fn.__name__ or cd_args != args
    assert task.weight_of(add) == 2.0
    # a resume with another mixture is refused like one with other data
    other = make_task(load_config(None, [MIXTURE.replace("weight = 2", "weight = 3")]))
    assert other.fingerprint != task.fingerprint


def test_a_mixture_adds_each_tasks_overlong_term_by_token_count():
    """task.rewards' overlong term under a mixture: each completion gets its own task's
    penalty (here the arithmetic entry sets a buffer of 8 of 16 tokens, countdown keeps 4),
    whatever order the completions come in."""
    from mathrl.groups import score_completions
    from mathrl.rewards.pool import RewardPool
    from mathrl.rollout.types import Completion

    sets = [
        MIXTURE.replace(
            '"data.arithmetic_test_size=10"',
            '"data.arithmetic_test_size=10", "task.overlong_buffer=8"',
        ),
        *OVERLONG_SETS,
    ]
    task = make_task(load_config(None, sets, env=False))
    add = next(ex for ex in task.examples("train") if task.label_of(ex) == "add-1digit")
    cd = next(ex for ex in task.examples("train") if task.label_of(ex) == "countdown")
    # 14 tokens: countdown's penalty (14 - 12) / 4 = 0.5, arithmetic's (14 - 8) / 8 = 0.75
    texts = [task.response(add), task.response(cd), task.response(add)]
    comps = [
        Completion(p, j, [1], [7] * n, t, "eos", [0.0] * n)
        for j, (p, n, t) in enumerate(zip((0, 1, 0), (14, 14, 4), texts, strict=True))
    ]
    with RewardPool(5.0, 0) as pool:
        results = score_completions(pool, task, [add, cd], comps)
    assert [r.components["overlong"] for r in results] == [-0.75, -0.5, 0.0]
    assert [r.reward for r in results] == [1.0 - 0.375, 1.0 - 0.25, 1.0]


def test_a_mixture_refuses_an_example_in_two_tasks():
    one = ArithmeticTask("add", 1, train_size=20, test_size=5)
    with pytest.raises(DataError, match="is in both 'x' and 'y'"):
        MixtureTask([Component("x", 1.0, one), Component("y", 1.0, one)])


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ['task.mixture=[{name = "a", weight = 0}]'],
            "task.mixture 'a': weight must be a finite number > 0",
        ),
        (
            ['task.mixture=[{name = "countdown"}, {name = "countdown"}]'],
            "names must be unique, repeated: countdown",
        ),
        (['task.mixture=[{name = "a", set = ["data.x"]}]'], "set entries are key=value overrides"),
        (['task.mixture=[{name = "a", sets = []}]'], "Unknown key 'sets' in task.mixture"),
        (["data.curriculum=learnable"], "data.curriculum"),
        (["data.curriculum_floor=0.3"], r"data.curriculum_floor must be in \(0, 0.25\]"),
    ],
)
def test_bad_mixture_and_curriculum_settings_are_refused(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_a_mixture_entry_with_a_bad_override_names_the_entry():
    cfg = load_config(None, ['task.mixture=[{name = "x", set = ["data.arithmetic_digitz=2"]}]'])
    with pytest.raises(
        ConfigError, match=r"task.mixture 'x': Unknown config key 'data.arithmetic_digitz'"
    ):
        make_task(cfg)


def test_uniform_single_task_keeps_the_shuffled_epochs():
    cfg = load_config(None, ["data.countdown_train_size=30"])
    task = make_task(cfg)
    stream = prompt_stream(cfg, task, training_examples(cfg, task), StreamPosition())
    assert type(stream).__name__ == "PromptStream" and stream.observe([]) == {}


def _parity(completion: str, *args):
    """Countdown reward for these tests: correct iff the completion has an even length."""
    from mathrl.rewards.scoring import RewardResult

    ok = len(completion) % 2 == 0
    return RewardResult(reward=float(ok), correct=ok, format_ok=True, reason="ok")


CURRICULUM = (
    MIXTURE,
    "data.curriculum=learnability",
    "train.steps=4",
    "log.rollouts_every=1",
    "warmup.steps=0",
)


def test_learnability_run_resumes_bitwise_and_logs_the_zone(
    run_train, tmp_path, use_reward, same_run
):
    use_reward(_parity)  # countdown groups with mixed rewards; a scratch model gets add wrong
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_train(straight, *CURRICULUM).code == 0
    first = run_train(
        split, *CURRICULUM[:-2], "train.steps=2", "log.rollouts_every=1", "warmup.steps=0"
    )
    assert first.code == 0, first.err
    resumed = run_train(split, *CURRICULUM, extra=("--resume", "--allow-config-change"))
    assert resumed.code == 0, resumed.err
    same_run(straight, split, 4)  # weights, moments, train state (the counts), logs
    rows = [r for r in read_jsonl(straight / "metrics.jsonl") if "curriculum/zone" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["curriculum/pass_rate/add-1digit"] == 0.0 for r in rows)
    assert rows[-1]["curriculum/seen"] >= rows[0]["curriculum/seen"] > 0
    records = read_jsonl(straight / "rollouts.jsonl")
    assert {r["task"] for r in records} <= {"countdown", "add-1digit"}
    # after step 1, countdown (about half right) outweighs add (all wrong) 0.25 : 0.02
    later = Counter(r["task"] for r in records if r["step"] > 1)
    assert later["countdown"] > later["add-1digit"]


@pytest.mark.slow
def test_two_ranks_draw_the_same_curriculum_prompts_as_one(tmp_path, tiny_config):
    """The counts are updated from the whole batch on every rank, so two ranks draw what
    one process draws, step by step."""
    sets = [
        MIXTURE,
        "data.curriculum=learnability",
        "train.steps=3",
        "train.prompts_per_step=4",
        "log.rollouts_every=1",
        "warmup.steps=0",
        'task.rewards=[{fn = "reward_fixtures:brevity", completions = "text"}]',
        "model.threads=1",
    ]
    flags = [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    runs = {}
    for name, extra in (("one", []), ("two", ["--nproc", "2"])):
        out = tmp_path / name
        cmd = [
            sys.executable,
            "-m",
            "mathrl",
            "train",
            *extra,
            "-c",
            tiny_config,
            "--out",
            out,
            *flags,
        ]
        proc = subprocess.run(
            list(map(str, cmd)), capture_output=True, text=True, env=env, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = [
            (r["step"], r["prompt_id"], r["task"]) for r in read_jsonl(out / "rollouts.jsonl")
        ]
    assert runs["one"] == runs["two"] and len(runs["one"]) == 3 * 4 * 4


def test_the_buffer_commands_refuse_a_curriculum(run_cli, tiny_config, tmp_path):
    res = run_cli(
        "rollout",
        "-c",
        tiny_config,
        "--out",
        tmp_path / "b",
        "--set",
        "data.curriculum=learnability",
    )
    assert res.code != 0 and "data.curriculum and task.mixture are for `mathrl train`" in res.err


def test_an_empty_training_split_is_an_error():
    with pytest.raises(MathrlError, match="training split is empty"):
        WeightedStream([], 0, StreamPosition(), 0.02)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_skills_recipe_runs_another_architecture(run_cli, tmp_path):
    """skills/cpu names nothing of SmolLM2 outside [model]: a Llama-shaped scratch model
    (what `model.path` would name for a real one) runs the whole recipe: the probed warm-up,
    the mixture under the learnability curriculum, GRPO."""
    out = tmp_path / "skills"
    sets = [
        "model.path=scratch",
        "model.scratch.arch=llama",
        "model.scratch.hidden=32",
        "model.scratch.layers=1",
        "model.scratch.heads=2",
        "train.steps=2",
        "train.prompts_per_step=2",
        "warmup.auto_steps=2",
        "model.threads=2",
    ]
    res = run_cli(
        "train", "-c", "skills/cpu", "--out", out, *[a for s in sets for a in ("--set", s)]
    )
    assert res.code == 0, res.err
    decision = json.loads((out / "warmup_sft" / "decision.json").read_text())
    assert decision["warmup"] is True and decision["first_round_correct"] == 0.0
    assert decision["after_correct"] is not None
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows if "curriculum/zone" in r] == [1, 2]
    assert {r["task"] for r in read_jsonl(out / "rollouts.jsonl")} <= {"add-2digit", "word-2digit"}
    assert 'arch = "llama"' in (out / "config.toml").read_text()
