"""Tasks own data loading, prompt building, gold answers and rewards."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mathrl.tasks.base import Example, Task, fingerprint, stable_id

if TYPE_CHECKING:
    from mathrl.config import Config

__all__ = ["Example", "Task", "fingerprint", "make_task", "stable_id"]


def make_task(cfg: Config) -> Task:
    """Build the configured task (the only place that maps task.name to a class)."""
    if cfg.task.name == "gsm8k":
        from mathrl.tasks.gsm8k import GSM8KTask

        return GSM8KTask(
            cfg.data.path,
            prompt_style=cfg.task.prompt_style,
            reward_scheme=cfg.task.reward_scheme,
            val_size=cfg.data.val_size,
            split_seed=cfg.data.split_seed,
            revision=cfg.data.hub_revision,
            system_prompt=cfg.task.system_prompt,
            use_math_verify=cfg.task.use_math_verify,
        )
    from mathrl.tasks.countdown import CountdownTask

    d = cfg.data
    source = d.path if d.path.endswith((".jsonl", ".parquet")) else None
    return CountdownTask(
        source,
        prompt_style=cfg.task.prompt_style,
        reward_scheme=cfg.task.reward_scheme,
        sizes=d.countdown_numbers,
        max_number=d.countdown_max_number,
        max_target=d.countdown_max_target,
        train_size=d.countdown_train_size,
        test_size=d.countdown_test_size,
        seed=d.split_seed,
        system_prompt=cfg.task.system_prompt,
    )
