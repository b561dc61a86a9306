"""The run's own loggers: metrics.jsonl, events.jsonl (warnings), progress bar or plain lines."""

from __future__ import annotations

import gc
import io
import warnings
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from mathrl import loggers
from mathrl.io import read_jsonl
from mathrl.loggers import (
    ConsoleLogger,
    EventsLog,
    JSONLLogger,
    MultiLogger,
    ProgressLogger,
    events_log,
    log_event,
    warn,
)


def events(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(run_dir / "events.jsonl")


def fields(records: list[dict[str, Any]], *keys: str) -> list[tuple[Any, ...]]:
    return [tuple(r.get(k) for k in keys) for r in records]


def test_jsonl_logger_writes_nonfinite_as_null(tmp_path: Path) -> None:
    logger = JSONLLogger(tmp_path / "metrics.jsonl")
    logger.log({"reward/mean": 0.5, "loss/kl": float("nan")}, 3)
    assert read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 3, "reward/mean": 0.5, "loss/kl": None, "nonfinite": ["loss/kl"]}
    ]


def test_warn_prints_and_records_with_the_last_logged_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    warn("before any run")  # no events log open: console only
    with events_log(tmp_path) as log:
        warn("no learning signal [all groups equal]")  # rich markup in a message is kept
        log.log({"reward/mean": 1.0}, 7)
        warn("after step 7")
        warn("explicit step", step=9)
        log_event("info", "warm-up skipped")
    warn("after close")
    assert fields(events(tmp_path), "step", "level", "message") == [
        (None, "warning", "no learning signal [all groups equal]"),
        (7, "warning", "after step 7"),
        (9, "warning", "explicit step"),
        (7, "info", "warm-up skipped"),
    ]
    assert all(r["time"].endswith("+00:00") for r in events(tmp_path))
    assert "warning: no learning signal [all groups equal]" in capsys.readouterr().err


def test_python_warnings_are_recorded_while_a_log_is_open(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        before = warnings.showwarning
        with events_log(tmp_path):
            warnings.warn("skipping torn last line", stacklevel=1)
            warnings.warn("old api", DeprecationWarning, stacklevel=1)
        assert warnings.showwarning is before  # the hook is removed with the last log
        warnings.warn("after close", stacklevel=1)
    assert [str(w.message) for w in shown] == ["skipping torn last line", "old api", "after close"]
    recorded = events(tmp_path)
    assert fields(recorded, "level", "category", "message") == [
        ("warning", "UserWarning", "skipping torn last line"),
        ("warning", "DeprecationWarning", "old api"),
    ]
    assert recorded[0]["where"].startswith(__file__)


def test_exception_in_events_block_is_recorded(tmp_path: Path) -> None:
    with pytest.raises(ValueError), events_log(tmp_path):
        raise ValueError("bad batch")
    assert fields(events(tmp_path), "level", "message") == [("error", "ValueError: bad batch")]


def test_nested_runs_write_to_both_files_once_each(tmp_path: Path) -> None:
    run, sub = tmp_path, tmp_path / "expert_iter" / "round_001"
    with events_log(run), events_log(sub), events_log(run):  # the same file twice: one line
        warn("round warning")
    assert len(events(run)) == 1 and len(events(sub)) == 1


def test_a_dropped_log_stops_receiving_events(tmp_path: Path) -> None:
    log = EventsLog(tmp_path)  # a command that raised and never closed its logger
    del log
    gc.collect()
    warn("a later command's warning")
    assert events(tmp_path) == []  # created empty at open: "no warnings"


def test_a_failing_events_write_does_not_stop_the_run(tmp_path: Path) -> None:
    (tmp_path / "events.jsonl").mkdir()  # cannot be opened as a file
    with events_log(tmp_path):
        warn("still runs")


def test_multilogger_closes_in_reverse(tmp_path: Path) -> None:
    closed: list[str] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        def log(self, metrics: dict[str, Any], step: int) -> None:
            pass

        def close(self) -> None:
            closed.append(self.name)

    with MultiLogger([Named("events"), Named("metrics"), Named("wandb")]):
        pass
    assert closed == ["wandb", "metrics", "events"]


STEPS = [{"reward/mean": 0.25, "reward/accuracy": 0.5}, {"reward/mean": 0.5}, {"sft/loss": 1.5}]


def run_progress(terminal: bool, every: int = 1) -> str:
    out = io.StringIO()
    term = Console(file=out, force_terminal=terminal, width=120, color_system=None)
    logger = ProgressLogger(3, every, label="smoke", out=term)
    for step, metrics in enumerate(STEPS, start=1):
        logger.log(metrics, step)
    logger.close()
    return out.getvalue()


def test_progress_on_a_terminal_is_a_bar_then_one_summary_line() -> None:
    text = run_progress(terminal=True)
    assert "━" in text and "step 2/3" in text and "eta" in text  # the live bar's frames
    assert "smoke step 3/3 in 0 s  reward 0.5  acc 0.5  sft_loss 1.5" in text
    assert loggers._bars == {}  # the live display stopped with its last bar


def test_progress_off_a_terminal_keeps_the_plain_lines() -> None:
    text = run_progress(terminal=False, every=2)
    assert text.splitlines() == ["step 2/3  reward 0.5", "step 3/3  sft_loss 1.5"]
    assert "━" not in text
    out = io.StringIO()
    plain = ConsoleLogger(2, 3, out=Console(file=out, force_terminal=False, width=120))
    for step, metrics in enumerate(STEPS, start=1):
        plain.log(metrics, step)
    assert out.getvalue() == text


def test_nested_bars_share_one_live_display() -> None:
    term = Console(file=io.StringIO(), force_terminal=True, width=120, color_system=None)
    outer = ProgressLogger(2, label="rounds", out=term)
    outer.log({"reward/accuracy": 0.1}, 1)
    inner = ProgressLogger(5, label="round_002", out=term)  # would raise LiveError if not shared
    inner.log({"sft/loss": 2.0}, 1)
    assert len(loggers._bars[id(term)].tasks) == 2
    inner.log({"sft/loss": 1.0}, 5)  # reaching total ends the inner bar even without close()
    assert len(loggers._bars[id(term)].tasks) == 1
    outer.close()
    inner.close()  # closing twice is harmless
    assert loggers._bars == {}
