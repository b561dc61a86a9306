"""run_distill: sample every missing trace on worker threads, score and append each batch
that finishes, then write the SFT pairs."""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathrl.config import Config
from mathrl.distill.options import DistillOptions
from mathrl.distill.teacher import Reply, Teacher, chat_url
from mathrl.distill.traces import (
    locked,
    problems,
    read_traces,
    scored_fields,
    trace_records,
    trace_seed,
    write_sft,
)
from mathrl.groups import call_reward, reward_pool
from mathrl.io import append_jsonl
from mathrl.rewards import RewardPool
from mathrl.rollout.http import Cancelled
from mathrl.tasks import Example, Task


@dataclass
class Progress:
    total: int
    done: int
    new: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    last_said: float = field(default_factory=time.monotonic)


def run_distill(
    cfg: Config, task: Task, opts: DistillOptions, say: Callable[[str], None]
) -> dict[str, Any]:
    """Sample, score and append every missing trace; write the SFT pairs; return totals."""
    _, recorded = chat_url(opts.endpoint)
    identity: dict[str, Any] = {"model": opts.model, "endpoint": recorded, "task": task.name}
    identity |= {"task_fingerprint": task.fingerprint, "split": opts.split}
    identity |= sampling_fields(cfg, opts)
    examples = problems(cfg, task, opts.split, opts.limit)
    with locked(opts.out):
        rows = read_traces(opts.out, identity)
        rescored = rescore(task, examples, rows, opts.out, cfg)
        written = {(r["problem_id"], r["sample"]) for r in rows}
        jobs = [(ex, s) for ex in examples for s in range(opts.n) if (ex.id, s) not in written]
        say(
            f"distill: {len(examples)} problems x {opts.n} = {len(examples) * opts.n} traces; "
            f"{len(examples) * opts.n - len(jobs)} already in {opts.out}, {len(jobs)} to sample"
            + (f"; {rescored} re-scored" if rescored else "")
        )
        faults: Counter[str] = Counter()
        progress = Progress(total=len(examples) * opts.n, done=len(examples) * opts.n - len(jobs))
        if jobs:
            t = cfg.train
            with reward_pool(t) as pool:
                teacher = Teacher(opts)
                try:
                    _sample(cfg, task, opts, identity, jobs, teacher, pool, rows, progress, say)
                finally:
                    teacher.close()
                    faults = teacher.faults
        kept = write_sft(rows, opts.keep, Path(opts.sft_out or ""))
    totals = {
        "traces": len(rows),
        "new": progress.new,
        "correct": sum(bool(r.get("correct")) for r in rows),
        "kept": kept,
        "retries": sum(faults.values()),
        "faults": dict(faults),
        "prompt_tokens": progress.prompt_tokens,
        "completion_tokens": progress.completion_tokens,
        "file_prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in rows),
        "file_completion_tokens": sum(r.get("completion_tokens") or 0 for r in rows),
    }
    say(
        f"distill: {totals['traces']} traces in {opts.out} ({progress.new} new), "
        f"{totals['correct']} correct; tokens this run: {progress.prompt_tokens:,} prompt + "
        f"{progress.completion_tokens:,} completion (file: {totals['file_prompt_tokens']:,} + "
        f"{totals['file_completion_tokens']:,}); {totals['retries']} retries {dict(faults)}"
    )
    say(f"distill: {kept} SFT pairs ({opts.keep}) -> {opts.sft_out}")
    return totals


