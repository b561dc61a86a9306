"""What a run tells you: metrics.jsonl, events.jsonl (warnings), a progress bar or plain lines.

Every logger has `log(metrics, step)` and `close()`; `MultiLogger` fans out to several.
W&B and TensorBoard live in `mathrl.trackers` (optional, imported lazily).
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import os
import sys
import time
import warnings
import weakref
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mathrl import dist
from mathrl.io import append_jsonl
from mathrl.trackers import TensorBoardLogger, WandbLogger

console = Console(stderr=True)

EVENTS_FILE = "events.jsonl"


class NullLogger:
    """A logger with the real methods that does nothing (no `if logger:` branches)."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN/inf: a non-finite metric is written as null and named in 'nonfinite'.
    out: dict[str, Any] = {}
    bad: list[str] = []
    for k, v in metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
            bad.append(k)
        else:
            out[k] = v
    if bad:
        out["nonfinite"] = bad
    return out


class JSONLLogger:
    """metrics.jsonl in the run dir: one line per step, appended line-atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def log(self, metrics: dict[str, Any], step: int) -> None:
        append_jsonl(self.path, [{"step": step, **_finite(metrics)}])

    def close(self) -> None:
        pass


class MultiLogger:
    """Several loggers as one; closed in reverse order, so the events log (first) closes last."""

    def __init__(self, loggers: list[Any]) -> None:
        self.loggers = loggers

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def close(self) -> None:
        for lg in reversed(self.loggers):
            lg.close()

    def __enter__(self) -> MultiLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- events log

# Weak references: a log whose run dropped it without close() (a command that raised, a
# caller that never closes) stops receiving events when it is garbage-collected.
_open_logs: list[weakref.ref[EventsLog]] = []
_showwarning_before: Any = warnings.showwarning  # where the hook passes warnings on to
_writing = False  # an events write that itself warns (io's torn-tail notice) is not re-logged


class EventsLog:
    """run_dir/events.jsonl while open: `warn()` and Python warnings, one JSON line each.

    A line is {"time", "step", "level", "message"} (+ "category", "where" for Python
    warnings); step is the last step this run logged (None before its first). Events go to
    every open log: an SFT round's warning lands in the round's file and in its run's file.
    Also a logger (log/close) and a context manager: `with events_log(run_dir): ...`.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.step: int | None = None
        try:  # an empty file says "no warnings" (rather than "no events log")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError:
            pass  # reported by the first write, if any
        _open(self)

    def write(self, level: str, message: str, step: int | None = None, **extra: Any) -> None:
        """Append one event; a failing write is reported on the console, never raised."""
        global _writing
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "step": self.step if step is None else step,
            "level": level,
            "message": message,
            **extra,
        }
        _writing = True
        try:
            append_jsonl(self.path, [record])
        except Exception as exc:  # the events log must never stop a run
            console.print(f"[yellow]warning:[/] cannot write {self.path}: {escape(str(exc))}")
        finally:
            _writing = False

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.step = step

    def close(self) -> None:
        _close(self)

    def __enter__(self) -> EventsLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and kind is not None:
            self.write("error", f"{kind.__name__}: {exc}")
        self.close()


def events_log(run_dir: str | Path) -> EventsLog:
    """Open run_dir/events.jsonl until the returned log is closed (or its `with` block ends)."""
    return EventsLog(run_dir)


def log_event(level: str, message: str, step: int | None = None, **extra: Any) -> None:
    """Append an event to every open events log (once per file); nothing when none is open."""
    seen: set[Path] = set()
    for log in _live_logs():
        if log.path not in seen:
            seen.add(log.path)
            log.write(level, message, step, **extra)


def warn(message: str, step: int | None = None) -> None:
    """Print `warning: message` in yellow on the console and record it in the events log
    (rank 0's only: the other ranks compute the same and stay quiet)."""
    from mathrl import dist  # same layer

    if not dist.current().is_main:
        return
    console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)
    log_event("warning", message, step)


def _showwarning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """warnings.showwarning while an events log is open: shown as Python shows it, and recorded."""
    _showwarning_before(message, category, filename, lineno, file, line)
    if not _writing:
        where = f"{filename}:{lineno}"
        log_event("warning", str(message), category=category.__name__, where=where)


def _live_logs() -> list[EventsLog]:
    logs = [log for ref in _open_logs if (log := ref()) is not None]
    _open_logs[:] = [ref for ref in _open_logs if ref() is not None]
    return logs


def _open(log: EventsLog) -> None:
    global _showwarning_before
    # (Re)installed on every open: pytest and catch_warnings() restore the hook they saw.
    if warnings.showwarning is not _showwarning:
        _showwarning_before = warnings.showwarning
        warnings.showwarning = _showwarning
    _open_logs.append(weakref.ref(log))


def _close(log: EventsLog) -> None:
    _open_logs[:] = [ref for ref in _open_logs if ref() not in (None, log)]
    if not _open_logs and warnings.showwarning is _showwarning:
        warnings.showwarning = _showwarning_before


# ---------------------------------------------------------------- console progress

