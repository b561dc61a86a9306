"""The named maths benchmarks (mathrl.tasks.benchmarks) and the `math` suite, offline.

Each benchmark's fixture rows are hand-written (never the benchmark's text) in the shape of
its hub rows (the same columns and types), read through the real loading code: a file
given to `prepare`, the cache, a stand-in `datasets` module for the hub. Grading tables use
each benchmark's own answer formats, scored in the bounded reward pool.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import json
import re
import sys
import types

import pytest

from mathrl.config import Config, load_config
from mathrl.config.sections import DataConfig
from mathrl.data import make_task
from mathrl.errors import DataError
from mathrl.eval.suite import SUITES, SuiteTask, cell, markdown, row_sets, sample_ks
from mathrl.rewards import PROMPT_STYLES, RewardPool, score_answer
from mathrl.rewards.graders import GRADERS
from mathrl.tasks.benchmarks import BENCHMARKS, cache_file, how_to_get, load_rows, prepare

_AOPS = "https://artofproblemsolving.com/wiki/index.php/"

# Hand-written rows shaped as each dataset's hub rows (column names and types from the cards).
FIXTURES: dict[str, list[dict]] = {
    "math500": [  # HuggingFaceH4/MATH-500 [test]
        {
            "problem": "What is $\\frac{1}{2}+\\frac{1}{4}$?",
            "solution": "Add: $\\frac{2}{4}+\\frac{1}{4}=\\boxed{\\frac{3}{4}}$.",
            "answer": "\\frac{3}{4}",
            "subject": "Prealgebra",
            "level": 1,
            "unique_id": "test/prealgebra/9001.json",
        },
        {
            "problem": "Solve $x^2+x-2=0$.",
            "solution": "$(x+2)(x-1)=0$, so $x=\\boxed{-2, 1}$.",
            "answer": "-2, 1",
            "subject": "Algebra",
            "level": 2,
            "unique_id": "test/algebra/9002.json",
        },
        {
            "problem": "For which $x$ is $x \\le 3$?",
            "solution": "$\\boxed{(-\\infty,3]}$",
            "answer": "(-\\infty,3]",
            "subject": "Intermediate Algebra",
            "level": 1,
            "unique_id": "test/intermediate_algebra/9003.json",
        },
    ],
    "aime2024": [  # AI-MO/aimo-validation-aime [train]: AIME 2022-2024, 2024 kept
        {
            "id": 9001,
            "problem": "Find the remainder when $2^{10}$ is divided by $1000$.",
            "solution": "$2^{10}=1024$, so $\\boxed{024}$.",
            "answer": "24",
            "url": _AOPS + "2024_AIME_I_Problems/Problem_1",
        },
        {
            "id": 9002,
            "problem": "Find $7 \\cdot 11 \\cdot 13 - 800$.",
            "solution": "$1001-800=\\boxed{201}$.",
            "answer": "201",
            "url": _AOPS + "2024_AIME_II_Problems/Problem_2",
        },
        {
            "id": 9003,
            "problem": "Find $3^5$.",
            "solution": "$\\boxed{243}$",
            "answer": "243",
            "url": _AOPS + "2023_AIME_I_Problems/Problem_3",
        },
    ],
    "aime2025": [  # MathArena/aime_2025 [train]: integer answers
        {"problem_idx": 1, "problem": "Find $6 \\cdot 7$.", "answer": 42},
        {"problem_idx": 2, "problem": "Find $10^2 + 4$.", "answer": 104},
    ],
    "amc2023": [  # AI-MO/aimo-validation-amc [train]: AMC12 2022-2023, float answers
        {
            "id": 9001,
            "problem": "What is $3 \\cdot 9$?",
            "answer": 27.0,
            "url": _AOPS + "2023_AMC_12A_Problems/Problem_4",
        },
        {
            "id": 9002,
            "problem": "What is $5 + 5$?",
            "answer": 10.0,
            "url": _AOPS + "2022_AMC_12B_Problems/Problem_5",
        },
    ],
}
KEPT = {  # (gold, id) of the rows each benchmark keeps, in order
    "math500": [
        ("\\frac{3}{4}", "test/prealgebra/9001.json"),
        ("-2, 1", "test/algebra/9002.json"),
        ("(-\\infty,3]", "test/intermediate_algebra/9003.json"),
    ],
    "aime2024": [("24", "9001"), ("201", "9002")],
    "aime2025": [("42", None), ("104", None)],
    "amc2023": [("27.0", "9001")],
}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty mathrl cache, and no `datasets` (as on this machine and in CI)."""
    monkeypatch.setenv("MATHRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # importlib.util.find_spec -> None
    return tmp_path / "cache"


def _fake_datasets(load_dataset):
    """A stand-in for the datasets extra whose load_dataset is `load_dataset`."""
    fake = types.ModuleType("datasets")
    fake.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    fake.load_dataset = load_dataset
    return fake


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _task(name):
    return make_task(load_config(None, list(SUITES.get(name)[0].overrides)))


def test_the_registry_names_real_graders_styles_and_pins():
    assert BENCHMARKS.names() == ["aime2024", "aime2025", "amc2023", "gsm8k", "math500"]
    for name in BENCHMARKS.names():
        b = BENCHMARKS.get(name)
        assert b.grader in GRADERS and b.prompt_style in PROMPT_STYLES, name
        assert b.revision == "main" or re.fullmatch("[0-9a-f]{40}", b.revision), name
        assert b.licence, name
    # the GSM8K row reads openai/gsm8k at the revision data.hub_revision pins
    assert BENCHMARKS.get("gsm8k").revision == DataConfig().hub_revision
    assert [BENCHMARKS.get(n).samples for n in ("aime2024", "aime2025", "amc2023")] == [32, 32, 16]
    assert [t.label for t in SUITES.get("math")] == [
        "gsm8k",
        "math500",
        "aime2024",
        "aime2025",
        "amc2023",
    ]
    assert SUITES.get("aime2025")[0] == SUITES.get("math")[3]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixture_rows_load_through_prepare_and_the_cache(name, cache, tmp_path):
    """A local copy of the split goes into the cache once; the qa task then reads it
    offline: the kept rows' golds and ids, a boxed prompt, no train split."""
    path, rows = prepare(name, str(_write(tmp_path / f"{name}.jsonl", FIXTURES[name])))
    assert path == str(cache_file(name)) and len(rows) == len(KEPT[name])
    assert cache_file(name).parent.name == BENCHMARKS.get(name).revision
    task = _task(name)
    examples = task.examples("test")
    assert [ex.gold for ex in examples] == [gold for gold, _ in KEPT[name]]
    if BENCHMARKS.get(name).id_field:
        assert [ex.id for ex in examples] == [i for _, i in KEPT[name]]
    assert task.examples("train") == [] and task.examples("val") == []
    assert "\\boxed{}" in task.messages(examples[0])[0]["content"]
    assert examples[0].question == FIXTURES[name][0][BENCHMARKS.get(name).question_field]


def test_the_hub_is_read_once_then_the_cache(cache, monkeypatch):
    """With the datasets extra: one load_dataset at the pinned revision, rows cached; the
    second load reads the cache without calling the hub."""
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return FIXTURES["aime2024"]

    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(load_dataset))
    where, rows = load_rows("aime2024")
    assert calls == [
        (
            ("AI-MO/aimo-validation-aime", None),
            {"split": "train", "revision": "fca73e80df967c49ef6e20f88ce0a9fdb44bccc0"},
        )
    ]
    assert where == str(cache_file("aime2024")) and [r["id"] for r in rows] == [9001, 9002]
    assert load_rows("aime2024")[1] == rows and len(calls) == 1


