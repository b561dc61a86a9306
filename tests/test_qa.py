"""Your own data and rewards: the qa task, graders, TRL-style reward functions and their checks."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import OVERLONG_SETS
from mathrl.config import load_config
from mathrl.data import make_task, reward_columns
from mathrl.errors import ConfigError, DataError
from mathrl.io import read_jsonl
from mathrl.rewards import RewardFn, score_answer
from mathrl.rewards.functions import preflight, score_with_functions
from mathrl.rewards.graders import choice_letter, normalize_text
from mathrl.tasks.qa import QATask

# ---------------------------------------------------------------- graders

GRADED = [
    # grader, completion, gold, style -> (correct, correct_lenient, format_ok)
    ("numeric", "so\nFinal: 1,000", "1000", "final_line", (True, True, True)),
    ("numeric", "so it is 12", "12", "final_line", (False, True, False)),
    ("numeric", "Final: twelve", "12", "final_line", (False, False, False)),
    ("exact", "Final: Paris.", "paris", "final_line", (True, True, True)),
    ("exact", "Final: \\text{Paris}", "Paris", "final_line", (True, True, True)),
    ("exact", "Final: Lyon", "Paris", "final_line", (False, False, True)),
    ("exact", "the capital is \\boxed{Paris}", "Paris", "final_line", (False, True, False)),
    ("exact", "Final: 0.50", "0.5", "final_line", (True, True, True)),
    ("choice", "Final: (B)", "B", "final_line", (True, True, True)),
    ("choice", "Final: b. 42", "B", "final_line", (True, True, True)),
    ("choice", "Final: C", "B", "final_line", (False, False, True)),
    ("choice", "I think the answer is (B) because", "B", "final_line", (False, True, False)),
    ("choice", "\\boxed{D}", "D", "boxed", (True, True, True)),
]


@pytest.mark.parametrize(("grader", "completion", "gold", "style", "expected"), GRADED)
def test_graders(grader, completion, gold, style, expected):
    r = score_answer(completion, gold, style, grader, "format")
    assert (r.correct, r.correct_lenient, r.format_ok) == expected
    assert r.reward == (1.0 if expected[0] else 0.1 if expected[2] else 0.0)


LATEX = [
    # completion (boxed style), gold -> correct under the math_verify grader
    ("\\boxed{\\dfrac12}", "\\frac{1}{2}", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", True),
    ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", False),
    ("\\boxed{(1, 2]}", "(1,2]", True),
    ("\\boxed{[1, 2]}", "(1,2]", False),
    ("\\boxed{\\{1,2,3\\}}", "\\{3,2,1\\}", True),
    ("\\boxed{\\{1,2\\}}", "\\{1,2,3\\}", False),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("\\boxed{x^2}", "x^{2}", True),
    ("\\boxed{72}", "72", True),
]


@pytest.mark.parametrize(("completion", "gold", "correct"), LATEX)
def test_math_verify_grader_on_latex(completion, gold, correct):
    r = score_answer(completion, gold, "boxed", "math_verify")
    assert (r.correct, r.format_ok) == (correct, True)


ADVERSARIAL_LATEX = [
    "\\boxed{10^{10^{10^{10^{10}}}}}",
    "\\boxed{9^{9^{9}}}",
    "\\boxed{(10^{8})!}",
    "\\boxed{" + "(" * 5000 + "1" + ")" * 5000 + "}",
]


def test_math_verify_is_bounded_by_the_reward_pool():
    """Inputs that keep math-verify busy for ~10 s each (measured: its own 5 s parse and 5 s
    verify alarms) cost one pool timeout each, not a stalled run."""
    import time

    from mathrl.rewards import RewardPool

    items = [(c, "\\frac{1}{2}", "boxed", "math_verify", "format") for c in ADVERSARIAL_LATEX]
    items.append(("\\boxed{\\dfrac12}", "\\frac{1}{2}", "boxed", "math_verify", "format"))
    started = time.perf_counter()
    with RewardPool(timeout_s=1.0, workers=2) as pool:
        results = pool.map(score_answer, items)
    assert [r.reason for r in results] == ["timeout"] * 4 + ["ok"]
    assert time.perf_counter() - started < 30  # 4 timeouts of 1 s, worker restarts included


def test_text_normalisation_and_letters():
    assert normalize_text("  \\text{New  York}. ") == "new york"
    assert normalize_text("$5$") == "5"
    assert [choice_letter(a) for a in ["(c)", "C)", "C: 4", "**C**", "Cat", "", "42"]] == [
        "C",
        "C",
        "C",
        "C",
        None,
        None,
        None,
    ]


def test_graders_are_bounded_on_huge_answers():
    big = "Final: " + "9" * 500_000
    assert score_answer(big, "9", "final_line", "exact").correct is False
    assert score_answer("x" * 1_000_000, "B", "final_line", "choice").correct is False


# ---------------------------------------------------------------- the qa task


def write_math(path: Path, n: int, start: int = 0) -> Path:
    """MATH-style rows: LaTeX-ish problems with worked solutions and short answers."""
    rows = [
        {
            "uid": f"p{i}",
            "problem": f"Compute ${i} + {i + 1}$.",
            "solution": f"Adding gives ${2 * i + 1}$.",
            "answer": str(2 * i + 1),
            "level": "Level 1",
        }
        for i in range(start, start + n)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MATH_FIELDS = dict(question_field="problem", solution_field="solution", id_field="uid")


def test_qa_from_a_dir_with_train_and_test(tmp_path):
    write_math(tmp_path / "d/train.jsonl", 10)
    write_math(tmp_path / "d/test.jsonl", 3, start=100)
    task = QATask(str(tmp_path / "d"), **MATH_FIELDS, val_size=2)
    assert [len(task.examples(s)) for s in ("train", "val", "test")] == [8, 2, 3]
    ex = task.examples("test")[0]
    assert (ex.id, ex.question, ex.gold) == ("p100", "Compute $100 + 101$.", "201")
    assert task.response(ex) == "Adding gives $201$.\nFinal: 201"
    assert reward_columns(ex)["level"] == "Level 1"  # every column reaches reward functions
    fn, args = task.reward_call(ex)
    assert fn(task.response(ex), *args).reward == 1.0
    assert fn("Final: 7", *args).reward == 0.1


def test_qa_reads_csv_json_and_a_single_file(tmp_path):
    (tmp_path / "t.csv").write_text("q,a\nOne plus one?,2\nTwo plus two?,4\n")
    task = QATask(str(tmp_path / "t.csv"), question_field="q", answer_field="a")
    assert [e.gold for e in task.examples("train")] == ["2", "4"]
    assert task.examples("test") == [] and task.examples("val") == []
    (tmp_path / "t.json").write_text(json.dumps([{"question": "Q?", "answer": 3}]))
    assert QATask(str(tmp_path / "t.json")).examples("train")[0].gold == "3"


BAD_DATA = [
    ("", "Dataset file is empty"),
    ('{"question": "q"}\n', "column 'answer' is missing or empty (has: question)"),
    ('{"question": "q", "answer": ""}\n', "column 'answer' is missing or empty"),
    ('{"question": 5, "answer": "1"}\n', "column 'question' must be text"),
    ('{"question": "q", "answer": [1]}\n', "column 'answer' must be text or a number"),
    ('{"question": "q", "answer": "x"}\n', "gold answer is not a number: 'x'"),
    ('{"question": "q", "answer": "1"}\n{"question": "q", "answer": "1"}\n', "duplicate"),
    ('{"question": "q", "answer": "1"}\nnot json\n', ":2: malformed JSON"),
    ("[1, 2]\n", "row 1: a row must be an object"),
]


@pytest.mark.parametrize(("content", "message"), BAD_DATA)
def test_qa_bad_data_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(message)):
        QATask(str(path))


QA_ROW = '{"question": "q", "answer": "1"}'
MALFORMED_FILES = [
    # (file name, bytes, the one line expected)
    (
        "extra.csv",
        b"question,answer\nq1,1\nq2,2,surplus\n",
        "extra.csv row 2 (line 3): 3 values, the header names 2 columns",
    ),
    (
        "short.csv",
        b"question,answer\nq1\n",
        "short.csv row 1 (line 2): 1 values, the header names 2 columns",
    ),
    (
        "latin1.csv",
        "question,answer\nq1,1\ncaf\u00e9?,2\n".encode("latin-1"),
        "latin1.csv:3: not UTF-8 text (byte 0xe9)",
    ),
    (
        "twice.csv",
        b"question,answer,question\nq,1,r\n",
        "twice.csv: the header names column 'question' twice",
    ),
    (
        "huge_field.csv",
        b'question,answer\n"' + b"x" * 200_000 + b'",1\n',
        "huge_field.csv line 2: malformed CSV: field larger than field limit",
    ),
    (
        "latin1.jsonl",
        '{"question": "caf\u00e9", "answer": "1"}\n'.encode("latin-1"),
        "latin1.jsonl:1: not UTF-8 text (byte 0xe9)",
    ),
    (
        "deep.jsonl",
        (QA_ROW + "\n").encode()
        + b'{"question": "q", "answer": "2", "x": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}\n",
        "deep.jsonl:2: JSON nested too deeply",
    ),
    (
        "nested.jsonl",
        b'{"question": "q", "answer": "2", "meta": ' + b"[" * 40 + b"]" * 40 + b"}\n",
        "nested.jsonl row 1: column 'meta' nests deeper than 32 levels",
    ),
    (
        "digits.jsonl",
        b'{"question": "q", "answer": ' + b"1" * 5000 + b"}\n",
        "digits.jsonl:1: Exceeds the limit",
    ),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, "deep.json: JSON nested too deeply"),
    (
        "latin1.json",
        '[{"question": "\u00e9", "answer": "1"}]'.encode("latin-1"),
        "latin1.json:1: not UTF-8 text",
    ),
    (
        "object.json",
        b'{"question": "q"}',
        "object.json: a .json dataset must hold a list of objects",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "message"), MALFORMED_FILES, ids=[m[0] for m in MALFORMED_FILES]
)
def test_malformed_qa_files_are_one_line_naming_file_and_row(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        QATask(str(path))
    text = str(err.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text


def test_a_csv_with_a_bom_reads_its_first_column():
    """Spreadsheets save UTF-8 with a byte-order mark: the first header is still 'question'."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bom.csv"
        path.write_bytes(b"\xef\xbb\xbfquestion,answer\nq1,1\n")
        assert QATask(str(path)).examples("train")[0].question == "q1"


