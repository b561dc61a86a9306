"""Distillation: sample a teacher's solutions from an OpenAI-compatible endpoint, score them
with the task's reward, and keep them as SFT pairs (`mathrl distill`).

One chat request per (problem, sample) with n = 1: every endpoint takes it (some refuse or
ignore n > 1), a retry re-asks one trace only, and resume is exact per trace. The request
carries a seed derived from the config's seed, the problem and the sample, so a seeded
endpoint gives the same trace again (`seed=False` leaves it out).

Threads, not asyncio: the work is a few dozen blocking HTTP calls at a time; httpx's sync
client is thread-safe, the reward pool and the crash-safe appends are synchronous, and a
worker's retry loop reads top to bottom. `concurrency` daemon threads take requests from a
queue; the main thread alone scores and writes, so lines never interleave.

Crash safety: each batch of finished traces is one O_APPEND write + fsync (io.append_jsonl),
so a kill at any moment can only tear the last line, which reading skips and the next append
drops. On start the file is read and every (problem_id, sample) in it is skipped. Every line
records model, endpoint, task (+ fingerprint) and split, and a file written for others is
refused. A lock on the file keeps two runs from writing it at once.

Bounds: a response body is read up to `max_body_bytes` and a request lasts at most
`timeout_s` in all; the reward runs in the bounded pool (timeout, capped inputs).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import queue
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathrl.config import Config
from mathrl.data import training_examples
from mathrl.errors import ConfigError, DataError, MathrlError
from mathrl.eval.metrics import select_examples
from mathrl.io import append_jsonl, read_jsonl, write_jsonl
from mathrl.rewards import RewardPool
from mathrl.runtime import derive_seed
from mathrl.sampling import call_reward
from mathrl.tasks import Example, Task

MAX_BODY_BYTES = 8 << 20
"""Largest response body read (a 100k-token reasoning trace is well under 1 MiB)."""
MAX_ERROR_CHARS = 300
"""How much of an error body a message quotes."""
MAX_RETRY_AFTER_S = 600.0
"""A Retry-After longer than this stops the run instead of sleeping through it."""
RETRY_STATUSES = {408, 409, 425, 429}
"""Retried besides 5xx (as OpenAI's client does); any other 4xx stops the run."""
LOCK_WAIT_S = 2.0
"""How long a run waits for the lock on --out before it says another run holds it."""
IDENTITY = ("model", "endpoint", "task", "task_fingerprint", "split")
"""Fields every line carries; a resume must match them all."""


@dataclass
class DistillOptions:
    """What `mathrl distill` asks for; None takes the config's rollout.* value."""

    endpoint: str
    model: str
    out: Path
    n: int = 4
    concurrency: int = 8
    api_key: str | None = None
    keep: str = "correct"
    sft_out: Path | None = None
    limit: int = 0
    max_tokens: int | None = None
    temperature: float | None = None
    timeout_s: float = 600.0
    max_retries: int = 6
    rate_limit: float = 0.0
    split: str = "train"
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    seed: bool = True
    max_body_bytes: int = MAX_BODY_BYTES
    progress_s: float = 10.0

    def __post_init__(self) -> None:
        checks = {
            "--n must be >= 1": self.n >= 1,
            "--concurrency must be in [1, 1024]": 1 <= self.concurrency <= 1024,
            "--keep must be 'all' or 'correct'": self.keep in ("all", "correct"),
            "--limit must be >= 0": self.limit >= 0,
            "--max-tokens must be >= 1": self.max_tokens is None or self.max_tokens >= 1,
            "--temperature must be >= 0": self.temperature is None or self.temperature >= 0,
            "--timeout must be > 0": self.timeout_s > 0,
            "--max-retries must be >= 0": self.max_retries >= 0,
            "--rate-limit must be >= 0 (0 = none)": self.rate_limit >= 0,
            "--split must be train, val or test": self.split in ("train", "val", "test"),
            "--backoff must be >= 0": self.backoff_s >= 0 and self.max_backoff_s >= 0,
        }
        for message, ok in checks.items():
            if not ok:
                raise ConfigError(message)
        self.out = Path(self.out)
        if self.sft_out is None:
            stem = self.out.name.removesuffix(".jsonl")
            self.sft_out = self.out.with_name(f"{stem}.sft.jsonl")
        if Path(self.sft_out).resolve() == self.out.resolve():
            raise ConfigError("--sft-out must differ from --out")
        key = self.api_key or ""
        if not key.isprintable() or " " in key:  # it would go into an error line verbatim
            raise ConfigError("the API key holds spaces or control characters (not shown)")


# -- one response -----------------------------------------------------------------------


class BadResponse(Exception):
    """A 2xx answer that is not a chat completion we can use (retried like a 5xx)."""


@dataclass
class Reply:
    """One chat completion's choice, as the endpoint returned it."""

    completion: str
    reasoning: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    served_model: str | None = None
    latency_s: float = 0.0
    attempts: int = 1


def _clean(text: str) -> str:
    """Text that encodes as UTF-8 (a lone surrogate in JSON decodes but cannot be written)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _optional_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise BadResponse(f"{where}.{key} is {type(value).__name__}, not a string")


def _count(usage: Any, key: str) -> int | None:
    value = usage.get(key) if isinstance(usage, dict) else None
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def parse_reply(body: bytes) -> Reply:
    """The first choice of a chat completion body; BadResponse says what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # not JSON, bad UTF-8, nested too deep
        raise BadResponse(f"body is not JSON ({type(exc).__name__}): {_quote(body)}") from None
    if not isinstance(data, dict):
        raise BadResponse(f"body is a JSON {type(data).__name__}, not an object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        error = data.get("error")
        detail = f": error {_quote(json.dumps(error))}" if error else ""
        raise BadResponse(f"no choices in the answer{detail}")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise BadResponse("choices[0].message is missing or not an object")
    content = _optional_str(message, "content", "message") or ""
    reasoning_fields = ("reasoning_content", "reasoning")
    found = [_optional_str(message, k, "message") for k in reasoning_fields]
    reasoning = next((r for r in found if r), None)
    usage = data.get("usage")
    served = data.get("model")
    return Reply(
        completion=_clean(content),
        reasoning=None if reasoning is None else _clean(reasoning),
        finish_reason=_optional_str(choices[0], "finish_reason", "choices[0]"),
        prompt_tokens=_count(usage, "prompt_tokens"),
        completion_tokens=_count(usage, "completion_tokens"),
        served_model=_clean(served[:200]) if isinstance(served, str) else None,
    )


def _quote(body: bytes | str) -> str:
    """The start of a body on one line, for a message."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return repr(" ".join(text[: 4 * MAX_ERROR_CHARS].split())[:MAX_ERROR_CHARS])


def error_message(body: bytes) -> str:
    """An error answer's message (OpenAI's {"error": {"message"}} shape, else the body)."""
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message:
            return _quote(message)
    except (ValueError, RecursionError, AttributeError):
        pass
    return _quote(body)


def retry_after(headers: Any) -> float | None:
    """Seconds the server asks to wait: retry-after-ms, or Retry-After (seconds or a date)."""
    ms = headers.get("retry-after-ms")
    try:
        if ms is not None and float(ms) >= 0:
            return float(ms) / 1000
    except ValueError:
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
        seconds = max(0.0, seconds)
    return seconds if 0 <= seconds < float("inf") else None


# -- the endpoint -----------------------------------------------------------------------


class _Transient(Exception):
    """A failure worth retrying: kind (for the counts), what happened, the server's wait."""

    def __init__(self, kind: str, what: str, wait_s: float | None = None) -> None:
        super().__init__(what)
        self.kind, self.wait_s = kind, wait_s


class Cancelled(Exception):
    """The run is stopping; this request was not sent (again)."""


def chat_url(endpoint: str) -> tuple[str, str]:
    """(POST URL, the endpoint as recorded: no credentials or query) of a base URL."""
    parts = urllib.parse.urlsplit(endpoint.strip())
    try:
        port = parts.port
    except ValueError:
        port, parts = None, parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MathrlError(
            f"--endpoint {endpoint!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)"
        )
    path = parts.path.rstrip("/").removesuffix("/chat/completions")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    recorded = f"{parts.scheme}://{host}{f':{port}' if port else ''}{path}"
    return urllib.parse.urlunsplit(parts._replace(path=f"{path}/chat/completions")), recorded


class RateLimiter:
    """At most `rate` request starts per second, over all threads (0: no limit)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_t = 0.0
        self.lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_t)
            self.next_t = start + self.interval
        if stop.wait(start - now):
            raise Cancelled


class Endpoint:
    """Chat completions from one OpenAI-compatible endpoint, with retries and a rate limit."""

    def __init__(self, opts: DistillOptions) -> None:
        try:
            import httpx
        except ImportError:
            raise MathrlError("mathrl distill needs httpx: pip install 'mathrl[distill]'") from None

        self.httpx, self.opts = httpx, opts
        self.url, recorded = chat_url(opts.endpoint)
        self.shown = f"{recorded}/chat/completions"  # in messages: no credentials, no query
        headers = {"User-Agent": "mathrl-distill"}
        if opts.api_key:
            headers["Authorization"] = f"Bearer {opts.api_key}"
        self.client = httpx.Client(
            timeout=httpx.Timeout(opts.timeout_s, connect=min(opts.timeout_s, 30.0)),
            limits=httpx.Limits(max_connections=opts.concurrency),
            headers=headers,
        )
        self.limiter = RateLimiter(opts.rate_limit)
        self.faults: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.rng = random.Random()

    def close(self) -> None:
        self.client.close()

    def retries(self) -> int:
        with self.lock:
            return sum(self.faults.values())

    def complete(self, body: dict[str, Any], stop: threading.Event) -> Reply:
        """One trace: retried with exponential backoff (+ jitter, Retry-After honoured)."""
        o = self.opts
        last: _Transient | None = None
        for attempt in range(o.max_retries + 1):
            if stop.is_set():
                raise Cancelled
            self.limiter.wait(stop)
            started = time.monotonic()
            try:
                reply = self._once(body, started + o.timeout_s)
            except _Transient as fault:
                last = fault
                if attempt == o.max_retries:
                    break
                with self.lock:
                    self.faults[fault.kind] += 1
                backoff = min(o.max_backoff_s, o.backoff_s * 2**attempt)
                delay = max(backoff * self.rng.uniform(0.5, 1.0), fault.wait_s or 0.0)
                if stop.wait(delay):
                    raise Cancelled from None
                continue
            reply.latency_s, reply.attempts = time.monotonic() - started, attempt + 1
            return reply
        raise MathrlError(
            f"{self.shown}: gave up after {o.max_retries + 1} tries; the last: {last}"
        )

    def _once(self, body: dict[str, Any], deadline: float) -> Reply:
        httpx = self.httpx
        try:
            with self.client.stream("POST", self.url, json=body) as response:
                status = response.status_code
                limit = self.opts.max_body_bytes if status < 300 else 64 << 10
                data = self._read(response, deadline, limit, ok=status < 300)
                headers = response.headers
        except httpx.TimeoutException:
            raise _Transient("timeout", f"no answer within {self.opts.timeout_s:g} s") from None
        except httpx.UnsupportedProtocol as exc:
            raise MathrlError(f"{self.shown}: {exc}") from None
        except httpx.TransportError as exc:  # refused, reset, closed mid-answer
            raise _Transient("connection", f"{type(exc).__name__}: {exc}"[:300]) from None
        if 200 <= status < 300:
            try:
                return parse_reply(data)
            except BadResponse as exc:
                raise _Transient("bad_response", f"bad answer: {exc}") from None
        what = f"HTTP {status}: {error_message(data)}"
        if status in RETRY_STATUSES or status >= 500:
            wait_s = retry_after(headers)
            if wait_s is not None and wait_s > MAX_RETRY_AFTER_S:
                raise MathrlError(f"{self.shown} asks to retry after {wait_s:.0f} s ({what})")
            raise _Transient(str(status), what, wait_s)
        hint = {
            401: f"; is the API key set (--api-key-env)? {'one was' if self.opts.api_key else 'none was'} sent",
            403: "; the API key may lack access to this model",
            404: "; --endpoint is the base URL (ending in /v1) and --model one it serves?",
        }.get(status, "")
        if 300 <= status < 400:
            hint = (
                f"; it redirects to {_quote(headers.get('location', '?'))}: use that as --endpoint"
            )
        raise MathrlError(f"{self.shown} answered {what}{hint}")

    def _read(self, response: Any, deadline: float, limit: int, ok: bool) -> bytes:
        """The body, up to `limit` bytes (an error body is cut there), before `deadline`."""
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                if ok:
                    raise _Transient("bad_response", f"bad answer: body over {limit} bytes")
                break
            if time.monotonic() > deadline:
                raise _Transient("timeout", f"answer took over {self.opts.timeout_s:g} s")
        return b"".join(chunks)[:limit]


# -- the run ----------------------------------------------------------------------------


@dataclass
class Progress:
    total: int
    done: int
    new: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    last_said: float = field(default_factory=time.monotonic)


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
    for i, row in enumerate(rows, 1):
        ok = isinstance(row.get("problem_id"), str) and isinstance(row.get("sample"), int)
        if not ok or not isinstance(row.get("prompt"), list):
            raise DataError(f"{path}:{i} is not a mathrl distill trace; use another --out")
        for key in IDENTITY:
            if row.get(key) != identity[key]:
                raise MathrlError(
                    f"{path} was written for {key} {row.get(key)!r}, not {identity[key]!r}: "
                    "resume with the same settings or use another --out"
                )
    return rows


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


def run_distill(
    cfg: Config, task: Task, opts: DistillOptions, say: Callable[[str], None]
) -> dict[str, Any]:
    """Sample, score and append every missing trace; write the SFT pairs; return totals."""
    _, recorded = chat_url(opts.endpoint)
    identity = {"model": opts.model, "endpoint": recorded, "task": task.name}
    identity |= {"task_fingerprint": task.fingerprint, "split": opts.split}
    examples = problems(cfg, task, opts.split, opts.limit)
    with locked(opts.out):
        rows = read_traces(opts.out, identity)
        written = {(r["problem_id"], r["sample"]) for r in rows}
        jobs = [(ex, s) for ex in examples for s in range(opts.n) if (ex.id, s) not in written]
        say(
            f"distill: {len(examples)} problems x {opts.n} = {len(examples) * opts.n} traces; "
            f"{len(examples) * opts.n - len(jobs)} already in {opts.out}, {len(jobs)} to sample"
        )
        faults: Counter[str] = Counter()
        progress = Progress(total=len(examples) * opts.n, done=len(examples) * opts.n - len(jobs))
        if jobs:
            t = cfg.train
            with RewardPool(timeout_s=t.reward_timeout_s, workers=t.reward_workers) as pool:
                endpoint = Endpoint(opts)
                try:
                    _sample(cfg, task, opts, identity, jobs, endpoint, pool, rows, progress, say)
                finally:
                    endpoint.close()
                    faults = endpoint.faults
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
    endpoint: Endpoint,
    pool: RewardPool,
    rows: list[dict[str, Any]],
    progress: Progress,
    say: Callable[[str], None],
) -> None:
    """Run the requests on `concurrency` threads; score and append each batch that finishes."""
    max_tokens = opts.max_tokens or cfg.rollout.max_new_tokens
    temperature = cfg.rollout.temperature if opts.temperature is None else opts.temperature
    fields = {**identity, "temperature": temperature, "max_tokens": max_tokens}
    stop = threading.Event()
    error: BaseException | None = None
    bodies: queue.SimpleQueue[tuple[Example, int, dict[str, Any]]] = queue.SimpleQueue()
    for ex, s in jobs:
        body: dict[str, Any] = {"model": opts.model, "messages": task.messages(ex)}
        body |= {"max_tokens": max_tokens, "temperature": temperature}
        if opts.seed:
            body["seed"] = trace_seed(cfg.seed, ex.id, s)
        bodies.put((ex, s, body))
    answers: queue.SimpleQueue[tuple[Example, int, Reply | BaseException]] = queue.SimpleQueue()

    def work() -> None:
        while not stop.is_set():
            try:
                ex, s, body = bodies.get_nowait()
            except queue.Empty:
                return
            try:
                answers.put((ex, s, endpoint.complete(body, stop)))
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
                new = trace_records(task, pool, fields, replies)
                append_jsonl(opts.out, new)
                rows.extend(new)
                _advance(progress, new, endpoint, opts, say)
    finally:
        stop.set()  # a Ctrl-C or a failed write: the workers start nothing more
    if error is not None:
        raise error


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
                "reward": float(result.reward),
                "correct": bool(result.correct),
                "pred": result.pred,
                "gold": ex.gold,
                "reason": result.reason,
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


def _advance(
    progress: Progress,
    new: list[dict[str, Any]],
    endpoint: Endpoint,
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
            f"{p.completion_tokens:,} completion tokens, {endpoint.retries()} retries"
        )


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
