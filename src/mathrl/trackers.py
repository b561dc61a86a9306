"""Optional loggers with the interface of mathrl.loggers: W&B and TensorBoard (lazy imports)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, cast

from mathrl.errors import ConfigError

WANDB_MODES = ("offline", "online", "disabled")


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a metrics dict (drops None, strings, lists, NaN/inf)."""
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)
    }


class WandbLogger:
    """Weights & Biases run in run_dir/wandb; offline by default (sync later with `wandb sync`)."""

    def __init__(
        self,
        project: str,
        run_dir: str | Path,
        config: dict[str, Any],
        mode: str = "offline",
        name: str | None = None,
    ) -> None:
        if mode not in WANDB_MODES:
            raise ConfigError(f"wandb mode must be one of {WANDB_MODES}, got {mode!r}")
        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "log.wandb needs the wandb extra: pip install 'mathrl[wandb]'"
            ) from None
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project,
            dir=str(run_dir),
            config=config,
            mode=cast(Any, mode),  # checked against WANDB_MODES above
            name=name or run_dir.resolve().name,
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(scalars(metrics), step=step)

    def close(self) -> None:
        import wandb

        self.run.finish()
        # finish() can return before wandb-core has written the run file; teardown waits
        # for the service to flush and exit (it is restarted if another run starts later).
        wandb.teardown()


class TensorBoardLogger:
    """TensorBoard event files in log_dir (one scalar series per metric key)."""

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "log.tensorboard needs the tensorboard extra: pip install 'mathrl[tensorboard]'"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for key, value in scalars(metrics).items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
