"""The trace file: which problems, each trace's seed, reading (resume) under a lock, the
scored records, and the SFT pairs made from them."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mathrl.config import Config
from mathrl.data import training_examples
from mathrl.distill.teacher import Reply
from mathrl.errors import DataError, MathrlError
from mathrl.eval.metrics import select_examples
from mathrl.groups import call_reward
from mathrl.io import read_jsonl, write_jsonl
from mathrl.rewards import RewardPool, RewardResult
from mathrl.run_setup import derive_seed
from mathrl.tasks import Example, Task

LOCK_WAIT_S = 2.0
"""How long a run waits for the lock on --out before it says another run holds it."""
IDENTITY = ("model", "endpoint", "task", "task_fingerprint", "split")
SAMPLING = ("temperature", "max_tokens", "seed")
"""Fields every line carries (the run's identity and sampling settings); a resume must
match them all."""
TRANSIENT = ("timeout", "error: worker died")
"""Reasons of a scoring that failed for a passing cause: such a line is scored again
by the next run (`rescore`), never kept as a final `correct: false`."""


def problems(cfg: Config, task: Task, split: str, limit: int) -> list[Example]:
    """The split's problems (train: after any pass-rate filter), a seeded `limit` of them,
    one per id."""
    examples = training_examples(cfg, task) if split == "train" else task.examples(split)
    if not examples:
        raise DataError(f"the {split} split of {task.name} is empty")
    unique: dict[str, Example] = {}
    for ex in select_examples(examples, limit, cfg.seed):
        unique.setdefault(ex.id, ex)
    return list(unique.values())


def trace_seed(seed: int, problem_id: str, sample: int) -> int:
    """The seed a trace's request carries: the same in every run of the same config."""
    digest = int(hashlib.sha256(problem_id.encode()).hexdigest()[:8], 16)
    return derive_seed(seed, digest, sample)


def read_traces(path: Path, identity: dict[str, Any]) -> list[dict[str, Any]]:
    """The traces already in `path` (none if absent), refused if written for another run."""
    if not path.exists():
        return []
    if not path.is_file():
        raise MathrlError(f"--out {path} is not a file")
    rows = read_jsonl(path)
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for i, row in enumerate(rows, 1):
        ok = isinstance(row.get("problem_id"), str) and isinstance(row.get("sample"), int)
        if not ok or not isinstance(row.get("prompt"), list):
            raise DataError(f"{path}:{i} is not a mathrl distill trace; use another --out")
        for key in (*IDENTITY, *SAMPLING):
            if row.get(key, "unrecorded") != identity[key]:
                raise MathrlError(
                    f"{path} was written for {key} {row.get(key, 'unrecorded')!r}, not "
                    f"{identity[key]!r}: resume with the same settings or use another --out"
                )
        latest[(row["problem_id"], row["sample"])] = row  # a re-scored line replaces its first
    return list(latest.values())


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if absent): one writer at a time."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        # A killed run's reward workers (forked: they share the lock) die with it, a moment
        # later; a live writer still holds it after LOCK_WAIT_S.
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MathrlError(f"another mathrl distill is writing {path}") from None
                time.sleep(0.05)
        yield


def trace_records(
    task: Task,
    pool: RewardPool,
    fields: dict[str, Any],
    replies: list[tuple[Example, int, Reply]],
) -> list[dict[str, Any]]:
    """Score replies with the task's reward (through the bounded pool) as trace lines, each
    with `fields` (the run's identity and sampling settings)."""
    items = []
    for ex, _, reply in replies:
        fn, args = task.reward_call(ex)
        items.append((fn, reply.completion, *args))
    results = pool.map(call_reward, items)
    records = []
    for (ex, s, reply), result in zip(replies, results, strict=True):
        records.append(
            {
                "problem_id": ex.id,
                "sample": s,
                "prompt": task.messages(ex),
                "completion": reply.completion,
                "reasoning": reply.reasoning,
                **scored_fields(result),
                "gold": ex.gold,
                "finish_reason": reply.finish_reason,
                "prompt_tokens": reply.prompt_tokens,
                "completion_tokens": reply.completion_tokens,
                "latency_s": round(reply.latency_s, 4),
                "attempts": reply.attempts,
                "served_model": reply.served_model,
                **fields,
            }
        )
    return records


def scored_fields(result: RewardResult) -> dict[str, Any]:
    """A trace line's score; `rescore` marks a failure with a passing cause (TRANSIENT)."""
    return {
        "reward": float(result.reward),
        "correct": bool(result.correct),
        "pred": result.pred,
        "reason": result.reason,
        "rescore": result.reason.startswith(TRANSIENT),
    }


def sft_response(row: dict[str, Any]) -> str:
    """The assistant turn to train on: the reasoning (in <think> tags) before the answer."""
    reasoning = row.get("reasoning")
    if isinstance(reasoning, str) and reasoning.strip():
        return f"<think>\n{reasoning.strip()}\n</think>\n\n{row['completion']}"
    return str(row["completion"])


def write_sft(rows: list[dict[str, Any]], keep: str, path: Path) -> int:
    """Replace `path` with the kept traces as `messages` records (`mathrl sft --data`)."""
    pairs, seen = [], set()
    for r in rows:
        key = (r["problem_id"], r["sample"])
        if key in seen or (keep == "correct" and not r.get("correct")):
            continue
        seen.add(key)
        messages = [*r["prompt"], {"role": "assistant", "content": sft_response(r)}]
        pairs.append({"messages": messages, "problem_id": key[0], "sample": key[1]})
        pairs[-1] |= {"reward": r.get("reward"), "correct": r.get("correct")}
    write_jsonl(path, pairs)
    return len(pairs)
