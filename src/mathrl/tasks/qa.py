"""`qa`: the user's own question/answer data, graded by a chosen grader.

Sources (data.path):
- a file: .jsonl, .json (a list of objects), .csv or .parquet: the train split;
- a dir: `train.*` and, when present, `test.*` in those formats;
- `hf:owner/name[@revision]`: a Hugging Face dataset (the datasets extra) with train and
  (optionally) test splits;
- `bench:NAME`: a named benchmark's test problems (mathrl.tasks.benchmarks), no train split.
data.val_size train rows are reserved for validation (seeded; by default 10% of them, at
most 512); eval uses val, else test. Duplicate rows are refused, or dropped with
data.dedupe (the count goes to the run's events log).
Columns: data.question_field, data.answer_field, optional data.solution_field (SFT
warm-up) and data.id_field; every column travels to user reward functions.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from mathrl.errors import DataError
from mathrl.rewards import score_answer
from mathrl.rewards.graders import get_grader
from mathrl.tasks.base import (
    Example,
    Messages,
    RecordCall,
    fingerprint,
    load_hub_dataset,
    parse_json,
    prompt_corpus,
    read_table,
    read_utf8,
    stable_id,
)
from mathrl.tasks.benchmarks import load_rows as load_benchmark
from mathrl.tasks.gsm8k import resolve_val_size, split_train_val, val_size_note
from mathrl.tasks.prompts import build_messages, format_answer

FORMATS = (".jsonl", ".json", ".csv", ".parquet")
MAX_FIELD_CHARS = 100_000
"""A question, answer or solution longer than this is a data error (not a math problem)."""
MAX_DEPTH = 32
"""Most levels of lists/objects a column's value may nest."""


def read_any(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl/.json/.csv/.parquet file; a malformed file or row stops with one
    line naming the file, the row (or line) and what is wrong."""
    if not path.is_file():
        raise DataError(f"Dataset file not found: {path}")
    if path.suffix == ".csv":
        rows: list[Any] = _read_csv(path)
    elif path.suffix == ".json":
        rows = parse_json(read_utf8(path), str(path))
        if not isinstance(rows, list):
            raise DataError(f"{path}: a .json dataset must hold a list of objects")
    elif path.suffix in (".jsonl", ".parquet"):
        rows = read_table(path)
    else:
        raise DataError(f"{path}: unsupported dataset format (use {', '.join(FORMATS)})")
    if not rows:
        raise DataError(f"Dataset file is empty: {path}")
    for i, row in enumerate(rows, 1):
        deep = _too_deep(row) if isinstance(row, dict) else None
        if deep is not None:
            raise DataError(f"{path} row {i}: column '{deep}' nests deeper than {MAX_DEPTH} levels")
    return rows


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV file with a header; each row has exactly the header's columns."""
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:
            raise DataError(f"{path}: the header names column '{twice[0]}' twice")
        rows = []
        for i, values in enumerate(reader, 1):
            if not values:
                continue  # a blank line
            if len(values) != len(header):
                raise DataError(
                    f"{path} row {i} (line {reader.line_num}): {len(values)} values, the "
                    f"header names {len(header)} columns"
                )
            rows.append(dict(zip(header, values, strict=True)))
    except csv.Error as exc:  # a NUL byte, a field over the size limit, a stray quote
        raise DataError(f"{path} line {reader.line_num}: malformed CSV: {exc}") from None
    return rows


def _too_deep(row: dict[str, Any]) -> str | None:
    """The first column whose value nests lists/objects deeper than MAX_DEPTH, else None
    (iterative: a row that parsed must not fail later in a recursive dump or pickle)."""
    for key, value in row.items():
        stack = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, dict | list):
                if depth > MAX_DEPTH:
                    return str(key)
                children = item.values() if isinstance(item, dict) else item
                stack.extend((child, depth + 1) for child in children)
    return None


def _split_file(root: Path, split: str) -> Path | None:
    hits = [root / f"{split}{ext}" for ext in FORMATS if (root / f"{split}{ext}").is_file()]
    return hits[0] if hits else None


