"""Tasks own data loading, prompt building, gold answers and rewards (built from a
config by mathrl.data.make_task)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mathrl.registry import Registry
from mathrl.tasks.base import Example, RecordCall, Task, fingerprint, stable_id
from mathrl.tasks.countdown import CountdownTask
from mathrl.tasks.gsm8k import GSM8KTask
from mathrl.tasks.qa import QATask

RECORD_CALLS: Registry[Callable[[dict[str, Any], str, str, str], RecordCall]] = Registry("task")
"""Task name -> the reward of a logged record (`mathrl score`), one per task that has one."""
RECORD_CALLS.add("gsm8k", GSM8KTask.record_call)
RECORD_CALLS.add("countdown", CountdownTask.record_call)
RECORD_CALLS.add("qa", QATask.record_call)

__all__ = ["RECORD_CALLS", "Example", "RecordCall", "Task", "fingerprint", "stable_id"]
