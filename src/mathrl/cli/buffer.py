"""`mathrl rollout`, `train-buffer` and `loop`: RL through buffer files (rollout and training
decoupled). Thin commands over mathrl.runs.train, imported in each body (it loads
transformers, 0.85 s measured, which `--help` should not wait for)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mathrl.cli.app import app
from mathrl.cli.options import EPILOG, ConfigOpt, NprocOpt, OutOpt, QuietOpt, SetOpt, relaunch


@app.command("rollout", epilog=EPILOG)
def rollout_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    iter: Annotated[
        int, typer.Option("--iter", help="Iteration number: writes buffer/iter_XXX.jsonl.")
    ] = 0,
    steps: Annotated[
        int, typer.Option(help="Training steps the buffer should feed (x prompts_per_step groups).")
    ] = 1,
    quiet: QuietOpt = False,
    nproc: NprocOpt = 1,
) -> None:
    """Sample completions with the newest checkpoint in --out (or model.path) into a buffer file."""
    from mathrl.runs.train import run_rollout

    if not relaunch(nproc):
        run_rollout(config, sets, out, iter, steps, quiet)


@app.command("train-buffer", epilog=EPILOG)
def train_buffer_cmd(
    buffer: Annotated[Path, typer.Option(help="Buffer file written by `mathrl rollout`.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    quiet: QuietOpt = False,
    nproc: NprocOpt = 1,
) -> None:
    """Train from a rollout buffer (continuing the newest checkpoint in --out), then checkpoint."""
    from mathrl.runs.train import run_train_buffer

    if not relaunch(nproc):
        run_train_buffer(config, sets, out, buffer, quiet)


@app.command("loop", epilog=EPILOG)
def loop_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    iters: Annotated[int, typer.Option(help="Rollout/train iterations.")] = 5,
    max_steps: Annotated[
        int, typer.Option(help="Total training steps over all iterations.")
    ] = 1000,
    reset: Annotated[bool, typer.Option(help="Delete --out and start over.")] = False,
    quiet: QuietOpt = False,
    nproc: NprocOpt = 1,
) -> None:
    """Alternate `rollout` and `train-buffer` (steps_per_iter = ceil(max_steps / iters)), after an SFT warm-up per [warmup]; resumes by itself."""
    from mathrl.runs.train import run_loop

    if not relaunch(nproc):
        run_loop(config, sets, out, iters, max_steps, reset, quiet)