def test_offline_without_a_cache_is_one_line_saying_how_to_get_it(cache, monkeypatch):
    with pytest.raises(DataError) as err:
        _task("math500")
    assert str(err.value) == (
        "MATH-500 not in mathrl's cache, no datasets extra: run `mathrl data prepare math500` "
        "once with the hub reachable (needs pip install 'mathrl[datasets]'), or `mathrl data "
        "prepare math500 --source FILE` with a .jsonl or .parquet copy of "
        "HuggingFaceH4/MATH-500's test split"
    )

    def offline(*args, **kwargs):
        raise ConnectionError(
            "Couldn't reach 'HuggingFaceH4/MATH-500' on the Hub (LocalEntryNotFoundError)"
        )

    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(offline))
    with pytest.raises(DataError) as err:
        load_rows("math500")
    why, _, how = str(err.value).partition(": ")
    assert why == "MATH-500 not in mathrl's cache, hub unreachable"
    assert how.startswith(how_to_get("math500") + " (cannot load HuggingFaceH4/MATH-500")
    assert not cache_file("math500").exists()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"question": "q", "answer": "1"}], "row 1: MATH-500 rows need columns 'problem' and"),
        ([["problem", "answer"]], "row 1: MATH-500 rows need columns"),
    ],
)
def test_a_copy_without_the_columns_is_refused(rows, message, cache, tmp_path):
    with pytest.raises(DataError, match=re.escape(message)):
        prepare("math500", str(_write(tmp_path / "bad.jsonl", rows)))
    assert not cache_file("math500").exists()