def load_splits(source: str) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """{split: (where, rows)} for train and, when the source has one, test."""
    if source.startswith("hf:"):
        return _load_hf(source[3:])
    if source.startswith("bench:"):
        return {"test": load_benchmark(source[6:])}
    path = Path(source)
    if path.is_dir():
        train = _split_file(path, "train")
        if train is None:
            raise DataError(f"No train{{{','.join(FORMATS)}}} file in dataset directory {path}")
        out = {"train": (str(train), read_any(train))}
        test = _split_file(path, "test")
        if test is not None:
            out["test"] = (str(test), read_any(test))
        return out
    if not path.exists():
        raise DataError(f"Dataset path not found: {source} (task.name = 'qa' needs data.path)")
    return {"train": (str(path), read_any(path))}


def _load_hf(spec: str) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    name, _, revision = spec.partition("@")
    ds = load_hub_dataset("hf:...", name, revision=revision or None)
    if "train" not in ds:
        raise DataError(f"hf:{spec} has no train split (splits: {', '.join(ds)})")
    return {s: (f"hf:{spec}[{s}]", [dict(r) for r in ds[s]]) for s in ("train", "test") if s in ds}


class QATask:
    """Question/answer rows from a file, dir or HF dataset, graded by task.grader."""

    name = "qa"

    def __init__(
        self,
        source: str,
        question_field: str = "question",
        answer_field: str = "answer",
        solution_field: str | None = None,
        id_field: str | None = None,
        grader: str = "numeric",
        prompt_style: str = "final_line",
        reward_scheme: str = "format",
        val_size: int | None = 0,
        split_seed: int = 31415,
        system_prompt: str | None = None,
        dedupe: bool = False,
    ) -> None:
        self.fields = (question_field, answer_field, solution_field, id_field)
        self.grader, self.prompt_style, self.reward_scheme = grader, prompt_style, reward_scheme
        self.system_prompt = system_prompt
        self.notes: list[str] = []
        get_grader(grader).prepare()  # a missing extra stops here, not as wrong answers
        loaded = load_splits(source)
        where, train_rows = loaded.get("train", ("", []))
        test_where, test_rows = loaded.get("test", ("", []))
        if dedupe:
            train_rows, test_rows = self._dedupe(where, train_rows, test_where, test_rows)
        n_val = resolve_val_size(len(train_rows), val_size)
        if val_size is None:
            self.notes.append(val_size_note(n_val, len(train_rows)))
        # (row number in its file, row) of each split
        numbered = list(enumerate(train_rows, 1))
        if n_val:
            tr, va = split_train_val(len(train_rows), n_val, split_seed)
            splits = {"train": [numbered[i] for i in tr], "val": [numbered[i] for i in va]}
        else:
            splits = {"train": numbered, "val": []}
        splits["test"] = list(enumerate(test_rows, 1))
        self._rows = {split: [row for _, row in rows] for split, rows in splits.items()}
        self._train_raw = train_rows
        self._examples: dict[str, list[Example]] = {}
        seen: dict[str, str] = {}
        for split, rows in splits.items():
            origin = where if split != "test" else test_where
            self._examples[split] = [
                self._example(row, f"{origin} row {i}", seen) for i, row in rows
            ]
        self.fingerprint = fingerprint(
            [{"fields": list(self.fields), "val_size": n_val, "split_seed": split_seed}]
            + train_rows
            + test_rows
        )

    def _row_id(self, row: Any) -> str | None:
        """The id a row's example will have; None for a row _example will refuse."""
        question_field, answer_field, _, id_field = self.fields
        if not isinstance(row, dict):
            return None
        if id_field:
            return None if row.get(id_field) in (None, "") else str(row[id_field])
        question, answer = row.get(question_field), row.get(answer_field)
        if not isinstance(question, str) or not isinstance(answer, str | int | float):
            return None
        return stable_id("qa", question, str(answer).strip())

    def _dedupe(
        self, where: str, train: list[Any], test_where: str, test: list[Any]
    ) -> tuple[list[Any], list[Any]]:
        """data.dedupe: keep the first of rows with the same id (question and answer, or
        data.id_field); a train row repeating a test row is dropped from train."""
        kept: dict[str, list[Any]] = {"test": [], "train": []}
        seen: set[str] = set()
        for split, rows in (("test", test), ("train", train)):
            for row in rows:
                row_id = self._row_id(row)
                if row_id is not None and row_id in seen:
                    continue
                if row_id is not None:
                    seen.add(row_id)
                kept[split].append(row)
        for split, rows, origin in (("train", train, where), ("test", test, test_where)):
            dropped = len(rows) - len(kept[split])
            if dropped:
                self.notes.append(
                    f"data.dedupe: dropped {dropped} duplicate rows of {origin} "
                    f"({len(kept[split])} kept)"
                )
        return kept["train"], kept["test"]

    def _example(self, row: Any, where: str, seen: dict[str, str]) -> Example:
        question_field, answer_field, solution_field, id_field = self.fields
        if not isinstance(row, dict):
            raise DataError(f"{where}: a row must be an object with named columns")
        for key in (question_field, answer_field, solution_field, id_field):
            if key is not None and row.get(key) in (None, ""):
                have = ", ".join(sorted(map(str, row)))
                raise DataError(f"{where}: column '{key}' is missing or empty (has: {have})")
        question, answer = row[question_field], row[answer_field]
        if not isinstance(question, str):
            raise DataError(f"{where}: column '{question_field}' must be text")
        if isinstance(answer, bool) or not isinstance(answer, str | int | float):
            raise DataError(f"{where}: column '{answer_field}' must be text or a number")
        gold = str(answer).strip()
        solution = row[solution_field] if solution_field else None
        for key, value in (
            (question_field, question),
            (answer_field, gold),
            (solution_field, solution),
        ):
            if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
                raise DataError(f"{where}: column '{key}' is longer than {MAX_FIELD_CHARS} chars")
        problem = get_grader(self.grader).check_gold(gold)
        if problem is not None:
            raise DataError(f"{where}: {problem} (task.grader = '{self.grader}')")
        ex_id = str(row[id_field]) if id_field else stable_id("qa", question, gold)
        if ex_id in seen:
            what = f"id '{ex_id}'" if id_field else "question and answer"
            raise DataError(f"{where}: duplicate {what} (first seen at {seen[ex_id]})")
        seen[ex_id] = where
        columns = {k: v for k, v in row.items() if isinstance(k, str)}
        return Example(
            id=ex_id,
            question=question,
            gold=gold,
            solution=str(solution) if solution is not None else None,
            meta={"columns": columns},
        )

    def examples(self, split: str) -> list[Example]:
        if split not in self._examples:
            raise DataError(f"Unknown split '{split}' (choose train, val or test)")
        return self._examples[split]

    def rows(self, split: str) -> list[dict[str, Any]]:
        self.examples(split)
        return self._rows[split]

    def export(self) -> dict[str, list[dict[str, Any]]]:
        """Files that data.path reads back as this task: the whole train split and test."""
        return {"train": self._train_raw, "test": self._rows["test"]}

    def messages(self, ex: Example) -> Messages:
        return build_messages(ex.question, self.prompt_style, self.system_prompt)

    def response(self, ex: Example, rng: Any | None = None) -> str:
        return format_answer(ex.solution or "", ex.gold, self.prompt_style)

    def reward_call(self, ex: Example) -> tuple[Any, tuple[Any, ...]]:
        return score_answer, (ex.gold, self.prompt_style, self.grader, self.reward_scheme)

    @staticmethod
    def record_call(row: dict[str, Any], prompt_style: str, scheme: str, grader: str) -> RecordCall:
        """The reward of a logged record (`mathrl score`): its 'gold' under `grader`."""
        if row.get("gold") is None:
            raise ValueError("needs 'gold' (the answer)")
        return score_answer, (str(row["gold"]), prompt_style, grader, scheme), str(row["gold"])

    def corpus(self) -> list[str]:
        """Text to train a from-scratch tokenizer on."""
        return prompt_corpus(self)
