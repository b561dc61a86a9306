"""One RL train step and the state it resumes from, shared by the online and buffer
trainers and by every backend."""

from mathrl.rl.state import (
    TrainState,
    optimizer_state,
    reference_for,
    save_checkpoint,
    step_scheduler,
)
from mathrl.rl.step import advantages_for, keep_rows, loss_config, train_step, truncated_rows

__all__ = [
    "TrainState",
    "advantages_for",
    "keep_rows",
    "loss_config",
    "optimizer_state",
    "reference_for",
    "save_checkpoint",
    "step_scheduler",
    "train_step",
    "truncated_rows",
]
