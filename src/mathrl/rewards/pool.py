"""Bounded-time reward scoring in a small persistent pool of worker processes.

Why processes: a hung reward call can only be stopped from outside. SIGALRM works
on the main thread only and threads cannot be killed, so each call runs in a
worker process that the parent kills and replaces once it overruns `timeout_s`.
Why not a library: concurrent.futures and multiprocessing.Pool stop *waiting* for a
timed-out task but leave its worker running it (neither kills one task's process, so a
hung call holds a worker forever); pebble's ProcessPool can, but it is not a dependency
we keep, and it sends one task per message (no batches with a deadline per item).

- Items go to workers in batches (low IPC cost); each worker reports every item as
  it finishes, and the deadline restarts per item, so `timeout_s` bounds each call.
- A timed-out item gets reason 'timeout'; the rest of its batch moves to a fresh worker.
- An exception becomes reason `error: <ExcType>: <msg>`; a worker that dies
  (segfault, os._exit) costs only the item it was running.
- A result that is not a RewardResult with a finite reward becomes 'invalid_reward'.
  Workers send results as plain values (float, str, bool, a dict of floats) and the
  parent reads them with an unpickler that refuses every class: a reply the parent cannot
  read, like a worker that dies, costs only its item (`error: ...`), never the run.
- Containment: each worker leads its own process group, and a timed-out or dead worker's
  group is killed, so processes a reward started die with it; workers run under
  RLIMIT_AS (`memory_mb` more than they start with) and a per-call RLIMIT_CPU
  (`cpu_s`, inherited by what the reward starts); 0 turns either off.
- `workers=0` runs in-process: no process overhead, exceptions are still caught,
  but the limit is soft (an overlong call is reported as 'timeout' after it returns).
  Use it only for the built-in, input-capped scorers (config refuses it with user code).
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkContext, ForkServerContext, SpawnContext
from typing import Any

from mathrl.errors import ConfigError, MathrlError
from mathrl.rewards.scoring import RewardResult, zero_result

MAX_BATCH = 64
"""Most items sent to a worker at once."""

STARTUP_TIMEOUT_S = 60.0
"""How long a new worker may take to report ready (spawn re-imports the package)."""

MEMORY_MB = 2048
"""Address space (MiB) a worker may add to what it holds when it starts (RLIMIT_AS)."""

CPU_S = 60
"""CPU seconds one reward call may use (RLIMIT_CPU, inherited by processes it starts)."""

_STOP = b""  # an empty message tells a worker to exit
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _error_reason(err: BaseException) -> str:
    """`error: <ExcType>: <msg>`, truncated so a huge message cannot bloat logs."""
    return f"error: {type(err).__name__}: {err}"[:200]


def _checked(result: Any) -> RewardResult:
    """Pass through a RewardResult with a finite reward; anything else is invalid."""
    if isinstance(result, RewardResult) and isinstance(result.reward, int | float):
        if math.isfinite(result.reward):
            return result
    return zero_result("invalid_reward")


def _call_one(fn: Callable[..., Any], args: tuple, catch: type[BaseException]) -> RewardResult:
    """Call fn(*args), turning exceptions and bad returns into zero-reward results."""
    try:
        return _checked(fn(*args))
    except catch as err:
        return zero_result(_error_reason(err))


def _to_tuple(result: RewardResult) -> tuple:
    """Fields as a tuple of plain values (float, dict of floats, str, bool): pickles several
    times faster than the dataclass, and the parent's reader accepts nothing else."""
    return (
        float(result.reward),
        {str(k): float(v) for k, v in result.components.items()},
        None if result.pred is None else str(result.pred),
        bool(result.correct),
        bool(result.correct_lenient),
        bool(result.format_ok),
        str(result.reason),
    )


