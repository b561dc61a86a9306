"""Concurrent requests batched into the rollout engine by one worker thread.

Requests become Jobs on a queue. The worker takes the first waiting job, then whatever
else arrives within `max_wait_s` (or is already waiting) until the batch holds
`max_rows` rows (prompts x n), groups the jobs whose sampling parameters are equal and
runs one `engine.generate` per group. Every prompt brings its own seed to the call (a
seeded request's prompt i: prompt_seed(seed, i); an unseeded one: a fresh draw), and each
completion samples from its own stream, so a seeded request gives the same completions
whatever it shares a call with (up to the float rounding of a differently shaped batch).
Weight swaps take the same lock as engine calls, so they happen between batches, never
during one.

The queue is bounded: the rows and the tokens asked (rows x max_tokens) of the jobs
submitted and not yet finished, running ones included, stay within max_queue_rows and
max_queue_tokens; a job that would pass either is refused at once (QueueFull: the server
answers 429). A job whose client went away is dropped: cancelled before its batch starts it
is skipped, and once running, an engine call all of whose jobs were abandoned stops at the
next chunk boundary (RolloutEngine.generate's `stop`).
"""

from __future__ import annotations

import dataclasses
import queue
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from mathrl.rollout.sampler import prompt_seed
from mathrl.rollout.types import Completion, GenerationStopped, RolloutEngine, SamplingParams


class ServerClosing(RuntimeError):
    """The server stopped before the job ran."""


class QueueFull(RuntimeError):
    """Taking the job would pass the queue's bound on rows or tokens."""


class Abandoned(RuntimeError):
    """Every client of an engine call went away; it stopped between chunks."""


@dataclass
class Job:
    """Prompts (token ids) sampled with one SamplingParams; the future gets prompt-major
    completions whose prompt_index counts within this job."""

    prompts: list[list[int]]
    sampling: SamplingParams
    future: Future[list[Completion]] = field(default_factory=Future)
    abandoned: bool = False
    """Its client went away (set by the server; the future may already be running)."""

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.sampling.n

    @property
    def tokens(self) -> int:
        """Tokens it may generate: rows x max_new_tokens."""
        return self.rows * self.sampling.max_new_tokens

    def abandon(self) -> None:
        """Its client went away: skip it if it has not started, else let its call stop."""
        self.abandoned = True
        self.future.cancel()

    def key(self) -> Hashable:
        """Jobs with equal keys (sampling parameters but the seed) share an engine call."""
        return dataclasses.astuple(dataclasses.replace(self.sampling, seed=None))

    def seeds(self) -> list[int]:
        """Each prompt's seed: from the request's seed, else drawn afresh."""
        seed = self.sampling.seed
        if seed is None:
            seed = random.getrandbits(64)
        return [prompt_seed(seed, i) for i in range(len(self.prompts))]