def _sample(
    cfg: Config,
    task: Task,
    opts: DistillOptions,
    identity: dict[str, Any],
    jobs: list[tuple[Example, int]],
    teacher: Teacher,
    pool: RewardPool,
    rows: list[dict[str, Any]],
    progress: Progress,
    say: Callable[[str], None],
) -> None:
    """Run the requests on `concurrency` threads; score and append each batch that finishes."""
    stop = threading.Event()
    error: BaseException | None = None
    bodies = _request_bodies(cfg, task, opts, jobs, identity["max_tokens"], identity["temperature"])
    answers: queue.SimpleQueue[tuple[Example, int, Reply | BaseException]] = queue.SimpleQueue()

    def work() -> None:
        while not stop.is_set():
            try:
                ex, s, body = bodies.get_nowait()
            except queue.Empty:
                return
            try:
                answers.put((ex, s, teacher.complete(body, stop)))
            except BaseException as exc:  # handed to the main thread, which decides
                answers.put((ex, s, exc))

    # Daemon threads: on Ctrl-C nobody waits for requests in flight (what was not written
    # is sampled again by the next run). Only this thread scores and writes.
    threads = [threading.Thread(target=work, daemon=True) for _ in jobs[: opts.concurrency]]
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads) or not answers.empty():
            replies = []
            try:
                got = [answers.get(timeout=1.0)]
            except queue.Empty:
                continue
            while not answers.empty():
                got.append(answers.get())
            for ex, s, answer in got:
                if isinstance(answer, Reply):
                    replies.append((ex, s, answer))
                elif error is None and not isinstance(answer, Cancelled):
                    error = answer  # stop: start nothing new, keep what finishes
                    stop.set()
            if replies:
                new = trace_records(task, pool, identity, replies)
                append_jsonl(opts.out, new)
                rows.extend(new)
                _advance(progress, new, teacher, opts, say)
    finally:
        stop.set()  # a Ctrl-C or a failed write: the workers start nothing more
    if error is not None:
        raise error


def sampling_fields(cfg: Config, opts: DistillOptions) -> dict[str, Any]:
    """The sampling settings every trace line records and a resume must match: temperature,
    max_tokens and the request seed (the run's seed, or "none" under --no-seed)."""
    return {
        "temperature": cfg.rollout.temperature if opts.temperature is None else opts.temperature,
        "max_tokens": opts.max_tokens or cfg.rollout.max_new_tokens,
        "seed": cfg.seed if opts.seed else "none",
    }


def rescore(
    task: Task, examples: list[Example], rows: list[dict[str, Any]], out: Path, cfg: Config
) -> int:
    """Score again the lines whose scoring failed for a passing reason (a timeout, a worker
    that died: `rescore` set) and append them, replacing the old lines (the last line of a
    trace wins); returns how many were re-scored."""
    by_id = {ex.id: ex for ex in examples}
    todo = [i for i, r in enumerate(rows) if r.get("rescore") and r["problem_id"] in by_id]
    if not todo:
        return 0
    items = []
    for i in todo:
        fn, args = task.reward_call(by_id[rows[i]["problem_id"]])
        items.append((fn, rows[i]["completion"], *args))
    with reward_pool(cfg.train) as pool:
        results = pool.map(call_reward, items)
    for i, result in zip(todo, results, strict=True):
        rows[i] = {**rows[i], **scored_fields(result)}
    append_jsonl(out, [rows[i] for i in todo])
    return len(todo)


def _request_bodies(
    cfg: Config,
    task: Task,
    opts: DistillOptions,
    jobs: list[tuple[Example, int]],
    max_tokens: int,
    temperature: float,
) -> queue.SimpleQueue[tuple[Example, int, dict[str, Any]]]:
    """One chat request per (problem, sample), queued for the worker threads."""
    bodies: queue.SimpleQueue[tuple[Example, int, dict[str, Any]]] = queue.SimpleQueue()
    for ex, s in jobs:
        body: dict[str, Any] = {"model": opts.model, "messages": task.messages(ex)}
        body |= {"max_tokens": max_tokens, "temperature": temperature}
        if opts.seed:
            body["seed"] = trace_seed(cfg.seed, ex.id, s)
        bodies.put((ex, s, body))
    return bodies


def _advance(
    progress: Progress,
    new: list[dict[str, Any]],
    teacher: Teacher,
    opts: DistillOptions,
    say: Callable[[str], None],
) -> None:
    p = progress
    p.done, p.new = p.done + len(new), p.new + len(new)
    p.prompt_tokens += sum(r["prompt_tokens"] or 0 for r in new)
    p.completion_tokens += sum(r["completion_tokens"] or 0 for r in new)
    now = time.monotonic()
    if now - p.last_said >= opts.progress_s:
        p.last_said = now
        rate = p.new / max(now - p.started, 1e-9)
        say(
            f"distill: {p.done}/{p.total} traces, {rate:.2f}/s, "
            f"{p.completion_tokens:,} completion tokens, {teacher.retries()} retries"
        )
