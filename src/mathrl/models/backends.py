"""Backends by name: where the model lives and trains (the top-level config key `backend`).

The backend boundary is model load, forward log-probs, the optimizer step and saving:
torch (models/loading.py, backends/torch.py) or MLX (models/mlx_model.py, backends/mlx.py).
Everything else (tasks, rewards, data, the loops, logs, reports) is shared. An entry is
the check that the backend can run here, so naming one costs no import.
"""

from __future__ import annotations

from collections.abc import Callable

from mathrl.registry import Registry

BACKENDS: Registry[Callable[[], None]] = Registry("backend")


@BACKENDS.register("torch")
def _torch() -> None:
    """PyTorch: CPU, CUDA, MPS; one process or many (torchrun)."""


@BACKENDS.register("mlx")
def _mlx() -> None:
    """MLX through mlx-lm: Apple silicon (and mlx[cpu] on Linux); one process."""
    from mathrl.models.mlx_model import require_mlx

    require_mlx()


def require_backend(name: str) -> None:
    """Raise one line when backend `name` is unknown or its packages are missing."""
    BACKENDS.get(name)()
