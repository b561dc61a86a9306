"""One RL train step and the optimizer it steps, shared by the online and buffer trainers."""

from mathrl.rl.state import (
    TrainState,
    lr_schedule,
    make_optimizer,
    optimizer_state,
    save_checkpoint,
    step_scheduler,
)
from mathrl.rl.step import (
    Reference,
    advantages_for,
    clip_gradients,
    micro_batch,
    reference_model,
    sampler_logprobs,
    train_step,
)

__all__ = [
    "Reference",
    "TrainState",
    "advantages_for",
    "clip_gradients",
    "lr_schedule",
    "make_optimizer",
    "micro_batch",
    "optimizer_state",
    "reference_model",
    "sampler_logprobs",
    "save_checkpoint",
    "step_scheduler",
    "train_step",
]
