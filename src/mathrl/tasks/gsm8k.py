"""GSM8K: grade-school word problems; gold = the number after '####'.

Where the data comes from (`data.path`): a .jsonl/.parquet file or a dir of split files,
'hub' (openai/gsm8k at a pinned revision, through the datasets extra), or 'auto':
$MATHRL_GSM8K if set, else the copy `mathrl data prepare gsm8k` left in mathrl's cache,
else the hub.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
from pathlib import Path
from typing import Any

from mathrl.errors import DataError
from mathrl.io import cache_root
from mathrl.rewards import parse_gold_gsm8k, score_gsm8k
from mathrl.tasks.base import (
    Example,
    Messages,
    RecordCall,
    fingerprint,
    load_hub_dataset,
    prompt_corpus,
    read_table,
    stable_id,
)
from mathrl.tasks.prompts import build_messages, format_answer

HUB_ID = "openai/gsm8k"
ENV_PATH = "MATHRL_GSM8K"
"""Environment variable naming a GSM8K file or dir; read when data.path = 'auto'."""
_CALC = re.compile(r"<<[^<>]{0,200}>>")  # calculator annotations: "48/2 = <<48/2=24>>24"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl or .parquet file, each checked for question and answer."""
    rows = read_table(path)
    for i, row in enumerate(rows, 1):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("question"), str)
            or not isinstance(row.get("answer"), str)
        ):
            raise DataError(
                f"{path}: row {i} lacks string fields 'question' and 'answer' (GSM8K schema)"
            )
    return [{"question": r["question"], "answer": r["answer"]} for r in rows]


def _find_split_file(root: Path, split: str) -> Path:
    for pattern in (
        f"{split}.jsonl",
        f"{split}.parquet",
        f"{split}-*.parquet",
        f"*/{split}-*.parquet",
    ):
        hits = sorted(root.glob(pattern))
        if hits:
            return hits[0]
    raise DataError(f"No {split}.jsonl or {split}*.parquet in dataset directory {root}")


def prepared_dir() -> Path:
    """Where `mathrl data prepare gsm8k` keeps its copy: <mathrl cache>/data/gsm8k."""
    return cache_root() / "data" / "gsm8k"


_PROVIDE = (
    "set MATHRL_GSM8K to a dir with train.jsonl and test.jsonl, or run `mathrl data prepare gsm8k --source DIR|hub` once, or install the "
    "datasets extra (pip install 'mathrl[datasets]') and go online to read openai/gsm8k"
)


def resolve_source(path: str) -> str:
    """data.path with 'auto' resolved: $MATHRL_GSM8K, else the prepared copy, else 'hub'."""
    if path != "auto":
        return path
    env = os.environ.get(ENV_PATH)
    if env:
        if not Path(env).exists():
            raise DataError(f"{ENV_PATH}={env} does not exist (a GSM8K dir or .jsonl file)")
        return env
    if (prepared_dir() / "train.jsonl").is_file():
        return str(prepared_dir())
    if importlib.util.find_spec("datasets") is not None:
        return "hub"
    raise DataError(f"GSM8K not found (data.path = 'auto'): {_PROVIDE}")


def _load_hub(split: str, revision: str) -> list[dict[str, Any]]:
    ds = load_hub_dataset("hub", HUB_ID, "main", split=split, revision=revision, advice=_PROVIDE)
    return [{"question": r["question"], "answer": r["answer"]} for r in ds]


def load_raw(source: str, split: str, revision: str) -> list[dict[str, Any]]:
    """Raw train or test rows from a local file/dir or, with source 'hub', the HF hub."""
    if source == "hub":
        return _load_hub(split, revision)
    path = Path(source)
    if path.is_dir():
        return read_rows(_find_split_file(path, split))
    if not path.exists():
        raise DataError(f"Dataset path not found: {source}")
    if split != "train":
        # A single file holds one split; the test split then comes from a sibling file.
        return read_rows(_find_split_file(path.parent, split))
    return read_rows(path)


VAL_FRACTION = 0.1
"""data.val_size's default: this fraction of the train rows, at most VAL_CAP."""
VAL_CAP = 512


def resolve_val_size(n: int, val_size: int | None) -> int:
    """data.val_size, or (None) VAL_FRACTION of the n train rows, at most VAL_CAP."""
    return min(VAL_CAP, int(n * VAL_FRACTION)) if val_size is None else val_size


