"""The Task interface: examples, prompts, gold answers and rewards in one object."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mathrl.errors import DataError

Messages = list[dict[str, str]]

RecordCall = tuple[Callable[..., Any], tuple[Any, ...], str]
"""A logged record's reward: (picklable function, its arguments after the completion, gold)."""


@dataclass(frozen=True)
class Example:
    """One problem. `id` is a stable hash of its content, the prompt_id in every log."""

    id: str
    question: str
    gold: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


def stable_id(*parts: Any) -> str:
    """A short content hash that is the same on every machine and run."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def fingerprint(rows: Sequence[dict[str, Any]]) -> str:
    """sha256 of the canonical rows (sorted keys, one JSON object per line)."""
    h = hashlib.sha256()
    for row in rows:
        h.update(
            json.dumps(row, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        )
        h.update(b"\n")
    return h.hexdigest()


class Task(Protocol):
    """What the trainer, eval and SFT need from a task."""

    name: str
    fingerprint: str

    def examples(self, split: str) -> list[Example]:
        """The examples of a split: train, val or test."""
        ...

    def messages(self, ex: Example) -> Messages:
        """Chat messages of the prompt."""
        ...

    def response(self, ex: Example, rng: Any | None = None) -> str:
        """A correct response in the prompt's format (SFT data); rng picks among many."""
        ...

    def reward_call(self, ex: Example) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        """A picklable reward function and its arguments after the completion."""
        ...


def prompt_corpus(task: Task) -> list[str]:
    """Prompt + correct response of every training example: the text a from-scratch
    tokenizer is trained on."""
    return [
        "\n".join(m["content"] for m in task.messages(ex)) + "\n" + task.response(ex)
        for ex in task.examples("train")
    ]


def load_hub_dataset(key: str, name: str, *args: Any, advice: str = "", **kwargs: Any) -> Any:
    """datasets.load_dataset(name, *args, **kwargs) for data.path = `key`; a missing extra
    or a failed load (offline, unknown dataset or revision) is one DataError line."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"data.path = '{key}' needs the datasets extra: pip install 'mathrl[datasets]'"
        ) from None
    try:
        return datasets.load_dataset(name, *args, **kwargs)
    except Exception as exc:  # offline, missing dataset, network errors: one line
        first = (str(exc).splitlines() or [""])[0][:200]
        tail = f"; {advice}" if advice else ""
        raise DataError(
            f"cannot load {name} from the hub ({type(exc).__name__}: {first}){tail}"
        ) from None


def read_utf8(path: Path) -> str:
    """The file's text (UTF-8, a leading BOM dropped); other bytes stop with the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save it as UTF-8"
        ) from None


def parse_json(text: str, where: str) -> Any:
    """json.loads(text); a malformed, too deeply nested or oversized value is one DataError
    line naming `where`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: malformed JSON: {exc.msg}") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise DataError(f"{where}: {str(exc)[:120]}") from None


def read_table(path: Path) -> list[Any]:
    """Rows of a dataset file (.parquet, or JSON lines); strict: a bad line is an error.

    Unlike run logs (rollout.buffer.read_jsonl, which forgives a torn last line), a
    dataset is input the user controls, so every malformed line stops with file:line.
    """
    if not path.is_file():
        raise DataError(f"Dataset file not found: {path}")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"Reading {path} needs pyarrow: pip install pyarrow") from None
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow's errors for a damaged or foreign file
            raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    else:
        rows = []
        # "\n" only: JSON strings may hold U+2028 and other characters splitlines() splits on
        for lineno, line in enumerate(read_utf8(path).split("\n"), 1):
            if line.strip():
                rows.append(parse_json(line, f"{path}:{lineno}"))
    if not rows:
        raise DataError(f"Dataset file is empty: {path}")
    return rows
