"""Countdown: combine the given numbers with + - * / to reach the target.

Instances are solvable by construction (a random expression tree over the numbers is
evaluated with exact fractions). The solver enumerates every solution, so SFT data can
use a random valid solution each time (shared/notes: one fixed solution per instance
leaves RL little room).
"""

from __future__ import annotations

import random
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

from mathrl.errors import DataError
from mathrl.rewards import score_countdown
from mathrl.tasks.base import Example, Messages, RecordCall, fingerprint, read_table, stable_id
from mathrl.tasks.prompts import build_messages, format_answer

# (value, text, precedence): precedence 3 for a literal, 2 for * and /, 1 for + and -.
Item = tuple[Fraction, str, int]
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _join(a: Item, op: str, b: Item) -> Item | None:
    """Combine two sub-expressions, parenthesising only where needed."""
    if op == "/" and b[0] == 0:
        return None
    value = {"+": a[0] + b[0], "-": a[0] - b[0], "*": a[0] * b[0], "/": a[0] / b[0] if b[0] else 0}[
        op
    ]
    p = _PREC[op]
    left = f"({a[1]})" if a[2] < p else a[1]
    # The right operand of - and / needs brackets at equal precedence: 8-(3-1) != 8-3-1.
    right = f"({b[1]})" if b[2] < p or (b[2] == p and op in "-/") else b[1]
    return Fraction(value), f"{left}{op}{right}", p


def _combine(items: tuple[Item, ...], target: Fraction, found: set[str], limit: int) -> None:
    if len(found) >= limit:
        return
    if len(items) == 1:
        if items[0][0] == target:
            found.add(items[0][1])
        return
    n = len(items)
    # Pairs are chosen by position, never by value: with repeated numbers (10, 10)
    # skipping "duplicates" by value would drop real solutions.
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            rest = tuple(items[k] for k in range(n) if k not in (i, j))
            for op in "+-*/":
                if op in "+*" and i > j:
                    continue  # commutative: one order is enough
                joined = _join(items[i], op, items[j])
                if joined is not None:
                    _combine(rest + (joined,), target, found, limit)


@lru_cache(maxsize=65536)
def solve(nums: tuple[int, ...], target: int, limit: int = 10_000) -> tuple[str, ...]:
    """Every distinct solution expression (sorted), at most `limit`."""
    found: set[str] = set()
    _combine(tuple((Fraction(x), str(x), 3) for x in nums), Fraction(target), found, limit)
    return tuple(sorted(found))


