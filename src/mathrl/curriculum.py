"""The learnability curriculum (data.curriculum = "learnability"): take the prompts the
policy can learn from now.

GRPO learns only from groups whose rewards differ. A prompt the policy solves with
probability p gives a mixed group of G samples with probability 1 - p^G - (1 - p)^G,
largest near p = 1/2, so prompts are drawn with weight p(1 - p) (Foster & Foerster 2025,
"Learning to Reason at the Frontier of Learnability"), never below `floor` so solved
and failed prompts are revisited. p is estimated from the samples the run already draws:

    p = (correct + PRIOR * q) / (samples + PRIOR)

with `q` the pass rate so far of the prompt's task (of the whole mixture for one task),
and 1/2 before anything is seen. A prompt not yet drawn thus takes its task's rate: a
task the policy cannot do yet (q near 0) is drawn at the floor rate, one in the learnable
zone is drawn often.

Over a mixture (task.mixture) each prompt's weight is also multiplied by its task's
weight divided by the task's number of prompts, so a task's weight is its share of the
draws whatever its size. A mixture under data.curriculum = "uniform" draws by those
shares alone (learnability off) and still counts pass rates, for the metrics.

Each step draws without replacement (Efraimidis-Spirakis keys: u ** (1 / w)) from a
random.Random seeded by (seed, prompts drawn so far), and the counts are updated from the
step's whole batch on every rank (the trainer gathers it first), so every rank draws the
same prompts whatever the world size. The counts live in TrainState.extra and are saved
with each checkpoint; a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from mathrl.errors import MathrlError
from mathrl.run_setup import derive_seed
from mathrl.tasks import Example

PRIOR = 2.0
"""Pseudo-samples of the task's rate in a prompt's estimate."""
STATE_KEY = "curriculum"
"""TrainState.extra key of the counts: {"prompts": {id: [correct, samples]}, "tasks": {...}}."""
ZONE = (0.1, 0.9)
"""A prompt is in the learnable zone when its estimated pass rate lies strictly inside this."""


class CurriculumState(Protocol):
    """The trainer's TrainState fields the stream reads and advances."""

    cursor: int
    extra: dict[str, Any]


class Observed(Protocol):
    """What the stream reads from a scored group (mathrl.groups.Group)."""

    example: Example

    @property
    def results(self) -> Sequence[Any]: ...


def estimate(correct: float, samples: float, task_rate: float) -> float:
    """A prompt's pass rate: its own counts shrunk towards its task's rate."""
    return (correct + PRIOR * task_rate) / (samples + PRIOR)


def weight(p: float, floor: float) -> float:
    """Sampling weight of a prompt with pass rate p: p(1 - p), at least `floor`."""
    return max(floor, p * (1.0 - p))


class WeightedStream:
    """A prompt stream drawing by weight (same `take` as data.PromptStream): the
    learnability curriculum, or a mixture's task shares alone (learnability=False)."""

    def __init__(
        self,
        examples: list[Example],
        seed: int,
        state: CurriculumState,
        floor: float,
        learnability: bool = True,
        task_of: Callable[[Example], str] | None = None,
        task_weight: Callable[[Example], float] | None = None,
    ) -> None:
        if not examples:
            raise MathrlError("The training split is empty")
        self.examples, self.seed, self.state, self.floor = examples, seed, state, floor
        self.learnability = learnability
        self.task_of = task_of or (lambda ex: "")
        self.labels = [self.task_of(ex) for ex in examples]
        sizes: dict[str, int] = {}
        for label in self.labels:
            sizes[label] = sizes.get(label, 0) + 1
        self.task_weights = [
            (task_weight(ex) if task_weight else 1.0) / sizes[label]
            for ex, label in zip(examples, self.labels, strict=True)
        ]
        counts = state.extra.setdefault(STATE_KEY, {"prompts": {}, "tasks": {}})
        self.prompts: dict[str, list[float]] = counts["prompts"]
        self.tasks: dict[str, list[float]] = counts["tasks"]

    def task_rate(self, label: str) -> float:
        hits, n = self.tasks.get(label, (0.0, 0.0))
        return hits / n if n else 0.5

    def pass_rate(self, ex: Example, label: str) -> float:
        hits, n = self.prompts.get(ex.id, (0.0, 0.0))
        return estimate(hits, n, self.task_rate(label))

    def weights(self) -> list[float]:
        """Every training prompt's current sampling weight (task share x learnability)."""
        if not self.learnability:
            return list(self.task_weights)
        return [
            tw * weight(self.pass_rate(ex, label), self.floor)
            for ex, label, tw in zip(self.examples, self.labels, self.task_weights, strict=True)
        ]

    def take(self, n: int) -> list[Example]:
        """n distinct prompts (all of them, then repeats, when n exceeds the split)."""
        rng = random.Random(derive_seed(self.seed, self.state.cursor))
        ws = self.weights()
        keys = [rng.random() ** (1.0 / w) for w in ws]
        order = sorted(range(len(ws)), key=lambda i: -keys[i])
        picked = [self.examples[order[i % len(order)]] for i in range(n)]
        self.state.cursor += n
        return picked

    def observe(self, groups: Sequence[Observed]) -> dict[str, float]:
        """Add a step's whole batch to the counts; returns the curriculum/* metrics."""
        for g in groups:
            hits = float(sum(bool(r.correct) for r in g.results))
            n = float(len(g.results))
            mine = self.prompts.setdefault(g.example.id, [0.0, 0.0])
            mine[0] += hits
            mine[1] += n
            task = self.tasks.setdefault(self.task_of(g.example), [0.0, 0.0])
            task[0] += hits
            task[1] += n
        return self.metrics()

    def metrics(self) -> dict[str, float]:
        """Prompts seen, the learnable zone's size (seen prompts with an estimated pass rate
        inside ZONE) and each task's pass rate so far."""
        lo, hi = ZONE
        seen = [i for i, ex in enumerate(self.examples) if ex.id in self.prompts]
        zone = sum(lo < self.pass_rate(self.examples[i], self.labels[i]) < hi for i in seen)
        out = {"curriculum/seen": float(len(seen)), "curriculum/zone": float(zone)}
        for label in sorted(self.tasks):
            out[f"curriculum/pass_rate/{label or 'all'}"] = self.task_rate(label)
        return out
