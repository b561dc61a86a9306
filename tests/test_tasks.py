"""Tasks: GSM8K loading/splits/fingerprint, Countdown generation and solver."""

from __future__ import annotations

import json
import random
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from conftest import GSM8K_DIR, needs_gsm8k
from mathrl.errors import ConfigError, DataError
from mathrl.rewards import PROMPT_STYLES, evaluate_expression, extract_strict
from mathrl.tasks.countdown import CountdownTask, generate, solve
from mathrl.tasks.gsm8k import GSM8KTask, split_train_val
from mathrl.tasks.prompts import PROMPT_TEXT, build_messages, format_answer


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _gsm_rows(n: int) -> list[dict]:
    return [
        {
            "question": f"What is {i} + 1?",
            "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1:,}",
        }
        for i in range(n)
    ]


def test_gsm8k_local_dir_split_and_gold(tmp_path):
    _write(tmp_path / "train.jsonl", _gsm_rows(20))
    _write(tmp_path / "test.jsonl", _gsm_rows(3))
    task = GSM8KTask(str(tmp_path), val_size=5, split_seed=1)
    train, val, test = task.examples("train"), task.examples("val"), task.examples("test")
    assert (len(train), len(val), len(test)) == (15, 5, 3)
    assert not {e.id for e in train} & {e.id for e in val}
    ex = train[0]
    assert ex.gold == str(int(ex.question.split()[2]) + 1)
    # calculator annotations are stripped from the SFT solution; the answer is re-formatted
    assert "<<" not in ex.solution
    assert task.response(ex).endswith(f"Final: {ex.gold}")
    # the split and fingerprint are deterministic
    again = GSM8KTask(str(tmp_path), val_size=5, split_seed=1)
    assert [e.id for e in again.examples("val")] == [e.id for e in val]
    assert again.fingerprint == task.fingerprint
    assert GSM8KTask(str(tmp_path), val_size=5, split_seed=2).fingerprint != task.fingerprint


def test_gsm8k_thousands_gold(tmp_path):
    _write(tmp_path / "train.jsonl", _gsm_rows(1200))
    task = GSM8KTask(str(tmp_path), val_size=0)
    golds = {e.question: e.gold for e in task.examples("train")}
    assert golds["What is 1199 + 1?"] == "1200"  # written "1,200" after ####


def test_split_is_seeded():
    tr, va = split_train_val(10, 3, 31415)
    assert sorted(tr + va) == list(range(10)) and len(va) == 3
    assert split_train_val(10, 3, 31415) == (tr, va)
    with pytest.raises(DataError, match="val_size"):
        split_train_val(10, 10, 0)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "Dataset path not found"),
        ("", "Dataset file is empty"),
        ('{"question": "q", "answer": "a"}\n{broken\n', ":2: malformed JSON"),
        ('{"q": "x"}\n', "lacks string fields 'question' and 'answer'"),
        ('{"question": "q", "answer": "no hashes here"}\n', "row 1"),
    ],
)
def test_gsm8k_bad_input(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        GSM8KTask(str(path), val_size=0)


@needs_gsm8k
def test_official_gsm8k_loads():
    task = GSM8KTask(str(GSM8K_DIR))
    assert len(task.examples("train")) == 7473 - 512
    assert len(task.examples("val")) == 512
    assert len(task.examples("test")) == 1319
    assert task.examples("train")[0].gold.lstrip("-").replace(".", "").isdigit()


def test_solver_finds_all_solutions_with_repeated_numbers():
    # 10,10,5 -> 25: found by position even though two numbers are equal
    assert solve((10, 10, 5), 25) == ("10+10+5", "5+10+10")
    sols = solve((1, 3, 4, 6), 24)
    assert "6/(1-3/4)" in sols
    for s in sols:
        assert evaluate_expression(s) == Fraction(24)
    assert solve((1, 1, 1), 100) == ()


def test_generator_is_solvable_seeded_and_excludes():
    rows = generate(300, seed=7, sizes=[3, 4], max_number=12, max_target=50)
    assert rows == generate(300, seed=7, sizes=[3, 4], max_number=12, max_target=50)
    assert {len(r["nums"]) for r in rows} == {3, 4}
    for r in rows[:60]:
        assert solve(tuple(r["nums"]), r["target"]), r
        assert 1 <= r["target"] <= 50 and all(1 <= x <= 12 for x in r["nums"])
    keys = {(tuple(sorted(r["nums"])), r["target"]) for r in rows}
    assert len(keys) == 300
    other = generate(200, seed=8, sizes=[3, 4], max_number=12, max_target=50, exclude=keys)
    assert not keys & {(tuple(sorted(r["nums"])), r["target"]) for r in other}


def test_countdown_task_heldout_disjoint_and_random_solutions():
    task = CountdownTask(train_size=500, test_size=100, max_number=10, max_target=30)
    train_keys = {(tuple(sorted(e.meta["nums"])), e.meta["target"]) for e in task.examples("train")}
    test_keys = {(tuple(sorted(e.meta["nums"])), e.meta["target"]) for e in task.examples("test")}
    assert len(test_keys) == 100 and not train_keys & test_keys
    ex = next(
        e for e in task.examples("train") if len(solve(tuple(e.meta["nums"]), e.meta["target"])) > 2
    )
    rng = random.Random(0)
    responses = {task.response(ex, rng) for _ in range(50)}
    assert len(responses) > 1
    fn, args = task.reward_call(ex)
    for r in responses:
        assert fn(r, *args).reward == 1.0


def test_countdown_hf_format_loader(tmp_path):
    path = _write(
        tmp_path / "cd.jsonl",
        [{"nums": [2, 3, 4], "target": 24}] * 3 + [{"nums": [1, 2, 3], "target": 6}] * 7,
    )
    task = CountdownTask(str(path), test_size=2)
    assert len(task.examples("test")) == 2 and len(task.examples("train")) == 8
    bad = _write(tmp_path / "bad.jsonl", [{"numbers": [1], "target": 2}])
    with pytest.raises(DataError, match="needs an int list 'nums'"):
        CountdownTask(str(bad))


# ---------------------------------------------------------------- prompt styles


def test_every_prompt_style_has_prompt_text():
    assert sorted(PROMPT_TEXT) == PROMPT_STYLES.names()


@pytest.mark.parametrize("style", PROMPT_STYLES.names())
@pytest.mark.parametrize("reasoning", ["2 + 3 = 5.", ""])
def test_a_formatted_answer_is_what_the_strict_extractor_reads(style, reasoning):
    response = format_answer(reasoning, "5", style)
    assert extract_strict(response, style) == "5"
    assert not response.startswith("\n")


@pytest.mark.parametrize(
    ("style", "expected"),
    [
        ("final_line", "2 + 3 = 5.\nFinal: 5"),
        ("hash", "2 + 3 = 5.\n#### 5"),
        ("boxed", "2 + 3 = 5.\nThe answer is \\boxed{5}."),
        ("think_answer", "<think>2 + 3 = 5.</think><answer>5</answer>"),
    ],
)
def test_format_answer_by_style(style, expected):
    assert format_answer("  2 + 3 = 5.\n", "5", style) == expected


def test_build_messages():
    hash_msgs = build_messages("What is 2 + 3?", "hash")
    assert [m["role"] for m in hash_msgs] == ["user"]  # the seeds' GSM8K prompt: no system
    assert hash_msgs[0]["content"].endswith('output the final answer after "####".')
    boxed = build_messages("Q", "boxed", system_prompt="Be brief.")
    assert boxed == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q"}]
    with pytest.raises(
        ConfigError, match=r"Unknown prompt style 'boxd' \(did you mean 'boxed'\?\)"
    ):
        build_messages("Q", "boxd")


def test_a_style_without_prompt_text_is_a_clear_error():
    PROMPT_STYLES.add("zz_new", PROMPT_STYLES.get("boxed"))
    try:
        with pytest.raises(ConfigError, match="prompt style 'zz_new' has no prompt text"):
            format_answer("r", "1", "zz_new")
    finally:
        PROMPT_STYLES.remove("zz_new")


def _gsm8k_files(root: Path) -> Path:
    root.mkdir(parents=True)
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(4)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "test.jsonl").write_text(json.dumps(rows[0]) + "\n")
    return root