def test_a_copy_with_no_row_of_the_year_is_refused(cache, tmp_path):
    rows = [r for r in FIXTURES["amc2023"] if "2022" in r["url"]]
    with pytest.raises(DataError, match=r"no row of AMC 2023 \(url containing '2023_AMC'\)"):
        prepare("amc2023", str(_write(tmp_path / "amc.jsonl", rows)))


def test_row_defaults_apply_only_where_eval_n_is_left_at_its_default():
    aime = SUITES.get("aime2024")[0]
    assert row_sets(aime, Config())[0] == "eval.n=32"
    chosen = load_config(None, ["eval.n=4", "eval.k=[1,2]"])
    assert row_sets(aime, chosen) == list(aime.overrides)
    row = load_config(None, row_sets(aime, Config()))
    assert (row.eval.n, sample_ks(row)) == (32, (1, 32))
    assert sample_ks(chosen) == (1, 2, 4)
    assert row_sets(SuiteTask("x", ("task.name=countdown",)), Config()) == ["task.name=countdown"]


def _summary(n):
    s = {"pass@1": 0.1, "pass@1_lo": 0.0, "pass@1_hi": 0.2, "pass@1_lenient": 0.2}
    s.update(n_problems=30, truncated_frac=0.0, n=n, ks=[1, n])
    s.update({f"mean@{n}": 0.125, f"mean@{n}_lo": 0.05, f"mean@{n}_hi": 0.2})
    s.update({f"pass@{n}": 0.4, f"pass@{n}_lo": 0.22, f"pass@{n}_hi": 0.58})
    return s


def test_the_table_says_how_many_samples_and_how_to_get_na_rows():
    why, _, how = (
        "MATH-500 not in mathrl's cache, no datasets extra: run `mathrl data prepare math500`"
    ).partition(": ")
    table = {
        "suite": "math",
        "models": [{"label": "a", "model": "A"}],
        "rows": [
            {"task": "math500", "n": 0, "cells": {"a": cell(None, why, how)}},
            {
                "task": "aime2024",
                "n": 30,
                "samples": 32,
                "temperature": 0.6,
                "cells": {"a": cell(_summary(32), None)},
            },
        ],
    }
    assert table["rows"][1]["cells"]["a"]["avg@32"] == [0.125, 0.05, 0.2]
    assert markdown(table).splitlines()[2:] == [
        "| task | a |",
        "|---|---|",
        "| math500 (n=0) | n/a (MATH-500 not in mathrl's cache, no datasets extra) |",
        "| aime2024 (n=30, 32 samples at T=0.6) | avg@32 12.5 % [5.0, 20.0] · pass@32 40.0 % "
        "[22.0, 58.0] · greedy 10.0 % [0.0, 20.0] / 20.0 % |",
        "",
        "n/a rows, how to get them:",
        "- math500: run `mathrl data prepare math500`",
    ]