class Batcher:
    """The queue and the worker thread in front of one engine."""

    def __init__(
        self,
        engine: RolloutEngine,
        max_rows: int = 64,
        max_wait_s: float = 0.01,
        max_queue_rows: int = 1 << 30,
        max_queue_tokens: int = 1 << 62,
    ):
        self.engine = engine
        self.max_rows = max(1, max_rows)
        self.max_wait_s = max_wait_s
        self.max_queue_rows, self.max_queue_tokens = max_queue_rows, max_queue_tokens
        self.engine_calls = 0
        """engine.generate calls so far (N concurrent requests should cost fewer than N)."""
        self.jobs_done = 0
        self.jobs_cancelled = 0
        """Jobs whose client went away before their batch started (never generated)."""
        self.calls_stopped = 0
        """Engine calls stopped between chunks: all their clients had gone."""
        self.jobs_refused = 0
        """Jobs refused because the queue was full (429)."""
        self.queued_rows = self.queued_tokens = 0  # of jobs submitted and not finished
        self._count_lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._carry: Job | None = None  # taken, but did not fit the last batch
        self._lock = threading.Lock()  # held by engine calls and weight swaps
        self._thread: threading.Thread | None = None
        self._closing = False

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mathrl-batcher", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the batch in progress; jobs still queued fail with ServerClosing."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, prompts: list[list[int]], sampling: SamplingParams) -> Job:
        """Queue a job (its future gets the completions); QueueFull when it does not fit."""
        job = Job(prompts, sampling)
        if self._closing:
            job.future.set_exception(ServerClosing("the server is shutting down"))
            return job
        with self._count_lock:
            rows, tokens = self.queued_rows + job.rows, self.queued_tokens + job.tokens
            if rows > self.max_queue_rows or tokens > self.max_queue_tokens:
                self.jobs_refused += 1
                raise QueueFull(
                    f"the server is busy ({self.queued_rows} rows, {self.queued_tokens} tokens "
                    "queued): retry later"
                )
            self.queued_rows, self.queued_tokens = rows, tokens
        job.future.add_done_callback(lambda _: self._release(job))
        self._queue.put(job)
        return job

    def _release(self, job: Job) -> None:
        with self._count_lock:
            self.queued_rows -= job.rows
            self.queued_tokens -= job.tokens
            if job.future.cancelled():
                self.jobs_cancelled += 1

    def between_batches(self, fn: Callable[[RolloutEngine], Any]) -> Any:
        """Run fn(engine) while no batch is running (a weight swap)."""
        with self._lock:
            return fn(self.engine)

    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                break
            groups: dict[Hashable, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.key(), []).append(job)
            for group in groups.values():
                self._generate(group)
            if self._closing:
                break
        self._fail_waiting()

    def _take(self) -> list[Job] | None:
        """The next batch: the first waiting job plus what fits within max_rows and max_wait_s."""
        jobs: list[Job] = []
        rows = 0
        deadline = None
        while rows < self.max_rows:
            if self._carry is not None:
                job: Job | None = self._carry
                self._carry = None
            elif deadline is None:
                job = self._queue.get()  # idle: block until the first job
                deadline = time.monotonic() + self.max_wait_s
            else:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
            if job is None:
                self._closing = True
                break
            if deadline is None:
                deadline = time.monotonic() + self.max_wait_s
            if job.future.cancelled():  # its client went away before it ran
                continue
            if jobs and rows + job.rows > self.max_rows:
                self._carry = job
                break
            jobs.append(job)
            rows += job.rows
        return jobs if jobs or not self._closing else None

    def _generate(self, group: list[Job]) -> None:
        """One engine call for jobs with equal sampling; each future gets its own rows."""
        live = [j for j in group if j.future.set_running_or_notify_cancel()]
        if not live:
            return
        prompts = [p for job in live for p in job.prompts]
        seeds = [s for job in live for s in job.seeds()]
        # Engines built on RolloutEngine stop between chunks once every client has gone.
        stop = {"stop": lambda: all(j.abandoned for j in live)}
        try:
            with self._lock:
                kw = stop if isinstance(self.engine, RolloutEngine) else {}
                result = self.engine.generate(prompts, live[0].sampling, seeds=seeds, **kw)
                self.engine_calls += 1
        except GenerationStopped:
            self.calls_stopped += 1
            for job in live:
                job.future.set_exception(Abandoned("every client of the call went away"))
            return
        except Exception as exc:  # the engine failed: every job of the call gets the error
            traceback.print_exc(file=sys.stderr)
            for job in live:
                job.future.set_exception(exc)
            return
        offset = 0
        for job in live:
            end = offset + len(job.prompts)
            mine = [c for c in result.completions if offset <= c.prompt_index < end]
            for c in mine:
                c.prompt_index -= offset
            job.future.set_result(mine)
            offset = end
        self.jobs_done += len(live)

    def _fail_waiting(self) -> None:
        pending = [self._carry] if self._carry is not None else []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                pending.append(job)
        for job in pending:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(ServerClosing("the server is shutting down"))
