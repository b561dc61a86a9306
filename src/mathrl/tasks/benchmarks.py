"""The maths benchmarks papers report, by name: where each one's rows are on the hub, which
columns hold the question and the answer, how it is graded and prompted, its licence.

GSM8K is served by the gsm8k task (its own sources: $MATHRL_GSM8K, the prepared copy, the
hub); the others by the qa task with data.path = `bench:NAME`, which reads the copy in
mathrl's cache (<cache>/data/benchmarks/NAME/<revision>/test.jsonl), else downloads it once
from the hub (the datasets extra) into that cache, else stops with one line saying how to
get it (`mathrl data prepare NAME`, online or from a file).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathrl.errors import DataError
from mathrl.io import cache_root, write_jsonl
from mathrl.registry import Registry
from mathrl.tasks.base import load_hub_dataset, read_table


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: its rows on the hub and how they are asked and graded."""

    title: str
    """The name papers give it (MATH-500, AIME 2024)."""
    hub_id: str
    """Dataset id on the Hugging Face hub."""
    split: str
    """The hub split holding the problems."""
    question_field: str
    answer_field: str
    grader: str
    """mathrl.rewards.GRADERS name."""
    licence: str
    """The licence of the dataset as its card states it (or that it states none)."""
    revision: str = "main"
    """A commit of the hub dataset; 'main' where no commit hash was found to pin."""
    config: str | None = None
    """The hub config (subset) name, if the dataset has several."""
    id_field: str | None = None
    """A column of unique ids; None: a hash of the question and answer."""
    keep: tuple[str, str] | None = None
    """(column, text): only rows whose column contains text (a year out of several)."""
    samples: int = 1
    """Samples per problem the suite draws unless eval.n is set (avg@n, pass@k)."""
    prompt_style: str = "boxed"
    task: str = "qa"
    """The task that serves it: qa (data.path = bench:NAME), or gsm8k."""

    def overrides(self, name: str) -> tuple[str, ...]:
        """The config overrides (--set form) that evaluate this benchmark."""
        common = (f"task.prompt_style={self.prompt_style}", "task.reward_scheme=format")
        if self.task == "gsm8k":
            return ("task.name=gsm8k", *common)
        fields = [
            f"data.question_field={self.question_field}",
            f"data.answer_field={self.answer_field}",
        ]
        if self.id_field is not None:
            fields.append(f"data.id_field={self.id_field}")
        return (
            "task.name=qa",
            f"data.path=bench:{name}",
            f"task.grader={self.grader}",
            "data.val_size=0",
            *fields,
            *common,
        )


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
BENCHMARKS.add(
    "gsm8k",
    Benchmark(
        "GSM8K",
        "openai/gsm8k",
        "test",
        "question",
        "answer",
        grader="numeric",
        licence="MIT",
        revision="e53f048856ff4f594e959d75785d2c2d37b678ee",
        config="main",
        task="gsm8k",
    ),
)
BENCHMARKS.add(
    "math500",
    Benchmark(
        "MATH-500",
        "HuggingFaceH4/MATH-500",
        "test",
        "problem",
        "answer",
        grader="math_verify",
        licence="MIT (the MATH dataset and openai/prm800k's split; the hub card states none)",
        revision="ff5b20257d8185524591543f8ff5993951537bb8",
        id_field="unique_id",
    ),
)
BENCHMARKS.add(
    "aime2024",
    Benchmark(
        "AIME 2024",
        "AI-MO/aimo-validation-aime",
        "train",
        "problem",
        "answer",
        grader="math_verify",
        licence="Apache-2.0 (the card at main; problems from the AoPS wiki)",
        revision="fca73e80df967c49ef6e20f88ce0a9fdb44bccc0",
        id_field="id",
        keep=("url", "2024_AIME"),
        samples=32,
    ),
)
BENCHMARKS.add(
    "aime2025",
    Benchmark(
        "AIME 2025",
        "MathArena/aime_2025",
        "train",
        "problem",
        "answer",
        grader="math_verify",
        licence="CC BY-NC-SA 4.0 (MathArena)",
        samples=32,
    ),
)
BENCHMARKS.add(
    "amc2023",
    Benchmark(
        "AMC 2023",
        "AI-MO/aimo-validation-amc",
        "train",
        "problem",
        "answer",
        grader="math_verify",
        licence="none stated on the card (problems from the AoPS wiki)",
        revision="8ef249608d65c2de7763ca7525f438e540ba285e",
        id_field="id",
        keep=("url", "2023_AMC"),
        samples=16,
    ),
)


