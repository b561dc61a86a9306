"""The eval suite: generated arithmetic (solvable by construction), the suite table, and
`mathrl eval --suite` / `eval.suite` end to end."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

from mathrl.errors import ConfigError, DataError
from mathrl.eval.suite import SUITES, markdown
from mathrl.io import read_jsonl
from mathrl.rewards import evaluate_expression
from mathrl.tasks.arithmetic import ArithmeticTask, generate


@pytest.mark.parametrize("kind", ["add", "mul", "mixed"])
def test_expressions_evaluate_to_their_gold(kind):
    """Every generated expression, read back by the safe Countdown evaluator, equals gold."""
    task = ArithmeticTask(kind, 2, train_size=200, test_size=50)
    for ex in task.examples("train") + task.examples("test"):
        expr = ex.question.removeprefix("What is ").removesuffix("?")
        assert evaluate_expression(expr) == Fraction(int(ex.gold)), ex.question


def test_word_problems_carry_their_working():
    task = ArithmeticTask("word", 2, train_size=200, test_size=20)
    for ex in task.examples("train"):
        left, _, right = ex.solution.partition(" = ")
        assert right == ex.gold and evaluate_expression(left) == Fraction(int(ex.gold))
        assert int(ex.gold) >= 0


def test_items_are_seeded_distinct_and_test_is_held_out():
    a = ArithmeticTask("add", 2, train_size=300, test_size=40)
    b = ArithmeticTask("add", 2, train_size=10, test_size=40)
    assert [e.question for e in a.examples("test")] == [e.question for e in b.examples("test")]
    train = {e.question for e in a.examples("train")}
    assert len(train) == 300 and not train & {e.question for e in a.examples("test")}
    assert a.examples("test")[0].question == "What is 93 - 75?"  # seed 31415 + 1, first item
    assert a.response(a.examples("test")[0]) == "93 - 75 = 18\nFinal: 18"


def test_a_training_split_larger_than_the_kind_takes_every_item_left():
    # 1-digit add: 55 ordered pairs a >= b, each as a sum and a difference: 110 questions
    task = ArithmeticTask("add", 1, train_size=10000, test_size=50)
    train = {e.question for e in task.examples("train")}
    assert len(train) == 110 - 50 and not train & {e.question for e in task.examples("test")}
    # 2-digit add: the default 10,000 exceeds its 8,190 questions
    assert len(ArithmeticTask("add", 2).examples("train")) == 8190 - 500


def test_impossible_sizes_and_kinds_are_one_line():
    with pytest.raises(DataError, match="only .* distinct add items with 1 digits exist"):
        generate(500, 0, "add", 1)
    with pytest.raises(ConfigError, match="did you mean 'mul'"):
        generate(5, 0, "mull", 2)


def test_suite_markdown_table():
    table = {
        "suite": "t",
        "models": [{"label": "a", "model": "A"}, {"label": "b", "model": "B"}],
        "rows": [
            {
                "task": "add-2digit",
                "n": 10,
                "cells": {
                    "a": {
                        "pass@1": 0.5,
                        "pass@1_lo": 0.19,
                        "pass@1_hi": 0.81,
                        "pass@1_lenient": 0.6,
                        "n_problems": 10,
                    },
                    "b": {"error": "GSM8K not found"},
                },
            }
        ],
    }
    assert markdown(table).splitlines()[2:] == [
        "| task | a | b |",
        "|---|---|---|",
        "| add-2digit (n=10) | 50.0 % [19.0, 81.0] / 60.0 % | n/a (GSM8K not found) |",
    ]


def test_the_default_suite_is_gsm8k_countdown_and_arithmetic():
    labels = [t.label for t in SUITES.get("default")]
    assert labels[:3] == ["gsm8k", "countdown-3", "countdown-4"]
    assert {"add-2digit", "add-4digit", "mul-2digit", "mixed-1digit", "word-2digit"} <= set(labels)
    assert [t.label for t in SUITES.get("synthetic")] == labels[1:]


@pytest.mark.slow
def test_eval_suite_at_the_end_of_training_and_from_the_cli(
    run_train, run_cli, tmp_path, monkeypatch
):
    """eval.suite runs the suite on the final model (report shows it); `mathrl eval --suite`
    puts two models side by side; GSM8K offline becomes an n/a row, not a failure."""
    monkeypatch.delenv("MATHRL_GSM8K", raising=False)
    monkeypatch.setenv("MATHRL_CACHE", str(tmp_path / "empty_cache"))
    run = tmp_path / "run"
    res = run_train(run, "eval.suite=synthetic", "eval.limit=8")
    assert res.code == 0, res.err
    table = json.loads((run / "suite/suite.json").read_text())
    assert [r["task"] for r in table["rows"]] == [t.label for t in SUITES.get("synthetic")]
    assert all(r["n"] == 8 for r in table["rows"])
    cell = table["rows"][0]["cells"]["run"]
    assert cell["pass@1_lo"] <= cell["pass@1"] <= cell["pass@1_hi"]
    assert "Eval suite 'synthetic'" in (run / "report.html").read_text()
    assert (run / "suite/suite.png").stat().st_size > 0
    examples = read_jsonl(run / "suite/add-2digit/eval_examples.jsonl")  # the rows' examples
    assert len(examples) == 8 and all(e["greedy"]["completion"] is not None for e in examples)
    warm = run / "warmup_sft/checkpoints/step_00000003"
    out = tmp_path / "cmp"
    res = run_cli(
        "eval",
        "--suite",
        "default",
        "--model",
        run,
        "--model",
        warm,
        "-c",
        run / "config.toml",
        "--limit",
        "4",
        "--out",
        out,
    )
    assert res.code == 0, res.err
    table = json.loads((out / "suite.json").read_text())
    assert [m["model"] for m in table["models"]] == [str(run), str(warm)]
    gsm = table["rows"][0]
    assert gsm["task"] == "gsm8k" and gsm["cells"]["run"]["error"] == (
        "GSM8K not found (data.path = 'auto')"
    )
    assert gsm["cells"]["run"]["hint"].startswith("set MATHRL_GSM8K to a dir")
    assert "| gsm8k (n=0) | n/a (GSM8K not found (data.path = 'auto'))" in res.out
    assert (out / "add-2digit" / "checkpoints_step_00000003" / "eval_examples.jsonl").is_file()
    # the math suite offline: AIME 2024 from a prepared copy, sampled 32 times per problem;
    # the rows neither cached nor reachable say how to get them
    rows = [
        {"id": i, "problem": f"Find ${i} + {i}$.", "answer": str(2 * i), "url": url}
        for i, url in ((1, "2024_AIME_I/1"), (2, "2024_AIME_II/2"), (3, "2024_AIME_I/3"))
    ]
    copy = tmp_path / "aime.jsonl"
    copy.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run_cli("data", "prepare", "aime2024", "--source", copy)
    assert res.code == 0 and "wrote 3 AIME 2024 problems" in res.err, res.err
    out = tmp_path / "math"
    res = run_cli(
        "eval",
        "--suite",
        "math",
        "-m",
        run,
        "-c",
        run / "config.toml",
        "--limit",
        "2",
        "--out",
        out,
    )
    assert res.code == 0, res.err
    table = json.loads((out / "suite.json").read_text())
    by_task = {r["task"]: r for r in table["rows"]}
    assert list(by_task) == ["gsm8k", "math500", "aime2024", "aime2025", "amc2023"]
    aime = by_task["aime2024"]
    assert (aime["n"], aime["samples"]) == (2, 32)
    cell = aime["cells"]["run"]
    assert cell["avg@32"][1] <= cell["avg@32"][0] <= cell["avg@32"][2] and "pass@32" in cell
    records = read_jsonl(out / "aime2024" / "eval_examples.jsonl")
    assert [len(r["samples"]) for r in records] == [32, 32]
    assert by_task["math500"]["cells"]["run"]["hint"].startswith(
        "run `mathrl data prepare math500`"
    )
    assert "aime2024 (n=2, 32 samples at T=1)" in res.out
    assert "- math500: run `mathrl data prepare math500` once" in res.out
    res = run_cli("train", "--out", tmp_path / "typo", "--set", "eval.suite=defualt")
    assert res.code == 2 and "did you mean 'default'" in res.err