def test_default_val_size_fits_a_small_dataset_and_says_so(tmp_path):
    """60 rows: the default holds out 10% (6), where a fixed 512 would stop the run."""
    write_math(tmp_path / "m.jsonl", 60)
    cfg = load_config(
        None,
        ["task.name=qa", f"data.path={tmp_path / 'm.jsonl'}", "data.question_field=problem"],
        env=False,
    )
    assert cfg.data.val_size is None
    task = make_task(cfg)
    assert [len(task.examples(s)) for s in ("train", "val")] == [54, 6]
    assert task.notes == [
        "data.val_size: 6 of 60 train rows held out for validation (the default: 10% of "
        "them, at most 512; set data.val_size to choose)"
    ]
    # 10% is capped at 512, so GSM8K's 7,473 rows keep their 512-problem split
    from mathrl.tasks.gsm8k import resolve_val_size

    assert [resolve_val_size(n, None) for n in (7473, 60, 9, 5000)] == [512, 6, 0, 500]
    assert resolve_val_size(60, 0) == 0 and resolve_val_size(60, 20) == 20


def test_open_run_writes_what_the_data_chose_into_the_events_log(tmp_path):
    from mathrl.runs.start import open_run

    rows = [{"question": f"q{i % 40}", "answer": str(i % 40)} for i in range(50)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sets = ["task.name=qa", f"data.path={tmp_path / 'd.jsonl'}", "data.dedupe=true"]
    _, run_dir = open_run(load_config(None, sets, env=False), tmp_path / "run", resume=False)
    events = [e["message"] for e in read_jsonl(run_dir / "events.jsonl")]
    assert events == [
        f"data.dedupe: dropped 10 duplicate rows of {tmp_path / 'd.jsonl'} (40 kept)",
        "data.val_size: 4 of 40 train rows held out for validation (the default: 10% of "
        "them, at most 512; set data.val_size to choose)",
    ]


def test_dedupe_drops_repeats_and_train_rows_that_repeat_test(tmp_path):
    rows = [
        {"question": "a", "answer": "1"},
        {"question": "b", "answer": "2"},
        {"question": "a", "answer": "1"},
        {"question": "t", "answer": "9"},
        {"question": "b", "answer": "2"},
        {"question": "c", "answer": "3"},
    ]
    (tmp_path / "d").mkdir()
    (tmp_path / "d/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d/test.jsonl").write_text(json.dumps({"question": "t", "answer": "9"}) + "\n")
    with pytest.raises(DataError, match="row 3: duplicate question and answer"):
        QATask(str(tmp_path / "d"))
    task = QATask(str(tmp_path / "d"), dedupe=True)
    assert [e.question for e in task.examples("train")] == ["a", "b", "c"]
    assert [e.question for e in task.examples("test")] == ["t"]
    assert task.notes == [
        f"data.dedupe: dropped 3 duplicate rows of {tmp_path / 'd/train.jsonl'} (3 kept)"
    ]
    assert len(task.export()["train"]) == 3


def test_qa_duplicate_ids_name_both_rows(tmp_path):
    path = tmp_path / "ids.jsonl"
    rows = [
        {"id": "a", "question": "q1", "answer": "1"},
        {"id": "a", "question": "q2", "answer": "2"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"row 2: duplicate id 'a' \(first seen at .*row 1\)"):
        QATask(str(path), id_field="id")


def test_qa_config_needs_a_path():
    with pytest.raises(ConfigError, match="task.name = 'qa' needs data.path"):
        load_config(None, ["task.name=qa"], env=False)


# ---------------------------------------------------------------- reward functions


def test_weighted_terms_with_a_trl_function_and_none():
    """reward = 1.0 * task + 0.5 * accuracy_reward; None leaves the term out and says so."""
    specs = (
        RewardFn("task"),
        RewardFn("reward_fixtures:accuracy_reward", 0.5),
        RewardFn("reward_fixtures:brevity", 0.1, name="short", completions="text"),
    )
    prompt = [{"role": "user", "content": "q"}]
    columns = {"question": "q", "answer": "12", "solution": "so 12"}
    args = ("12", "final_line", "numeric", "format")
    text = "x" * 40 + "\nFinal: 12"  # 50 chars: brevity 0.5
    r = score_with_functions(text, score_answer, args, specs, prompt, columns)
    assert r.reward == pytest.approx(1.0 + 0.5 * 1.0 + 0.1 * 0.5)
    assert r.components == pytest.approx(
        {"correct": 1.0, "format": 1.0, "task": 1.0, "accuracy_reward": 1.0, "short": 0.5}
    )
    unreadable = {**columns, "solution": "none"}
    r = score_with_functions("Final: 3", score_answer, args, specs, prompt, unreadable)
    assert r.reward == pytest.approx(0.1 + 0.1 * 0.92)
    assert "accuracy_reward" not in r.components
    assert r.reason == "wrong_answer; unscored: accuracy_reward"


def _check(specs: list[RewardFn], timeout_s: float = 5.0) -> None:
    columns = [{"question": "q", "answer": "1", "solution": "1"}] * 2
    preflight(specs, ["Final: 1", ""], [[{"role": "user", "content": "q"}]] * 2, columns, timeout_s)


BAD_FUNCTIONS = [
    ("nowhere_module:fn", "cannot import nowhere_module (ModuleNotFoundError"),
    ("reward_fixtures:missing", "reward_fixtures has no function 'missing'"),
    ("reward_fixtures:NOT_A_FUNCTION", "has no function 'NOT_A_FUNCTION'"),
    ("reward_fixtures:no_completions", "must take completions (TRL signature"),
    ("reward_fixtures:needs_missing", "needs column 'difficulty', which the data lacks"),
    ("reward_fixtures:wrong_length", "must return a list of 2 floats or None (one per"),
    ("reward_fixtures:wrong_type", "returned 'high': each item must be a finite number or None"),
    ("reward_fixtures:raises", "raised ValueError: boom on a batch of 2"),
    ("reward_fixtures:hangs", "did not return within 0.5 s"),
]


@pytest.mark.parametrize(("fn", "message"), BAD_FUNCTIONS)
def test_reward_functions_checked_before_training(fn, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _check([RewardFn(fn)], timeout_s=0.5)


def test_good_functions_pass_the_check():
    _check([RewardFn("reward_fixtures:accuracy_reward"), RewardFn("reward_fixtures:seen_columns")])


def test_the_trial_batch_runs_in_a_reward_worker(monkeypatch):
    """The check imports and calls user code in a worker, never in this (the trainer's) process."""
    monkeypatch.setenv("MATHRL_TEST_TRAINER_PID", str(os.getpid()))
    _check([RewardFn("reward_fixtures:refuses_the_trainer_process")])


def test_user_reward_functions_refuse_in_process_scoring():
    user = 'task.rewards=[{fn = "reward_fixtures:brevity"}]'
    with pytest.raises(ConfigError, match=r"^train.reward_workers = 0 would run task.rewards fn"):
        load_config(None, [user, "train.reward_workers=0"], env=False)
    builtin = 'task.rewards=[{fn = "task"}, {fn = "format", weight = 0.5}]'
    assert (
        load_config(None, [builtin, "train.reward_workers=0"], env=False).train.reward_workers == 0
    )


BAD_SPECS = [
    ('[{fn = "justaname"}]', "must be 'pkg.module:function' or one of task, correct, format"),
    (
        '[{fn = "a.b:c", wieght = 2}]',
        "Unknown key 'wieght' in task.rewards (did you mean 'weight'?)",
    ),
    ("[{weight = 2}]", "lacks 'fn'"),
    ('[{fn = "a:f"}, {fn = "b:f"}]', "task.rewards name 'f' is used twice"),
    ('[{fn = "a:mean"}]', "'mean' is a reward/* statistic"),
    ('[{fn = "a:f", completions = "ids"}]', "must be messages or text"),
    ("[{fn = ", "task.rewards expects a TOML array of inline tables"),
]


@pytest.mark.parametrize(("value", "message"), BAD_SPECS)
def test_reward_specs_in_the_config(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [f"task.rewards={value}"], env=False)


def test_rewards_round_trip_through_a_config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[task]\nrewards = [{fn = "task"}, {fn = "reward_fixtures:brevity", weight = 0.25, '
        'completions = "text"}]\n'
    )
    cfg = load_config(path, env=False)
    assert cfg.task.rewards == [
        RewardFn("task"),
        RewardFn("reward_fixtures:brevity", 0.25, completions="text"),
    ]
    from mathrl.config import dumps_toml

    (tmp_path / "again.toml").write_text(dumps_toml(cfg))
    assert load_config(tmp_path / "again.toml", env=False).task.rewards == cfg.task.rewards


def test_make_task_wraps_and_checks(tmp_path):
    write_math(tmp_path / "m.jsonl", 6)
    sets = [
        "task.name=qa",
        f"data.path={tmp_path / 'm.jsonl'}",
        "data.question_field=problem",
        "data.solution_field=solution",
        "data.val_size=2",
        'task.rewards=[{fn = "task"}, {fn = "reward_fixtures:accuracy_reward", weight = 2}]',
    ]
    task = make_task(load_config(None, sets, env=False))
    assert task.name == "qa" and len(task.examples("train")) == 4
    ex = task.examples("val")[0]
    fn, args = task.reward_call(ex)
    assert fn(task.response(ex), *args).reward == pytest.approx(3.0)
    bad = sets[:-1] + ['task.rewards=[{fn = "reward_fixtures:needs_missing"}]']
    with pytest.raises(ConfigError, match="needs column 'difficulty'"):
        make_task(load_config(None, bad, env=False))


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_the_readme_own_data_example(run_cli, tmp_path, monkeypatch):
    """examples/own_data, as README "Your own data" runs it (shrunk by --set): generate the
    MATH-style JSONL, train with the qa task, the math_verify grader and a TRL-style reward
    function from the current directory (scored in the bounded pool), then evaluate through
    the Python API."""
    example = Path(__file__).resolve().parents[1] / "examples/own_data"
    work = tmp_path / "own_data"
    shutil.copytree(example, work)
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))  # as `python make_data.py` would find it
    import make_data

    make_data.main(out="data", train=60, test=10)
    shrink = ["warmup.steps=3", "train.steps=2", "eval.every=0", "data.val_size=8"]
    shrink += ["train.prompts_per_step=8", "rollout.batch_size=64", "train.micro_batch_size=64"]
    sets = [a for s in shrink for a in ("--set", s)]
    res = run_cli("train", "-c", "config.toml", "--out", "run", *sets, "--set", "log.quiet=true")
    assert res.code == 0, res.err
    metrics = read_jsonl(work / "run/metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all("reward/one_box" in m and "reward/task" in m for m in metrics)
    rollouts = read_jsonl(work / "run/rollouts.jsonl")
    assert len(rollouts) == 2 * 8 * 8 and {r["task"] for r in rollouts} == {"qa"}
    for r in rollouts:  # the logged reward is the weighted sum of the logged terms
        parts = r["reward_components"]
        expected = parts["task"] + 0.2 * parts.get("one_box", 0.0)
        assert r["reward"] == pytest.approx(expected)
        assert ("one_box" in parts) == bool(r["completion"].strip())
    import mathrl

    ev = work / "ev"
    summary = mathrl.evaluate(
        work / "run", "config.toml", ev, overrides=["data.val_size=8"], split="test", limit=4
    )
    written = json.loads((ev / "eval_summary.json").read_text())
    assert summary == written and summary["n_problems"] == 4


def test_python_api_trains_from_a_config_object(tmp_path, tiny_config):
    """mathrl.train(Config) runs `mathrl train` and leaves the object as it was."""
    import mathrl

    cfg = load_config(tiny_config, env=False)
    run = mathrl.train(cfg, tmp_path / "api", overrides=["train.steps=1", "warmup.steps=0"])
    assert run == tmp_path / "api" and cfg.train.steps == 2
    assert [m["step"] for m in read_jsonl(run / "metrics.jsonl")] == [1]
    saved = load_config(run / "config.toml", env=False)
    assert (saved.train.steps, saved.warmup.steps, saved.model.scratch.hidden) == (1, 0, 32)


def test_qa_from_a_hub_dataset_through_datasets(monkeypatch):
    """hf:owner/name@rev goes to datasets.load_dataset with that revision; its train and
    test splits become the task's (a stand-in module: the tests never download)."""
    import sys
    import types

    calls = []
    rows = {
        "train": [{"question": f"q{i}", "answer": str(i)} for i in range(5)],
        "test": [{"question": "t", "answer": "7"}],
    }

    def load_dataset(name, revision=None):
        calls.append((name, revision))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    task = QATask("hf:someone/math@abc123", val_size=1)
    assert calls == [("someone/math", "abc123")]
    assert [len(task.examples(s)) for s in ("train", "val", "test")] == [4, 1, 1]
    assert task.examples("test")[0].gold == "7"


def test_data_prepare_writes_qa_files_that_read_back_as_the_same_task(run_cli, tmp_path):
    write_math(tmp_path / "src.jsonl", 12)
    res = run_cli(
        "data",
        "prepare",
        "qa",
        "--source",
        tmp_path / "src.jsonl",
        "--out",
        tmp_path / "p",
        "--set",
        "data.question_field=problem",
        "--set",
        "data.val_size=3",
    )
    assert res.code == 0, res.err
    manifest = json.loads((tmp_path / "p/fingerprint.json").read_text())
    assert manifest["counts"] == {"train": 9, "val": 3, "test": 0}
    again = QATask(str(tmp_path / "p"), question_field="problem", val_size=3)
    assert again.fingerprint == manifest["fingerprint"]


# ---------------------------------------------------------------- the overlong term


@pytest.mark.parametrize(
    ("n_tokens", "expected"),
    [(0, 0.0), (12, 0.0), (13, -0.25), (14, -0.5), (15, -0.75), (16, -1.0), (40, -1.0)],
)
def test_overlong_penalty_hand_computed(n_tokens, expected):
    from mathrl.rewards.functions import overlong_penalty

    # max 16 tokens, buffer 4: free up to 12, then -1/4 a token down to -1 at 16
    assert overlong_penalty(n_tokens, 16, 4) == expected


@pytest.mark.parametrize("buffer", [0, 17, -1])
def test_overlong_penalty_bad_buffer(buffer):
    from mathrl.rewards.functions import overlong_penalty

    with pytest.raises(ConfigError, match=r"overlong buffer must be in \[1, 16\]"):
        overlong_penalty(10, 16, buffer)


def test_overlong_term_is_added_by_token_count_and_logged():
    """task.rewards = task + 0.5 x overlong: the pool scores the text, the trainer adds
    0.5 x the penalty of each completion's token count; reward/overlong is its mean."""
    from mathrl.groups import Group, reward_metrics
    from mathrl.rollout.types import Completion

    task = make_task(load_config(None, list(OVERLONG_SETS), env=False))
    ex = task.examples("train")[0]
    fn, args = task.reward_call(ex)
    right = fn(task.response(ex), *args)
    assert right.reward == 1.0 and "overlong" not in right.components  # text only so far
    comps = [Completion(0, j, [1], [7] * n, "", "eos", [0.0] * n) for j, n in enumerate((8, 14))]
    results = task.add_length_terms([right, right], comps)
    assert [r.reward for r in results] == [1.0, 1.0 - 0.5 * 0.5]
    assert [r.components["overlong"] for r in results] == [0.0, -0.5]
    metrics = reward_metrics([Group(ex, [1], comps, results)])
    assert metrics["reward/overlong"] == -0.25 and metrics["reward/task"] == 1.0


def test_overlong_needs_a_buffer():
    with pytest.raises(ConfigError, match=r"task.overlong_buffer must be in \[1, "):
        load_config(None, ['task.rewards=[{fn = "overlong"}]'], env=False)
    with pytest.raises(ConfigError, match="rollout.max_new_tokens = 8\\], got 9"):
        load_config(
            None,
            [
                'task.rewards=[{fn = "overlong"}]',
                "task.overlong_buffer=9",
                "rollout.max_new_tokens=8",
            ],
            env=False,
        )