CONSOLE_KEYS = {
    "reward/mean": "reward",
    "reward/accuracy": "acc",
    "reward/frac_zero_std": "zero_std",
    "rollout/len_mean": "len",
    "policy/entropy": "entropy",
    "loss/policy": "loss",
    "loss/clip_frac": "clip",
    "loss/kl": "kl",
    "optim/grad_norm": "gnorm",
    "sft/loss": "sft_loss",
    "eval/pass@1": "eval@1",
    "time/step_s": "s/step",
}
BAR_KEYS = {
    "reward/mean": "reward",
    "reward/accuracy": "acc",
    "sft/loss": "sft_loss",
    "eval/pass@1": "eval@1",
}
"""The latest values the progress bar shows (eval@1 stays until the next eval)."""


def _format(metrics: dict[str, Any], keys: dict[str, str]) -> str:
    return "  ".join(
        f"{short} {metrics[k]:.4g}" for k, short in keys.items() if _is_number(metrics.get(k))
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class ConsoleLogger:
    """One compact line every `every` steps (and on the last step)."""

    def __init__(
        self, every: int = 1, total: int | None = None, prefix: str = "", out: Console | None = None
    ) -> None:
        self.every, self.total, self.prefix = max(1, every), total, prefix
        self.out = out or console

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if step % self.every and step != self.total:
            return
        if parts := _format(metrics, CONSOLE_KEYS):
            total = f"/{self.total}" if self.total else ""
            self.out.print(
                f"{self.prefix}step {step}{total}  {parts}", highlight=False, soft_wrap=True
            )

    def close(self) -> None:
        pass


_bars: dict[int, Progress] = {}  # one live display per console (rich allows one at a time)


def _bar_for(out: Console) -> Progress:
    if id(out) not in _bars:
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("step"),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[stats]}"),
            console=out,
            refresh_per_second=4,
            speed_estimate_period=600,  # ETA from the last 10 minutes, not 30 s (slow steps)
            transient=True,  # a finished task leaves one plain summary line instead
        )
        bar.start()
        _bars[id(out)] = bar
    return _bars[id(out)]


@atexit.register
def _stop_bars() -> None:
    # A run that dies with its bar live would leave the terminal's cursor hidden.
    for bar in _bars.values():
        bar.stop()
    _bars.clear()


class ProgressLogger:
    """A progress bar on a terminal (step/total, elapsed, ETA, latest reward/accuracy);
    the plain `ConsoleLogger` lines every `every` steps when output is not a terminal.

    Bars of nested runs (an expert-iter round's SFT) share one live display. A bar ends at
    close() or when it reaches `total`, leaving one summary line.
    """

    def __init__(
        self,
        total: int | None,
        every: int = 1,
        prefix: str = "",
        label: str = "",
        out: Console | None = None,
    ) -> None:
        self.out = out or console
        self.total, self.label = total, f"{prefix}{label}"
        self.lines = None if self.out.is_terminal else ConsoleLogger(every, total, prefix, self.out)
        self.task: TaskID | None = None
        self.step: int | None = None
        self.latest: dict[str, Any] = {}
        self.started = time.perf_counter()

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.lines is not None:
            self.lines.log(metrics, step)
            return
        self.latest.update({k: v for k, v in metrics.items() if k in BAR_KEYS and _is_number(v)})
        stats = _format(self.latest, BAR_KEYS)
        bar = _bar_for(self.out)
        if self.task is None:  # added at the first step: a resumed run's ETA starts there
            self.task = bar.add_task(self.label, total=self.total, stats=stats)
        bar.update(self.task, completed=step, stats=stats, refresh=True)
        self.step = step
        if self.total is not None and step >= self.total:
            self.close()

    def close(self) -> None:
        if self.task is None or id(self.out) not in _bars:
            return
        bar = _bars[id(self.out)]
        bar.remove_task(self.task)
        bar.refresh()
        self.task = None
        total = f"/{self.total}" if self.total else ""
        took = time.perf_counter() - self.started
        summary = f"{self.label} step {self.step}{total}".lstrip() + f" in {took:.0f} s"
        stats = _format(self.latest, BAR_KEYS)
        self.out.print(f"{summary}  {stats}".rstrip(), highlight=False, soft_wrap=True)
        if not bar.tasks:
            bar.stop()
            del _bars[id(self.out)]


def say(msg: str) -> None:
    """One line of progress or outcome on stderr (stdout keeps tables and JSON); rank 0's."""
    if dist.current().is_main and dist.speaks():  # speaks(): also after the ranks left
        print(msg, file=sys.stderr, flush=True)


def make_logger(cfg: Any, run_dir: Path, total: int | None = None) -> MultiLogger:
    """The loggers a run's config asks for, into run_dir; rank 0 logs for every rank."""
    if not dist.current().is_main:
        return MultiLogger([])
    # events.jsonl (warnings) first: MultiLogger closes in reverse, so it records the others'
    loggers: list[Any] = [EventsLog(run_dir), JSONLLogger(run_dir / "metrics.jsonl")]
    if not cfg.log.quiet:  # a bar on a terminal, plain per-step lines otherwise
        loggers.append(ProgressLogger(total, cfg.log.every, label=run_dir.name))
    if cfg.log.wandb:
        mode = os.environ.get("WANDB_MODE", "online")
        loggers.append(WandbLogger("mathrl", run_dir, dataclasses.asdict(cfg), mode=mode))
    if cfg.log.tensorboard:
        loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    return MultiLogger(loggers)