def test_gsm8k_auto_source_order(tmp_path, monkeypatch):
    """data.path = 'auto': $MATHRL_GSM8K, else the prepared copy in the cache, else the hub,
    else one line naming all three."""
    from mathrl.tasks import gsm8k

    monkeypatch.setenv("MATHRL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MATHRL_GSM8K", raising=False)
    monkeypatch.setattr(gsm8k.importlib.util, "find_spec", lambda name: None)  # no datasets
    with pytest.raises(DataError) as err:
        gsm8k.resolve_source("auto")
    message = str(err.value)
    assert message.startswith("GSM8K not found (data.path = 'auto'): set MATHRL_GSM8K")
    assert "mathrl data prepare gsm8k --source DIR|hub" in message
    assert "pip install 'mathrl[datasets]'" in message
    prepared = _gsm8k_files(tmp_path / "cache/data/gsm8k")
    assert gsm8k.resolve_source("auto") == str(prepared)
    env = _gsm8k_files(tmp_path / "env")
    monkeypatch.setenv("MATHRL_GSM8K", str(env))
    assert gsm8k.resolve_source("auto") == str(env)
    assert gsm8k.resolve_source(str(prepared)) == str(prepared)  # an explicit path wins
    monkeypatch.setenv("MATHRL_GSM8K", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="MATHRL_GSM8K=.*nowhere does not exist"):
        gsm8k.resolve_source("auto")
    monkeypatch.delenv("MATHRL_GSM8K")
    (prepared / "train.jsonl").unlink()  # a prepare killed before train.jsonl: not a copy
    monkeypatch.setattr(gsm8k.importlib.util, "find_spec", lambda name: object())
    assert gsm8k.resolve_source("auto") == "hub"


def test_no_path_outside_the_repository():
    """Code, presets, tests, docs and benchmarks never name the folder beside the repo; only
    .ci/run may (it sets MATHRL_GSM8K for the tests)."""
    repo = Path(__file__).resolve().parents[1]
    needle = "shared/" + "data"  # split so this file does not match itself
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.split()
    hits = []
    for rel in map(Path, tracked):
        path = repo / rel
        if rel.parts[0] == ".ci" or path.is_symlink() or not path.is_file():
            continue
        if path.suffix in {".py", ".toml", ".md", ".yaml", ".yml", ".sh", ".cfg", ".txt"} or (
            path.name in {"Makefile", "Dockerfile", "Dockerfile.cuda"}
        ):
            if needle in path.read_text(encoding="utf-8", errors="replace"):
                hits.append(str(rel))
    assert hits == []


def test_gsm8k_hub_failure_is_one_line_naming_the_alternatives(monkeypatch):
    """Offline with the datasets extra: the hub read fails with one line that still says how
    to provide GSM8K (a stand-in datasets module; tests never download)."""
    import sys
    import types

    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub\n(LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DataError) as err:
        GSM8KTask("hub")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        "cannot load openai/gsm8k from the hub (ConnectionError: Couldn't reach 'openai/gsm8k' "
        "on the Hub); set MATHRL_GSM8K"
    )