def val_size_note(chosen: int, n: int) -> str:
    """What the default data.val_size chose, for the console and the events log."""
    return (
        f"data.val_size: {chosen} of {n} train rows held out for validation (the default: "
        f"{VAL_FRACTION:.0%} of them, at most {VAL_CAP}; set data.val_size to choose)"
    )


def split_train_val(n: int, val_size: int, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic index split: the same val problems for a given (n, val_size, seed)."""
    if val_size >= n:
        raise DataError(f"data.val_size ({val_size}) must be smaller than the train set ({n} rows)")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val = sorted(order[:val_size])
    train = sorted(order[val_size:])
    return train, val


def to_example(row: dict[str, Any], where: str) -> Example:
    try:
        gold = parse_gold_gsm8k(row["answer"])
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from None
    reasoning = row["answer"].rsplit("####", 1)[0]
    return Example(
        id=stable_id("gsm8k", row["question"]),
        question=row["question"],
        gold=gold,
        solution=_CALC.sub("", reasoning).strip(),
    )


class GSM8KTask:
    """GSM8K with a reserved validation split and strict/lenient answer rewards."""

    name = "gsm8k"

    def __init__(
        self,
        source: str,
        prompt_style: str = "final_line",
        reward_scheme: str = "format",
        val_size: int | None = None,
        split_seed: int = 31415,
        revision: str = "main",
        system_prompt: str | None = None,
        use_math_verify: bool = False,
    ) -> None:
        source = resolve_source(source)
        self.source, self.revision = source, revision
        self.prompt_style, self.reward_scheme = prompt_style, reward_scheme
        self.system_prompt, self.use_math_verify = system_prompt, use_math_verify
        train_rows = load_raw(source, "train", revision)
        self._train_raw = train_rows
        self._rows: dict[str, list[dict[str, Any]]] = {}
        n_val = resolve_val_size(len(train_rows), val_size)
        self.notes = [] if val_size is not None else [val_size_note(n_val, len(train_rows))]
        tr, va = split_train_val(len(train_rows), n_val, split_seed)
        self._rows["train"] = [train_rows[i] for i in tr]
        self._rows["val"] = [train_rows[i] for i in va]
        self._cache: dict[str, list[Example]] = {}
        self._examples("train")  # every gold must parse: fail at load, not mid-run
        self.fingerprint = fingerprint(train_rows + [{"val_size": n_val, "split_seed": split_seed}])

    def _examples(self, split: str) -> list[Example]:
        if split not in self._cache:
            if split == "test" and "test" not in self._rows:
                self._rows["test"] = load_raw(self.source, "test", self.revision)
            if split not in self._rows:
                raise DataError(f"Unknown split '{split}' (choose train, val or test)")
            rows = self._rows[split]
            self._cache[split] = [
                to_example(r, f"{self.source} [{split} row {i}]") for i, r in enumerate(rows, 1)
            ]
        return self._cache[split]

    def examples(self, split: str) -> list[Example]:
        return self._examples(split)

    def rows(self, split: str) -> list[dict[str, Any]]:
        self._examples(split)
        return self._rows[split]

    def export(self) -> dict[str, list[dict[str, Any]]]:
        """Files that, read back as data.path, give this task again (the same fingerprint):
        the whole official train split (val is split off it on load) and test."""
        return {"train": self._train_raw, "test": self.rows("test")}

    def messages(self, ex: Example) -> Messages:
        return build_messages(ex.question, self.prompt_style, self.system_prompt)

    def response(self, ex: Example, rng: Any | None = None) -> str:
        return format_answer(ex.solution or "", ex.gold, self.prompt_style)

    def reward_call(self, ex: Example) -> tuple[Any, tuple[Any, ...]]:
        return score_gsm8k, (ex.gold, self.prompt_style, self.reward_scheme, self.use_math_verify)

    @staticmethod
    def record_call(row: dict[str, Any], prompt_style: str, scheme: str, grader: str) -> RecordCall:
        """The reward of a logged record (`mathrl score`): its 'gold', or its GSM8K 'answer'."""
        gold = row.get("gold")
        if gold is None and isinstance(row.get("answer"), str):
            gold = parse_gold_gsm8k(row["answer"])
        if gold is None:
            raise ValueError("needs 'gold' or a GSM8K 'answer'")
        return score_gsm8k, (str(gold), prompt_style, scheme), str(gold)

    def corpus(self) -> list[str]:
        """Text to train a from-scratch tokenizer on."""
        return prompt_corpus(self)
