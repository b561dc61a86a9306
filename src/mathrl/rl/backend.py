"""The RL step's backend-specific functions, picked by the config's `backend`.

The loop (trainer.py) calls these five through `ops(cfg)`; each backend's versions have
the same signatures and results (rl/step.py + rl/state.py for torch, rl/mlx_step.py for
MLX). Everything else in the loop is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathrl.config import Config


@dataclass(frozen=True)
class Ops:
    optimizer_state: Callable[..., Any]
    reference_model: Callable[..., Any]
    advantages_for: Callable[..., Any]
    train_step: Callable[..., Any]
    save_checkpoint: Callable[..., Any]


def ops(cfg: Config) -> Ops:
    """The configured backend's step functions (MLX's module is imported only when used)."""
    if cfg.backend == "mlx":
        from mathrl.rl import mlx_step as m

        check_mlx_forms(cfg)
    else:
        from mathrl.rl import state, step

        return Ops(
            state.optimizer_state,
            step.reference_model,
            step.advantages_for,
            step.train_step,
            state.save_checkpoint,
        )
    return Ops(
        m.optimizer_state, m.reference_model, m.advantages_for, m.train_step, m.save_checkpoint
    )


START_MODEL = "start_model"
"""TrainState.extra key: the model a run started RL from (its KL reference on resume)."""


def reference_for(cfg: Config, b: Ops, model: Any, state: Any, run_dir: Path, resumed: bool) -> Any:
    """The KL reference of a run: the weights RL started from. A fresh run records where
    they came from in its TrainState (relative to the run dir when inside it, so a copied
    run dir still finds them) and copies them; a resumed run loads them from there, since
    its model holds trained weights by now (a state without the record: a copy, as before)."""
    if not resumed:
        source = str(getattr(model, "name_or_path", "") or "")
        if (
            source
            and Path(source).is_dir()
            and Path(source).resolve().is_relative_to(run_dir.resolve())
        ):
            source = str(Path(source).resolve().relative_to(run_dir.resolve()))
        state.extra[START_MODEL] = source or None
        return b.reference_model(cfg, model)
    recorded = state.extra.get(START_MODEL)
    if recorded and not Path(recorded).is_absolute() and (run_dir / recorded).is_dir():
        recorded = str(run_dir / recorded)
    return b.reference_model(cfg, model, recorded)


def check_mlx_forms(cfg: Config) -> None:
    """A variant registered in torch form only (a user's own loss) stops an MLX run,
    naming the key, before any work."""
    from mathrl.algorithms.mlx_forms import MLX_TWINS
    from mathrl.config import REGISTRY_CHOICES
    from mathrl.config.validate import get_value
    from mathrl.errors import ConfigError

    twins = {id(torch_form): mlx_form for torch_form, mlx_form in MLX_TWINS}
    for key, registry in REGISTRY_CHOICES.items():
        mlx_form = twins.get(id(registry))
        name = get_value(cfg, key)
        if mlx_form is not None and name not in mlx_form:
            raise ConfigError(
                f"{key} = {name!r} has no MLX form: register one in its {mlx_form.kind} "
                "registry (mathrl.algorithms.mlx_forms), or use backend = 'torch'"
            )