# Grading tables: completions in the boxed style against golds in each benchmark's own
# answer format, through math-verify (qa's math_verify grader) in the bounded reward pool.
GRADING = {
    "math500": [
        ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}", True),
        ("\\boxed{0.75}", "\\frac{3}{4}", True),
        ("\\boxed{\\frac{2}{3}}", "\\frac{3}{4}", False),
        ("\\boxed{(3, \\pi/2)}", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("\\boxed{(\\frac{\\pi}{2}, 3)}", "\\left( 3, \\frac{\\pi}{2} \\right)", False),
        ("\\boxed{(-\\infty, 3]}", "(-\\infty,3]", True),
        ("\\boxed{(-\\infty, 3)}", "(-\\infty,3]", False),
        ("\\boxed{x \\in [2, 5)}", "[2,5)", True),
        ("\\boxed{1, -2}", "-2, 1", True),  # several answers, any order
        ("\\boxed{x=1 \\text{ or } x=-2}", "-2, 1", True),
        ("\\boxed{1, 2}", "-2, 1", False),
        ("\\boxed{10}", "10\\text{ inches}", True),  # units
        ("\\boxed{10 \\text{ inches}}", "10\\text{ inches}", True),
        ("\\boxed{12}", "10\\text{ inches}", False),
        ("\\boxed{30}", "30^\\circ", True),
        ("\\boxed{18.9}", "\\$18.90", True),
        ("\\boxed{0.05}", "5\\%", True),
        ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}", True),
        ("\\boxed{\\text{(B)}}", "\\text{(C)}", False),
        ("\\boxed{evelyn}", "\\text{Evelyn}", True),
        ("\\boxed{q - p}", "p - q", False),
        (
            "\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}",
            "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
            True,
        ),
        (
            "\\boxed{\\begin{pmatrix} 2 \\\\ 1 \\end{pmatrix}}",
            "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}",
            False,
        ),
    ],
    "aime": [  # integers 0-999, written with or without leading zeros
        ("\\boxed{033}", "33", True),
        ("\\boxed{33}", "033", True),
        ("\\boxed{204}", "204", True),
        ("\\boxed{240}", "204", False),
    ],
    "amc2023": [  # float64 golds
        ("\\boxed{27}", "27.0", True),
        ("\\boxed{\\frac{54}{2}}", "27.0", True),
        ("\\boxed{26}", "27.0", False),
    ],
}


@pytest.mark.parametrize("bench", sorted(GRADING))
def test_grading_table_in_the_reward_pool(bench):
    rows = GRADING[bench]
    with RewardPool(timeout_s=30.0, workers=1) as pool:
        results = pool.map(score_answer, [(c, g, "boxed", "math_verify") for c, g, _ in rows])
    got = [(c, g, r.correct) for (c, g, _), r in zip(rows, results, strict=True)]
    assert got == rows
    assert all(r.format_ok for r in results)


GSM8K_GRADING = [  # the gsm8k row: numeric grader, boxed style
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{\\$18}", "18", True),
    ("\\boxed{18.0}", "18", True),
    ("\\boxed{17}", "18", False),
]


@pytest.mark.parametrize(("completion", "gold", "correct"), GSM8K_GRADING)
def test_gsm8k_row_grading(completion, gold, correct):
    assert score_answer(completion, gold, "boxed", "numeric").correct is correct


def test_data_prepare_puts_a_benchmark_copy_into_the_cache(run_cli, cache, tmp_path):
    copy = _write(tmp_path / "amc.jsonl", FIXTURES["amc2023"])
    res = run_cli("data", "prepare", "amc2023", "--source", copy)
    assert res.code == 0, res.err
    assert f"wrote 1 AMC 2023 problems to {cache_file('amc2023')}" in " ".join(res.err.split())
    assert [r["id"] for r in load_rows("amc2023")[1]] == [9001]


def test_a_suite_with_no_data_is_a_table_of_na_rows_and_how_to_get_them(
    run_cli, cache, tiny_config, tmp_path, monkeypatch
):
    """Offline with an empty cache (no model is loaded: no row has data); without
    math-verify the benchmark rows say which extra to install."""
    out = tmp_path / "s"
    res = run_cli("eval", "--suite", "math500", "-m", "scratch", "-c", tiny_config, "--out", out)
    assert res.code == 0, res.err
    md = (out / "suite.md").read_text()
    assert "| math500 (n=0) | n/a (MATH-500 not in mathrl's cache, no datasets extra) |" in md
    assert f"- math500: {how_to_get('math500')}" in md
    no_extra = dataclasses.replace(GRADERS.get("math_verify"), prepare=_no_math_verify)
    monkeypatch.setitem(GRADERS._items, "math_verify", no_extra)
    res = run_cli("eval", "--suite", "aime2025", "-m", "scratch", "-c", tiny_config, "--out", out)
    assert res.code == 0, res.err
    cell = json.loads((out / "suite.json").read_text())["rows"][0]["cells"]["scratch"]
    assert cell == {
        "error": "math_verify grading (task.grader, task.use_math_verify) needs the "
        "math-verify extra",
        "hint": "pip install 'mathrl[math-verify]'",
    }


def _no_math_verify():
    from mathrl.errors import ConfigError

    raise ConfigError(
        "math_verify grading (task.grader, task.use_math_verify) needs the math-verify extra: "
        "pip install 'mathrl[math-verify]'"
    )
