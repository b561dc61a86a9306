"""What the RL loops share around the backend: the KL reference of a run, and the check
that the configured variants have an MLX form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mathrl.backends import Backend
from mathrl.config import Config

START_MODEL = "start_model"
"""TrainState.extra key: the model a run started RL from (its KL reference on resume)."""


def reference_for(
    cfg: Config, b: Backend, model: Any, state: Any, run_dir: Path, resumed: bool
) -> Any:
    """The KL reference of a run: the weights RL started from. A fresh run records where
    they came from in its TrainState (relative to the run dir when inside it, so a copied
    run dir still finds them) and copies them; a resumed run loads them from there, since
    its model holds trained weights by now (a state without the record: a copy)."""
    if not resumed:
        source = str(getattr(model, "name_or_path", "") or "")
        if (
            source
            and Path(source).is_dir()
            and Path(source).resolve().is_relative_to(run_dir.resolve())
        ):
            source = str(Path(source).resolve().relative_to(run_dir.resolve()))
        state.extra[START_MODEL] = source or None
        return b.reference(cfg, model)
    recorded = state.extra.get(START_MODEL)
    if recorded and not Path(recorded).is_absolute() and (run_dir / recorded).is_dir():
        recorded = str(run_dir / recorded)
    return b.reference(cfg, model, recorded)


def check_mlx_forms(cfg: Config) -> None:
    """A variant registered in torch form only (a user's own loss) stops an MLX run,
    naming the key, before any work (backends/mlx.py's check_forms)."""
    # imported here: only MLX runs call this, and a torch-only process never loads mlx
    from mathrl.backends.mlx import check_forms

    check_forms(cfg)
