"""Stopping a run on SIGINT / SIGTERM: at the next step boundary, with a checkpoint.

Schedulers, torchrun and Ctrl-C all send signals. The first one asks the loop to stop
after the step in progress (the loops call `check()` at each step boundary, after their
regular checkpoint); the loop writes a checkpoint (checkpoint.on_signal) and `check()`
raises `Stopped`. A second signal stops at once: `Stopped` is raised wherever the main
thread is (one arriving within ECHO_S of the first counts as the same), and the `with`
blocks on the way out close the reward pool. The CLI turns
`Stopped` into one line (the step, the last complete checkpoint, the resume command) and
exit status 128 + signal (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from mathrl import dist

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):
    """A run stopped by a signal. BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way out swallows it."""

    def __init__(self, signum: int, step: int | None, checkpoint: Path | None, now: bool) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.step, self.checkpoint, self.now = signum, step, checkpoint, now
        self.run_dir: Path | None = None
        """The run's directory, when known: the resume line names it if --out did not."""

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class _Request:
    signum: int | None = None
    at: float = 0.0  # time.monotonic() of the first signal


ECHO_S = 0.2
"""A signal this soon after the first is the same request: Ctrl-C under torchrun reaches a
rank twice (the terminal's process group, then the launcher forwarding it)."""


_request = _Request()


def requested() -> int | None:
    """The signal that asked the run to stop, or None."""
    return _request.signum


def _handler(signum: int, frame: FrameType | None) -> None:
    if _request.signum is None:
        _request.signum, _request.at = signum, time.monotonic()
        name = signal.Signals(signum).name
        if os.environ.get("RANK", "0") != "0":
            return  # every rank of a torchrun job gets the signal: rank 0 says it once
        print(
            f"\n{name} received: stopping after the current step and writing a checkpoint "
            f"(send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )
        return
    if time.monotonic() - _request.at < ECHO_S:
        return
    raise Stopped(signum, None, None, now=True)


@contextlib.contextmanager
def graceful_stop() -> Iterator[None]:
    """SIGINT and SIGTERM ask the loops inside to stop at a step boundary (main thread only;
    elsewhere a no-op). The previous handlers come back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in HANDLED}
    _request.signum = None
    for s in HANDLED:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _request.signum = None


def check(step: int, save: Callable[[], Path] | None, saved: Path | None = None) -> None:
    """At a step boundary: if a signal asked to stop, make sure a checkpoint of `step`
    exists (`saved` if the loop just wrote one, else `save()`; None: no signal checkpoint),
    then raise Stopped."""

    signum = dist.agree_stop(_request.signum)  # any rank's signal stops every rank here
    if signum is None:
        return
    checkpoint = saved if saved is not None or save is None else save()
    raise Stopped(signum, step, checkpoint, now=False)


def message(stop: Stopped, argv: list[str]) -> str:
    """One line: what stopped, where, the last complete checkpoint, how to continue."""

    name = signal.Signals(stop.signum).name
    where = f"after step {stop.step}" if stop.step is not None else "at once"
    resume = [*argv] if "--resume" in argv else [*argv, "--resume"]
    given_out = any(a in ("--out", "-o") or a.startswith("--out=") for a in argv)
    if stop.run_dir is not None and not given_out:  # a default runs/<stamp> dir
        resume += ["--out", str(stop.run_dir)]
    tail = (
        f"last complete checkpoint: {stop.checkpoint}" if stop.checkpoint else "no checkpoint yet"
    )
    return f"stopped by {name} {where}; {tail}; continue with: {shlex.join(resume)}"
