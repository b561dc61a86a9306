"""`mathrl rollout`, `train-buffer` and `loop`: decoupled RL through buffer files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mathrl.cli.app import app
from mathrl.cli.options import EPILOG, ConfigOpt, NprocOpt, OutOpt, QuietOpt, SetOpt, relaunch
from mathrl.runs import (
    join_decoupled,
    make_logger,
    maybe_warmup,
    open_at_latest,
    open_run,
    say,
)


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
    from mathrl import dist
    from mathrl.buffer_rl import rollout_iteration

    if relaunch(nproc):
        return
    with dist.joined():  # torchrun: the ranks split each step's prompts, rank 0 writes
        cfg, task, run_dir, latest, model, tokenizer = open_at_latest(config, sets, out, quiet)
        path = rollout_iteration(cfg, task, model, tokenizer, run_dir, iter, steps)
    say(f"wrote {path}")


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
    from mathrl import dist
    from mathrl.buffer_rl import train_on_buffer

    if relaunch(nproc):
        return
    with dist.joined():  # torchrun: the ranks split each step's groups
        cfg, task, run_dir, latest, model, tokenizer = open_at_latest(config, sets, out, quiet)
        with make_logger(cfg, run_dir) as logger:
            step = train_on_buffer(cfg, task, model, tokenizer, run_dir, buffer, logger, latest)
    say(f"trained to step {step}; checkpoints in {run_dir / 'checkpoints'}")


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
    from mathrl import checkpoint as ckpt_mod
    from mathrl import dist
    from mathrl.buffer_rl import loop
    from mathrl.policy import load_policy

    if relaunch(nproc):
        return
    with dist.joined():  # torchrun: each iteration's rollout and training split over ranks
        cfg = join_decoupled(config, sets, quiet)
        task, run_dir = open_run(cfg, out, resume=False, reset=reset)
        # The warm-up (per [warmup]) only matters before the first RL checkpoint; it resumes.
        base = (
            None
            if ckpt_mod.latest_checkpoint(run_dir)
            else maybe_warmup(cfg, task, run_dir, resume=True, allow_change=False)
        )
        with make_logger(cfg, run_dir, max_steps) as logger:
            step = loop(
                cfg,
                task,
                run_dir,
                iters,
                max_steps,
                lambda path: load_policy(cfg, task, run_dir, path or base),
                logger,
                say,
            )
    say(f"loop finished at step {step}; checkpoints in {run_dir / 'checkpoints'}")