def generate(
    n: int,
    seed: int,
    sizes: list[int],
    max_number: int = 20,
    max_target: int = 100,
    exclude: set[tuple[tuple[int, ...], int]] | None = None,
) -> list[dict[str, Any]]:
    """`n` distinct solvable instances {nums, target}; keys in `exclude` are never produced."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[dict[str, Any]] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise DataError(
                f"Could only generate {len(out)} of {n} distinct Countdown instances; "
                "raise data.countdown_max_number or data.countdown_max_target"
            )
        k = rng.choice(sizes)
        nums = [rng.randint(1, max_number) for _ in range(k)]
        items: list[Item] = [(Fraction(x), str(x), 3) for x in nums]
        rng.shuffle(items)
        while len(items) > 1:
            i, j = rng.sample(range(len(items)), 2)
            joined = _join(items[i], rng.choice("+-*/"), items[j])
            if joined is None:
                break
            items = [it for t, it in enumerate(items) if t not in (i, j)] + [joined]
        value = items[0][0] if len(items) == 1 else None
        if value is None or value.denominator != 1 or not 1 <= value <= max_target:
            continue
        key = (tuple(sorted(nums)), int(value))
        if key in seen:
            continue
        seen.add(key)
        out.append({"nums": nums, "target": int(value)})
    return out


def read_instances(path: Path) -> list[dict[str, Any]]:
    """Instances in the HF Countdown-Tasks-3to4 format (`nums`, `target`), .jsonl or .parquet."""
    rows = read_table(path)
    out = []
    for i, r in enumerate(rows, 1):
        nums, target = (
            r.get("nums") if isinstance(r, dict) else None,
            r.get("target") if isinstance(r, dict) else None,
        )
        if (
            not isinstance(nums, list)
            or not all(isinstance(x, int) for x in nums)
            or not isinstance(target, int)
        ):
            raise DataError(
                f"{path}: row {i} needs an int list 'nums' and an int 'target' (Countdown schema)"
            )
        out.append({"nums": list(nums), "target": target})
    return out


def question_text(nums: list[int], target: int) -> str:
    return (
        f"Using the numbers {nums}, create an expression that equals {target}. "
        "Use + - * / and each number exactly once."
    )


class CountdownTask:
    """Generated (or loaded) Countdown instances with a safe exact evaluator as reward."""

    name = "countdown"

    def __init__(
        self,
        source: str | None = None,
        prompt_style: str = "final_line",
        reward_scheme: str = "format",
        sizes: list[int] | None = None,
        max_number: int = 20,
        max_target: int = 100,
        train_size: int = 20000,
        test_size: int = 1000,
        val_size: int = 0,
        seed: int = 31415,
        system_prompt: str | None = None,
    ) -> None:
        self.prompt_style, self.reward_scheme, self.system_prompt = (
            prompt_style,
            reward_scheme,
            system_prompt,
        )
        sizes = sizes or [3]
        if source:
            rows = read_instances(Path(source))
            rng = random.Random(seed)
            order = list(range(len(rows)))
            rng.shuffle(order)
            n_test = min(test_size, len(rows) // 5)
            test = [rows[i] for i in order[:n_test]]
            rest = [rows[i] for i in order[n_test:]]
        else:
            # The test set is drawn first with its own seed, so it never depends on train_size.
            test = generate(test_size, seed + 1, sizes, max_number, max_target)
            exclude = {(tuple(sorted(r["nums"])), r["target"]) for r in test}
            rest = generate(train_size + val_size, seed, sizes, max_number, max_target, exclude)
        self._rows = {"test": test, "val": rest[:val_size], "train": rest[val_size:]}
        self.fingerprint = fingerprint(
            [{"split": k, **r} for k in ("train", "val", "test") for r in self._rows[k]]
        )
        self._cache: dict[str, list[Example]] = {}

    def rows(self, split: str) -> list[dict[str, Any]]:
        if split not in self._rows:
            raise DataError(f"Unknown split '{split}' (choose train, val or test)")
        return self._rows[split]

    def examples(self, split: str) -> list[Example]:
        if split not in self._cache:
            self._cache[split] = [
                Example(
                    id=stable_id("countdown", r["nums"], r["target"]),
                    question=question_text(r["nums"], r["target"]),
                    gold=str(r["target"]),
                    meta={"nums": list(r["nums"]), "target": r["target"]},
                )
                for r in self.rows(split)
            ]
        return self._cache[split]

    def messages(self, ex: Example) -> Messages:
        return build_messages(ex.question, self.prompt_style, self.system_prompt)

    def response(self, ex: Example, rng: random.Random | None = None) -> str:
        sols = solve(tuple(ex.meta["nums"]), ex.meta["target"])
        if not sols:
            raise DataError(f"Countdown instance {ex.meta} has no solution")
        expr = rng.choice(sols) if rng is not None else sols[0]
        return format_answer("", expr, self.prompt_style)

    def reward_call(self, ex: Example) -> tuple[Any, tuple[Any, ...]]:
        return score_countdown, (
            list(ex.meta["nums"]),
            ex.meta["target"],
            self.prompt_style,
            self.reward_scheme,
        )

    @staticmethod
    def record_call(row: dict[str, Any], prompt_style: str, scheme: str, grader: str) -> RecordCall:
        """The reward of a logged record (`mathrl score`): its 'nums' and 'target'."""
        if not isinstance(row.get("nums"), list) or not isinstance(row.get("target"), int):
            raise ValueError("needs 'nums' (int list) and 'target' (int)")
        return (
            score_countdown,
            (row["nums"], row["target"], prompt_style, scheme),
            str(row["target"]),
        )

    def corpus(self) -> list[str]:
        rng = random.Random(0)
        exs = self.examples("train")[:2000]
        # The whole prompt (system text included) so a scratch tokenizer learns to compress it.
        return [
            "\n".join(m["content"] for m in self.messages(ex)) + "\n" + self.response(ex, rng)
            for ex in exs
        ]
