"""Shared by the GRPO benchmark's orchestrator and its two workers (stdlib only).

Both workers import this file, each in its own environment (mathrl's .venv and
bench/.venv-trl), so it must not import torch, transformers, mathrl or trl.

Lock-step protocol: a worker prints one JSON object per line on stdout, prefixed with
`@@`; the orchestrator answers `go` (run one more step) or `stop` on the worker's stdin.
Every other stdout/stderr line is the library's own chatter and is ignored.
"""

from __future__ import annotations

import json
import sys
import zlib
from typing import Any

TAG = "@@"


def text_reward(text: str) -> float:
    """A deterministic pseudo-random reward in [0, 1) from a completion's text.

    A random-init model never answers a GSM8K problem, so the task's own reward is 0 for
    every completion: every advantage is 0 and mathrl (rightly) skips the backward pass,
    which would make the comparison meaningless. A continuous reward that depends only on
    the text gives every group a non-zero spread, so both frameworks train on all rows.
    """
    return (zlib.crc32(text.encode("utf-8")) & 0xFFFFFFFF) / 2**32


def send(obj: dict[str, Any]) -> None:
    """Report to the orchestrator (one tagged JSON line)."""
    sys.stdout.write(TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def wait_for_go() -> bool:
    """Block until the orchestrator says go (True) or stop / closes the pipe (False)."""
    line = sys.stdin.readline()
    return line.strip() == "go"


def _status_mb(pid: str, field: str) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb(pid: str = "self") -> float:
    """VmHWM (peak resident set) of a process in MiB, from /proc."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: str = "self") -> float:
    """VmRSS (current resident set) of a process in MiB: what an idle worker holds."""
    return _status_mb(pid, "VmRSS")


def trim_memory() -> None:
    """Give the heap's free pages back to the OS (glibc malloc_trim), so an idle worker holds
    little memory while the other framework runs its step. Called outside the timed region."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def pss_mb(pid: int) -> float:
    """Proportional set size of a process in MiB (shared pages split between sharers)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def children_pids(pid: int) -> list[int]:
    """Direct children of a process (Linux /proc)."""
    out: list[int] = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            out = [int(p) for p in fh.read().split()]
    except OSError:
        pass
    return out
