"""The Task interface: examples, prompts, gold answers and rewards in one object."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Messages = list[dict[str, str]]


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
