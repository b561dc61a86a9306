"""Generated arithmetic at several difficulty levels: seeded, solvable by construction.

Kinds (data.arithmetic_kind), each with data.arithmetic_digits-digit operands:
- `add`:   a + b or a - b (the larger first, so answers stay non-negative);
- `mul`:   a * b;
- `mixed`: three operations over four numbers with parentheses, e.g. (12 + 7) * 3 - 5;
- `word`:  one-step word problems from templates (buy, give, share, lose), answers computed.
Every gold answer is the exact integer value, computed when the item is made; the test set
is drawn first with its own seed and never overlaps training.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from mathrl.errors import DataError
from mathrl.registry import Registry
from mathrl.rewards import score_answer
from mathrl.tasks.base import Example, Messages, fingerprint, prompt_corpus, stable_id
from mathrl.tasks.prompts import build_messages, format_answer

Item = dict[str, Any]  # question, answer (int), working (str)


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1)


def _add(rng: random.Random, digits: int) -> Item:
    a, b = sorted((_operand(rng, digits), _operand(rng, digits)), reverse=True)
    if rng.random() < 0.5:
        return {
            "question": f"What is {a} + {b}?",
            "answer": a + b,
            "working": f"{a} + {b} = {a + b}",
        }
    return {"question": f"What is {a} - {b}?", "answer": a - b, "working": f"{a} - {b} = {a - b}"}


def _mul(rng: random.Random, digits: int) -> Item:
    a, b = _operand(rng, digits), _operand(rng, digits)
    return {"question": f"What is {a} * {b}?", "answer": a * b, "working": f"{a} * {b} = {a * b}"}


def _mixed(rng: random.Random, digits: int) -> Item:
    """((a op b) op c) op d with one bracketed pair; integer arithmetic only (no /)."""
    a, b, c, d = (_operand(rng, digits) for _ in range(4))
    op1, op2, op3 = (rng.choice("+-*") for _ in range(3))
    inner = {"+": a + b, "-": a - b, "*": a * b}[op1]
    middle = {"+": inner + c, "-": inner - c, "*": inner * c}[op2]
    value = {"+": middle + d, "-": middle - d, "*": middle * d}[op3]
    # Brackets make the evaluation order the one written, whatever the precedence.
    text = f"(({a} {op1} {b}) {op2} {c}) {op3} {d}"
    working = f"{a} {op1} {b} = {inner}; {inner} {op2} {c} = {middle}; {middle} {op3} {d} = {value}"
    return {"question": f"What is {text}?", "answer": value, "working": working}


_NAMES = ("Ada", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jia")
_THINGS = ("apples", "books", "coins", "marbles", "pencils", "stickers", "cards", "shells")


def _word(rng: random.Random, digits: int) -> Item:
    name, other = rng.sample(_NAMES, 2)
    thing = rng.choice(_THINGS)
    a, b = _operand(rng, digits), max(2, _operand(rng, max(1, digits - 1)))
    kind = rng.randrange(4)
    if kind == 0:
        q = f"{name} has {a} {thing}. {other} gives {name} {b} more. How many {thing} does {name} have now?"
        return {"question": q, "answer": a + b, "working": f"{a} + {b} = {a + b}"}
    if kind == 1:
        big, small = max(a, b), min(a, b)
        q = f"{name} had {big} {thing} and lost {small} of them. How many {thing} are left?"
        return {"question": q, "answer": big - small, "working": f"{big} - {small} = {big - small}"}
    if kind == 2:
        q = f"{name} buys {b} boxes with {a} {thing} in each box. How many {thing} is that in all?"
        return {"question": q, "answer": a * b, "working": f"{b} * {a} = {a * b}"}
    total = a * b
    q = f"{name} shares {total} {thing} equally among {b} friends. How many {thing} does each friend get?"
    return {"question": q, "answer": a, "working": f"{total} / {b} = {a}"}


KINDS: Registry[Callable[[random.Random, int], Item]] = Registry("arithmetic kind")
for _name, _make in (("add", _add), ("mul", _mul), ("mixed", _mixed), ("word", _word)):
    KINDS.add(_name, _make)


GIVE_UP = 20
"""generate(at_most=True) stops when GIVE_UP x (items seen) draws in a row bring nothing new:
with N distinct items, one is still missed with probability about N e^-GIVE_UP."""


def generate(
    n: int,
    seed: int,
    kind: str,
    digits: int,
    exclude: set[str] | None = None,
    at_most: bool = False,
) -> list[Item]:
    """n distinct items (by question), none of them in `exclude`; at_most: fewer when fewer
    exist (a training split), else that is an error (a test split must have its size)."""
    make = KINDS.get(kind)  # an unknown kind is a ConfigError naming the closest
    rng, seen = random.Random(seed), set(exclude or ())
    out: list[Item] = []
    attempts, idle = 0, 0
    while len(out) < n:
        attempts += 1
        idle += 1
        if at_most and idle > GIVE_UP * len(seen) + 1000:
            break
        if attempts > 50 * n + 1000:
            raise DataError(
                f"only {len(out)} distinct {kind} items with {digits} digits exist for {n} asked"
            )
        item = make(rng, digits)
        if item["question"] not in seen:
            seen.add(item["question"])
            out.append(item)
            idle = 0
    return out


class ArithmeticTask:
    """Generated arithmetic of one kind and size, graded as numbers."""

    name = "arithmetic"

    def __init__(
        self,
        kind: str = "add",
        digits: int = 2,
        prompt_style: str = "final_line",
        reward_scheme: str = "format",
        train_size: int = 10000,
        test_size: int = 500,
        seed: int = 31415,
        system_prompt: str | None = None,
    ) -> None:
        if digits < 1:
            raise DataError(f"data.arithmetic_digits must be >= 1, got {digits}")
        self.kind, self.digits = kind, digits
        self.prompt_style, self.reward_scheme = prompt_style, reward_scheme
        self.system_prompt = system_prompt
        test = generate(test_size, seed + 1, kind, digits)
        train = generate(
            train_size, seed, kind, digits, {r["question"] for r in test}, at_most=True
        )
        self._rows = {"train": train, "val": [], "test": test}
        self.fingerprint = fingerprint(
            [{"kind": kind, "digits": digits}]
            + [{"split": s, **r} for s in self._rows for r in self._rows[s]]
        )
        self._examples = {
            split: [
                Example(
                    id=stable_id("arithmetic", kind, r["question"]),
                    question=r["question"],
                    gold=str(r["answer"]),
                    solution=r["working"],
                )
                for r in rows
            ]
            for split, rows in self._rows.items()
        }

    def rows(self, split: str) -> list[dict[str, Any]]:
        self.examples(split)
        return self._rows[split]

    def examples(self, split: str) -> list[Example]:
        if split not in self._examples:
            raise DataError(f"Unknown split '{split}' (choose train, val or test)")
        return self._examples[split]

    def messages(self, ex: Example) -> Messages:
        return build_messages(ex.question, self.prompt_style, self.system_prompt)

    def response(self, ex: Example, rng: Any | None = None) -> str:
        return format_answer(ex.solution or "", ex.gold, self.prompt_style)

    def reward_call(self, ex: Example) -> tuple[Any, tuple[Any, ...]]:
        return score_answer, (ex.gold, self.prompt_style, "numeric", self.reward_scheme)

    def corpus(self) -> list[str]:
        return prompt_corpus(self)
