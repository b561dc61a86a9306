"""Several tasks trained as one: each example keeps its own task's prompt, solution and reward.

A mixture (task.mixture) is a list of (label, weight, task). Its splits are the tasks'
splits concatenated in order; every method dispatches on the example's id to the task it
came from, so a Countdown prompt is still scored by Countdown's reward and an arithmetic
one by arithmetic's. The weights are the share of each task's prompts in the sampled
stream (mathrl.curriculum); the fingerprint covers the labels, weights and every task's
own fingerprint, so a resume with another mixture is refused like one with other data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mathrl.errors import DataError
from mathrl.tasks.base import Example, Messages, Task, fingerprint


@dataclass(frozen=True)
class Component:
    """One task of a mixture: its label (in metrics and tables), weight and task."""

    label: str
    weight: float
    task: Task


class MixtureTask:
    """The Task interface over several tasks, each example answered by its own task."""

    name = "mixture"

    def __init__(self, components: Sequence[Component]) -> None:
        if not components:
            raise DataError("task.mixture is empty: name at least one task")
        labels = [c.label for c in components]
        if len(set(labels)) != len(labels):
            raise DataError(f"task.mixture labels must be unique, got {labels}")
        self.components = tuple(components)
        self._owner: dict[str, int] = {}
        self._splits: dict[str, list[Example]] = {}
        for split in ("train", "val", "test"):
            merged: list[Example] = []
            for i, c in enumerate(self.components):
                for ex in c.task.examples(split):
                    if self._owner.setdefault(ex.id, i) != i:
                        other = self.components[self._owner[ex.id]].label
                        raise DataError(
                            f"task.mixture: example {ex.id} ({ex.question[:60]!r}) is in both "
                            f"'{other}' and '{c.label}'; mix tasks with distinct problems"
                        )
                    merged.append(ex)
            self._splits[split] = merged
        self.fingerprint = fingerprint(
            [{"label": c.label, "weight": c.weight, "task": c.task.fingerprint} for c in components]
        )

    def label_of(self, ex: Example) -> str:
        """The label of the task `ex` belongs to."""
        return self.components[self._index(ex)].label

    def weight_of(self, ex: Example) -> float:
        """The mixture weight of the task `ex` belongs to."""
        return self.components[self._index(ex)].weight

    def _index(self, ex: Example) -> int:
        try:
            return self._owner[ex.id]
        except KeyError:
            raise DataError(f"example {ex.id} belongs to no task of the mixture") from None

    def _task(self, ex: Example) -> Task:
        return self.components[self._index(ex)].task

    def examples(self, split: str) -> list[Example]:
        if split not in self._splits:
            raise DataError(f"Unknown split '{split}' (choose train, val or test)")
        return self._splits[split]

    def messages(self, ex: Example) -> Messages:
        return self._task(ex).messages(ex)

    def response(self, ex: Example, rng: Any | None = None) -> str:
        return self._task(ex).response(ex, rng)

    def reward_call(self, ex: Example) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self._task(ex).reward_call(ex)

    def add_length_terms(
        self, results: list[Any], completions: list[Any], examples: list[Example]
    ) -> list[Any]:
        """Each result with its own task's token-count terms (task.rewards' overlong)
        added: completion i continues examples[i]."""
        out = list(results)
        owner = [self._index(ex) for ex in examples]
        for i, c in enumerate(self.components):
            add = getattr(c.task, "add_length_terms", None)
            rows = [j for j, k in enumerate(owner) if k == i]
            if add is None or not rows:
                continue
            done = add([results[j] for j in rows], [completions[j] for j in rows])
            for j, r in zip(rows, done, strict=True):
                out[j] = r
        return out

    def corpus(self) -> list[str]:
        """Every task's tokenizer corpus (a from-scratch model's tokenizer sees them all)."""
        out: list[str] = []
        for c in self.components:
            corpus = getattr(c.task, "corpus", None)
            if corpus is not None:
                out += corpus()
        return out
