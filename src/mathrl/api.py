"""The Python API for notebooks and scripts: the CLI's train and eval as functions.

    import mathrl
    from mathrl.config import load_config

    cfg = load_config("countdown/smoke", ["train.steps=2"])    # or a file path, or Config()
    run = mathrl.train(cfg, out="runs/nb")                      # -> Path of the run dir
    summary = mathrl.evaluate(run, cfg, out="runs/nb_eval")    # -> eval summary dict

Both take a Config object, a config file or a preset name, plus `overrides` in --set form,
and write exactly what `mathrl train` / `mathrl eval` write.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mathrl.runs import run_eval, run_training


def train(
    config: Any,
    out: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    resume: bool = False,
    allow_config_change: bool = False,
    quiet: bool = True,
) -> Path:
    """Run `mathrl train` (warm-up per [warmup], RL, checkpoints, summary, report); returns
    the run dir, whose summary.json holds the before/after result."""
    return run_training(
        config,
        list(overrides),
        Path(out) if out is not None else None,
        resume,
        allow_config_change,
        quiet,
    )


def evaluate(
    model: str | Path | Sequence[str | Path],
    config: Any = None,
    out: str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    split: str = "test",
    limit: int | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Run `mathrl eval` on one model (a run dir, checkpoint, HF dir/id, .gguf or a named
    model) or several; returns its summary, or {label: summary} for several."""
    several = not isinstance(model, str | Path)
    paths = [str(m) for m in model] if several else [str(model)]  # type: ignore[union-attr]
    _, rows, _ = run_eval(
        config,
        list(overrides),
        Path(out) if out is not None else None,
        paths,
        split,
        limit,
        quiet,
    )
    summaries = {r["label"]: json.loads(json.dumps(r["summary"])) for r in rows}
    return summaries if several else next(iter(summaries.values()))