class _PlainUnpickler(pickle.Unpickler):
    """Reads builtin containers and scalars only: a reply naming any class or function
    (whose loading would run code in the trainer) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"a reward reply may not name {module}.{name}")


def _read_reply(conn: Connection) -> Any:
    """One message from a worker, read as plain values; EOFError/OSError when it is gone."""
    data = conn.recv_bytes()
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except Exception as err:  # any unreadable reply is that item's error
        return ("unreadable", _error_reason(err))


def _own_process_group() -> None:
    """Lead a new process group, so that the parent can kill the worker together with
    every process a reward started (a timed-out reward's `sleep 25` dies with it)."""
    try:
        os.setpgid(0, 0)
    except (OSError, AttributeError):  # no process groups here: the worker alone is killed
        pass


def _limit_memory(memory_mb: int) -> None:
    """RLIMIT_AS at what the worker holds now plus memory_mb: a forked worker starts with
    the parent's address space (a loaded model, torch's reservations), so a fixed cap
    would either fail at once or bound nothing."""
    if memory_mb <= 0:
        return
    try:
        import resource

        with open("/proc/self/statm") as fh:
            held = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        cap = held + memory_mb * (1 << 20)
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ImportError, OSError, ValueError):  # not Linux: no statm or no RLIMIT_AS
        pass


def _cpu_limiter(cpu_s: int) -> Callable[[], None]:
    """A function that, called before each reward call, sets RLIMIT_CPU's soft limit to the
    CPU time used so far plus cpu_s (the hard limit stays, so the next call can raise it);
    SIGXCPU then ends a call that loops past cpu_s, and processes it starts inherit it."""
    try:
        import resource
    except ImportError:
        return lambda: None
    if cpu_s <= 0:
        return lambda: None
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)

    def limit() -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(usage.ru_utime + usage.ru_stime) + cpu_s
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        try:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        except (OSError, ValueError):
            pass

    return limit


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the process that started it dies, even
    mid-call in a hung reward (nothing else would: no one reads its pipe any more)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # no prctl: the pipe EOF below still ends an idle worker
        pass


def _worker_main(
    conn: Connection, inherited: list[Connection], memory_mb: int = 0, cpu_s: int = 0
) -> None:
    """Worker loop: receive (fn, [(index, args), ...]) batches, send one reply per item."""
    # Ctrl-C and SIGTERM go to the parent, which finishes its step and closes us; a
    # scheduler's SIGTERM to the whole process group must not kill a reward mid-step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    _own_process_group()  # before "ready": the parent kills the group only after it
    for other in inherited:  # fork copies the parent's pipe ends; holding them would hide
        other.close()  # the parent's death (no EOF) and keep an orphan alive forever
    _limit_memory(memory_mb)
    limit_cpu = _cpu_limiter(cpu_s)
    conn.send(("ready",))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if data == _STOP:
            return
        try:
            fn, batch = pickle.loads(data)
        except Exception as err:  # e.g. fn not importable under spawn
            conn.send(("batch_error", _error_reason(err)))
            continue
        for index, args in batch:
            limit_cpu()
            # BaseException too: a reward calling sys.exit must not end the worker silently.
            result = _call_one(fn, args, BaseException)
            try:
                conn.send(("item", index, _to_tuple(result)))
            except Exception as err:  # a field that is not a plain value
                conn.send(("item", index, _to_tuple(zero_result(_error_reason(err)))))


@dataclass(slots=True)
class _Worker:
    process: Any
    conn: Connection


@dataclass(slots=True)
class _Job:
    indices: list[int]
    done: int
    deadline: float


def _kill_group(worker: _Worker) -> None:
    """SIGKILL the worker's process group (the worker and what its rewards started); the
    group's id stays reserved while any member lives, so this never hits another job."""
    try:
        os.killpg(worker.process.pid, signal.SIGKILL)
    except (OSError, AttributeError):  # the group is gone (or no groups here)
        worker.process.kill()


def _stop_workers(workers: list[_Worker]) -> None:
    """Ask workers to exit, then kill their groups (stragglers and what rewards left
    running); never leaves zombies."""
    for worker in workers:
        try:
            worker.conn.send_bytes(_STOP)
        except (OSError, ValueError):
            pass
    for worker in workers:
        worker.process.join(timeout=1.0)
        _kill_group(worker)
        worker.process.join()
        worker.conn.close()
    workers.clear()


def _context(start_method: str | None) -> ForkContext | ForkServerContext | SpawnContext:
    """The multiprocessing context: fork where the platform has it (fast), else spawn."""
    if start_method is None:
        start_method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    if start_method == "fork":
        return multiprocessing.get_context("fork")
    if start_method == "forkserver":
        return multiprocessing.get_context("forkserver")
    if start_method == "spawn":
        return multiprocessing.get_context("spawn")
    raise ConfigError(f"unknown start method {start_method!r}; choose fork, forkserver or spawn")


