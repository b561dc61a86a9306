"""The config tree's root: Config, its sections (mathrl.config.sections) and checks.

`field_docs()` reads the attribute docstrings, the one place each field is documented.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import dataclass, field
from functools import cache

from mathrl.config.sections import (
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    ExpertIterConfig,
    LogConfig,
    ModelConfig,
    RolloutConfig,
    RunConfig,
    SFTConfig,
    TaskConfig,
    TrainConfig,
    WarmupConfig,
)
from mathrl.config.validate import (
    check_backend,
    check_choices,
    check_model_and_data,
    check_reward_workers,
    check_rollout_compile,
    check_rollout_weights,
    check_sampling,
    check_schedules,
    check_task,
    check_train,
)


@dataclass
class Config:
    """Everything a run needs; saved as TOML into every run directory."""

    seed: int = 0
    """Seed of python, numpy and torch RNGs and of sampling."""
    backend: str = "torch"
    """Where the model runs and trains: torch (CPU, CUDA, MPS; torchrun) or mlx (Apple
    silicon through mlx-lm; mlx[cpu] on Linux; pip install 'mathrl[mlx]'). Same configs,
    commands and outputs; a key MLX does not support stops the run naming it."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    expert_iter: ExpertIterConfig = field(default_factory=ExpertIterConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        """Range and cross-field checks; the first failure raises a ConfigError naming its key."""
        check_choices(self)
        check_backend(self)
        check_rollout_weights(self)
        check_rollout_compile(self)
        check_train(self.train, self.rollout, self.sft)
        check_sampling(self.rollout, self.eval)
        check_task(self.task, self.data, self.rollout)
        check_reward_workers(self.task, self.train)
        check_model_and_data(self.model, self.data)
        check_schedules(self.checkpoint, self.log, self.warmup, self.sft, self.expert_iter)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal right under each field."""
    tree = ast.parse(inspect.getsource(cls))
    node = tree.body[0]
    assert isinstance(node, ast.ClassDef)
    docs: dict[str, str] = {}
    for stmt, nxt in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())  # one line
    return docs
