"""Tasks own data loading, prompt building, gold answers and rewards (built from a
config by mathrl.data.make_task)."""

from __future__ import annotations

from mathrl.tasks.base import Example, Task, fingerprint, stable_id

__all__ = ["Example", "Task", "fingerprint", "stable_id"]
