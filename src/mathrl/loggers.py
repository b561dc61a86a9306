"""One logger interface: JSONL (always), console, and optional W&B / TensorBoard."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from mathrl.io import append_jsonl

console = Console(stderr=True)


class Logger(Protocol):
    def log(self, metrics: dict[str, Any], step: int) -> None: ...
    def close(self) -> None: ...


class NullLogger:
    """A logger with the real methods that does nothing (no `if logger:` branches)."""

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def close(self) -> None:
        pass


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    # JSON has no NaN/inf: a non-finite metric is written as null and named in 'nonfinite'.
    out, bad = {}, []
    for k, v in metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = None
            bad.append(k)
        else:
            out[k] = v
    if bad:
        out["nonfinite"] = bad
    return out


class JSONLLogger:
    """metrics.jsonl in the run dir: one line per step, appended line-atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def log(self, metrics: dict[str, Any], step: int) -> None:
        append_jsonl(self.path, [{"step": step, **_finite(metrics)}])

    def close(self) -> None:
        pass


CONSOLE_KEYS = {
    "reward/mean": "reward",
    "reward/accuracy": "acc",
    "reward/frac_zero_std": "zero_std",
    "rollout/len_mean": "len",
    "rollout/entropy": "entropy",
    "loss/policy": "loss",
    "loss/clip_frac": "clip",
    "loss/kl": "kl",
    "optim/grad_norm": "gnorm",
    "sft/loss": "sft_loss",
    "eval/pass@1": "eval@1",
    "time/step_s": "s/step",
}


class ConsoleLogger:
    """One compact line every `every` steps (and on the last step)."""

    def __init__(self, every: int = 1, total: int | None = None, prefix: str = "") -> None:
        self.every, self.total, self.prefix = max(1, every), total, prefix

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if step % self.every and step != self.total:
            return
        parts = [
            f"{short} {metrics[k]:.4g}"
            for k, short in CONSOLE_KEYS.items()
            if isinstance(metrics.get(k), int | float)
        ]
        if parts:
            total = f"/{self.total}" if self.total else ""
            console.print(
                f"{self.prefix}step {step}{total}  " + "  ".join(parts),
                highlight=False,
                soft_wrap=True,
            )

    def close(self) -> None:
        pass


class MultiLogger:
    def __init__(self, loggers: list[Any]) -> None:
        self.loggers = loggers

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()