class RewardPool:
    """Persistent worker pool scoring items with a hard per-call time limit."""

    def __init__(
        self,
        timeout_s: float,
        workers: int = 2,
        start_method: str | None = None,
        memory_mb: int = MEMORY_MB,
        cpu_s: int = CPU_S,
    ) -> None:
        if not timeout_s > 0:
            raise ConfigError(f"reward timeout_s must be > 0, got {timeout_s}")
        if workers < 0:
            raise ConfigError(f"reward workers must be >= 0, got {workers}")
        self.timeout_s = float(timeout_s)
        self.n_workers = workers
        self.limits = (memory_mb, cpu_s)
        self._ctx = _context(start_method)
        self.stats = {"calls": 0, "timeouts": 0, "errors": 0, "invalid": 0, "restarts": 0}
        self._lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers)
        for _ in range(workers):
            self._workers.append(self._start_worker())

    def _start_worker(self) -> _Worker:
        """Start one worker and wait until it is ready to receive."""
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        # Under fork the child holds copies of every parent-side pipe end open now.
        forked = isinstance(self._ctx, ForkContext)
        inherited = [parent_conn, *(w.conn for w in self._workers)] if forked else []
        process = self._ctx.Process(
            target=_worker_main, args=(child_conn, inherited, *self.limits), daemon=True
        )
        process.start()
        child_conn.close()  # so the parent sees EOF when the worker dies
        if not parent_conn.poll(STARTUP_TIMEOUT_S):
            process.kill()
            process.join()
            raise MathrlError(f"reward worker did not start within {STARTUP_TIMEOUT_S} s")
        try:
            _read_reply(parent_conn)
        except (EOFError, OSError):
            process.join()
            raise MathrlError(
                f"reward worker exited at start (exit code {process.exitcode})"
            ) from None
        return _Worker(process, parent_conn)

    def _replace_worker(self, slot: int) -> None:
        """Kill the worker in `slot` (hung or dead) with its group; start a fresh one."""
        old = self._workers[slot]
        _kill_group(old)
        old.process.join()
        old.conn.close()
        self._workers[slot] = self._start_worker()
        self.stats["restarts"] += 1

    def close(self) -> None:
        """Stop all workers; safe to call twice."""
        self._finalizer()

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def map(self, fn: Callable[..., Any], items: Sequence[tuple]) -> list[RewardResult]:
        """Score `fn(*item)` for every item; results keep input order."""
        items = list(items)
        with self._lock:
            if self.n_workers and not self._workers:
                raise MathrlError("RewardPool is closed")
            if self.n_workers == 0:
                results = self._map_in_process(fn, items)
            else:
                results = self._map_workers(fn, items)
            self._count(results)
        return results

    def _count(self, results: list[RewardResult]) -> None:
        """Update stats from reasons (the pool's reasons are reserved words)."""
        self.stats["calls"] += len(results)
        for result in results:
            if result.reason == "timeout":
                self.stats["timeouts"] += 1
            elif result.reason == "invalid_reward":
                self.stats["invalid"] += 1
            elif result.reason.startswith("error: "):
                self.stats["errors"] += 1

    def _map_in_process(self, fn: Callable[..., Any], items: list[tuple]) -> list[RewardResult]:
        """Fast path: call in this process; the time limit is only checked afterwards."""
        results = []
        for args in items:
            start = time.monotonic()
            result = _call_one(fn, args, Exception)
            overran = time.monotonic() - start > self.timeout_s
            results.append(zero_result("timeout") if overran else result)
        return results

    def _map_workers(self, fn: Callable[..., Any], items: list[tuple]) -> list[RewardResult]:
        """Distribute batches over workers, enforcing the per-item deadline."""
        try:
            pickle.dumps(fn)
        except Exception as err:
            raise TypeError(f"reward fn must be a picklable top-level function: {err}") from err
        results: list[RewardResult | None] = [None] * len(items)
        size = max(1, min(MAX_BATCH, math.ceil(len(items) / (4 * self.n_workers))))
        queue = deque(list(range(i, min(i + size, len(items)))) for i in range(0, len(items), size))
        jobs: dict[int, _Job] = {}
        try:
            while queue or jobs:
                for slot in range(len(self._workers)):
                    if slot not in jobs and queue:
                        jobs[slot] = self._dispatch(slot, fn, queue.popleft(), items)
                self._wait_and_collect(jobs, results, queue)
        except BaseException:
            # Interrupted (e.g. Ctrl-C): busy workers would send stale replies into the
            # next map, so replace them before re-raising.
            for slot in jobs:
                self._replace_worker(slot)
            raise
        return [result if result is not None else zero_result("error: lost") for result in results]

    def _wait_and_collect(
        self, jobs: dict[int, _Job], results: list[RewardResult | None], queue: deque
    ) -> None:
        """Wait for replies or the earliest deadline; settle finished, dead and hung workers."""
        # a worker wakes us with a reply on its pipe or by dying (its process sentinel)
        waitables: dict[Connection | int, int] = {self._workers[s].conn: s for s in jobs}
        waitables |= {self._workers[slot].process.sentinel: slot for slot in jobs}
        wait_s = max(0.0, min(job.deadline for job in jobs.values()) - time.monotonic())
        ready = wait(list(waitables), timeout=wait_s)
        woken = {slot for obj, slot in waitables.items() if obj in ready}
        now = time.monotonic()
        woken |= {slot for slot, job in jobs.items() if job.deadline <= now}
        for slot in woken:
            job = jobs[slot]
            # Drain before judging: replies may be queued even when the deadline passed.
            alive = self._drain(slot, job, results)
            if job.done == len(job.indices):
                del jobs[slot]
            elif not alive:
                self._fail_current(slot, jobs.pop(slot), results, queue, "worker_died")
            elif job.deadline <= time.monotonic():
                self._fail_current(slot, jobs.pop(slot), results, queue, "timeout")

    def _dispatch(
        self, slot: int, fn: Callable[..., Any], indices: list[int], items: list[tuple]
    ) -> _Job:
        """Send a batch to a worker (replacing it once if its pipe is broken)."""
        data = pickle.dumps((fn, [(i, tuple(items[i])) for i in indices]))
        try:
            self._workers[slot].conn.send_bytes(data)
        except OSError:
            self._replace_worker(slot)
            self._workers[slot].conn.send_bytes(data)
        return _Job(indices, 0, time.monotonic() + self.timeout_s)

    def _drain(self, slot: int, job: _Job, results: list[RewardResult | None]) -> bool:
        """Read all pending replies of a worker; False if it has died."""
        conn = self._workers[slot].conn
        try:
            while job.done < len(job.indices) and conn.poll():
                message = _read_reply(conn)
                if message[0] == "unreadable":
                    # replies come in item order: the unreadable one is the current item
                    results[job.indices[job.done]] = zero_result(message[1])
                    job.done += 1
                    job.deadline = time.monotonic() + self.timeout_s
                elif message[0] == "batch_error":
                    for index in job.indices[job.done :]:
                        results[index] = zero_result(message[1])
                    job.done = len(job.indices)
                else:
                    results[message[1]] = RewardResult(*message[2])
                    job.done += 1
                    job.deadline = time.monotonic() + self.timeout_s  # the next item starts now
        except (EOFError, OSError):
            return False
        if job.done == len(job.indices):
            return True
        return self._workers[slot].process.is_alive()

    def _fail_current(
        self, slot: int, job: _Job, results: list[RewardResult | None], queue: deque, why: str
    ) -> None:
        """Give the running item a zero result, requeue the rest, replace the worker."""
        if why != "timeout":
            self._workers[slot].process.join(timeout=1.0)  # reap it so exitcode is set
        exitcode = self._workers[slot].process.exitcode
        reason = "timeout" if why == "timeout" else f"error: worker died (exit code {exitcode})"
        if exitcode == -signal.SIGXCPU:
            reason = f"error: worker died (CPU limit of {self.limits[1]} s)"
        results[job.indices[job.done]] = zero_result(reason)
        rest = job.indices[job.done + 1 :]
        if rest:
            queue.appendleft(rest)
        self._replace_worker(slot)


def score_many(
    fn: Callable[..., Any], items: Sequence[tuple], timeout_s: float, workers: int = 0
) -> list[RewardResult]:
    """One-shot RewardPool.map; prefer a long-lived RewardPool in a training loop."""
    with RewardPool(timeout_s, workers) as pool:
        return pool.map(fn, items)
