"""GSM8K: grade-school word problems; gold = the number after '####'."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from mathrl.errors import DataError
from mathrl.rewards import parse_gold_gsm8k, score_gsm8k
from mathrl.tasks.base import Example, Messages, fingerprint, read_table, stable_id
from mathrl.tasks.prompts import build_messages, format_answer

HUB_ID = "openai/gsm8k"
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


def load_raw(source: str, split: str, revision: str) -> list[dict[str, Any]]:
    """Raw train or test rows from a local file/dir or, with source 'hub', the HF hub."""
    if source == "hub":
        try:
            import datasets
        except ImportError:
            raise DataError(
                "data.path = 'hub' needs the datasets extra: pip install 'mathrl[datasets]'"
            ) from None
        ds = datasets.load_dataset(HUB_ID, "main", split=split, revision=revision)
        return [{"question": r["question"], "answer": r["answer"]} for r in ds]
    path = Path(source)
    if path.is_dir():
        return read_rows(_find_split_file(path, split))
    if not path.exists():
        raise DataError(f"Dataset path not found: {source}")
    if split != "train":
        # A single file holds one split; the test split then comes from a sibling file.
        return read_rows(_find_split_file(path.parent, split))
    return read_rows(path)


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
        val_size: int = 512,
        split_seed: int = 31415,
        revision: str = "main",
        system_prompt: str | None = None,
        use_math_verify: bool = False,
    ) -> None:
        self.source, self.revision = source, revision
        self.prompt_style, self.reward_scheme = prompt_style, reward_scheme
        self.system_prompt, self.use_math_verify = system_prompt, use_math_verify
        train_rows = load_raw(source, "train", revision)
        self._rows: dict[str, list[dict[str, Any]]] = {}
        tr, va = split_train_val(len(train_rows), val_size, split_seed)
        self._rows["train"] = [train_rows[i] for i in tr]
        self._rows["val"] = [train_rows[i] for i in va]
        self._cache: dict[str, list[Example]] = {}
        self._examples("train")  # every gold must parse: fail at load, not mid-run
        self.fingerprint = fingerprint(
            train_rows + [{"val_size": val_size, "split_seed": split_seed}]
        )

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

    def messages(self, ex: Example) -> Messages:
        return build_messages(ex.question, self.prompt_style, self.system_prompt)

    def response(self, ex: Example, rng: Any | None = None) -> str:
        return format_answer(ex.solution or "", ex.gold, self.prompt_style)

    def reward_call(self, ex: Example) -> tuple[Any, tuple[Any, ...]]:
        return score_gsm8k, (ex.gold, self.prompt_style, self.reward_scheme, self.use_math_verify)

    def corpus(self) -> list[str]:
        """Text to train a from-scratch tokenizer on."""
        return [
            "\n".join(m["content"] for m in self.messages(ex)) + "\n" + self.response(ex)
            for ex in self.examples("train")
        ]