def cache_file(name: str) -> Path:
    """Where the benchmark's rows are kept: <cache>/data/benchmarks/NAME/<revision>/test.jsonl."""
    return (
        cache_root() / "data" / "benchmarks" / name / BENCHMARKS.get(name).revision / "test.jsonl"
    )


def how_to_get(name: str) -> str:
    """The one line that says how to get a benchmark that is neither cached nor reachable."""
    b = BENCHMARKS.get(name)
    return (
        f"run `mathrl data prepare {name}` once with the hub reachable (needs pip install "
        f"'mathrl[datasets]'), or `mathrl data prepare {name} --source FILE` with a .jsonl or "
        f".parquet copy of {b.hub_id}'s {b.split} split"
    )


def select_rows(name: str, rows: list[Any], where: str) -> list[dict[str, Any]]:
    """The benchmark's rows out of its hub split: objects with its question and answer
    columns, only those `keep` names."""
    b = BENCHMARKS.get(name)
    out = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or b.question_field not in row or b.answer_field not in row:
            have = ", ".join(sorted(map(str, row))) if isinstance(row, dict) else type(row).__name__
            raise DataError(
                f"{where} row {i}: {b.title} rows need columns '{b.question_field}' and "
                f"'{b.answer_field}' (has: {have})"
            )
        if b.keep is None or b.keep[1] in str(row.get(b.keep[0], "")):
            out.append(row)
    if not out:
        which = f" ({b.keep[0]} containing {b.keep[1]!r})" if b.keep else ""
        raise DataError(f"{where}: no row of {b.title}{which}")
    return out


def load_rows(name: str) -> tuple[str, list[dict[str, Any]]]:
    """(where, rows) of a benchmark: the cached copy, else the hub (then cached); neither is
    one DataError line `<what is missing>: <how to get it>`."""
    path = cache_file(name)
    if path.is_file():
        return str(path), select_rows(name, read_table(path), str(path))
    title = BENCHMARKS.get(name).title
    if importlib.util.find_spec("datasets") is None:
        raise DataError(f"{title} not in mathrl's cache, no datasets extra: {how_to_get(name)}")
    try:
        raw, where = _hub_rows(name)
    except DataError as exc:  # offline, or the hub refused: the cause after the advice
        raise DataError(
            f"{title} not in mathrl's cache, hub unreachable: {how_to_get(name)} ({exc})"
        ) from None
    return _cache(name, select_rows(name, raw, where))


def _hub_rows(name: str) -> tuple[list[Any], str]:
    b = BENCHMARKS.get(name)
    ds = load_hub_dataset(f"bench:{name}", b.hub_id, b.config, split=b.split, revision=b.revision)
    return [dict(r) for r in ds], f"{b.hub_id}@{b.revision}[{b.split}]"


def _cache(name: str, rows: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    path = cache_file(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)
    return str(path), rows


def prepare(name: str, source: str = "hub") -> tuple[str, list[dict[str, Any]]]:
    """Read a benchmark from the hub (source 'hub') or a local .jsonl/.parquet file of its
    split, and write its rows into mathrl's cache; (cache file, rows)."""
    b = BENCHMARKS.get(name)
    if b.task != "qa":
        raise DataError(f"{b.title} is prepared by `mathrl data prepare {b.task}`")
    raw, where = _hub_rows(name) if source == "hub" else (read_table(Path(source)), source)
    return _cache(name, select_rows(name, raw, where))
