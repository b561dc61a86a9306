"""`mathrl train`, `expert-iter`, `sft` and `sft-pretokenize`: the training commands.

Each command imports mathrl.runs in its body: it loads transformers (0.85 s measured),
which `mathrl --help` and an option error should not wait for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mathrl.cli.app import app
from mathrl.cli.options import (
    EPILOG,
    AllowOpt,
    ConfigOpt,
    NprocOpt,
    OutOpt,
    QuietOpt,
    ResumeOpt,
    SetOpt,
    relaunch,
)


@app.command("train", epilog=EPILOG)
def train_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    allow_config_change: AllowOpt = False,
    quiet: QuietOpt = False,
    nproc: NprocOpt = 1,
) -> None:
    """Online RL with GRPO, Dr GRPO, RLOO or REINFORCE; an SFT warm-up first per [warmup]."""
    from mathrl.runs.train import run_training

    if not relaunch(nproc):
        run_training(config, sets, out, resume, allow_config_change, quiet)


@app.command("expert-iter", epilog=EPILOG)
def expert_iter_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    allow_config_change: AllowOpt = False,
    quiet: QuietOpt = False,
    nproc: NprocOpt = 1,
) -> None:
    """Expert iteration: rounds of sampling, keeping correct completions, SFT on them, eval ([expert_iter])."""
    from mathrl.runs.train import run_expert_iteration

    if not relaunch(nproc):
        run_expert_iteration(config, sets, out, resume, allow_config_change, quiet)


@app.command("sft", epilog=EPILOG)
def sft_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="prompt/response or messages JSONL, or a shard dir from sft-pretokenize (default: the task's own solutions)."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="SFT steps (default sft.steps).")] = None,
    resume: ResumeOpt = False,
    allow_config_change: AllowOpt = False,
    quiet: QuietOpt = False,
    nproc: NprocOpt = 1,
) -> None:
    """Supervised fine-tuning (response-only loss); same checkpoint format as RL."""
    from mathrl.runs.train import run_sft

    if not relaunch(nproc):
        run_sft(config, sets, out, data, steps, resume, allow_config_change, quiet)


@app.command("sft-pretokenize", epilog=EPILOG)
def sft_pretokenize_cmd(
    data: Annotated[Path, typer.Option(help="prompt/response or messages JSONL to tokenise.")],
    out: Annotated[Path, typer.Option(help="New directory for the shards and meta.json.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model whose tokenizer to use (default model.path; not 'scratch')."),
    ] = None,
    shard_rows: Annotated[int, typer.Option(help="Rows per shard file.")] = 4096,
    quiet: QuietOpt = False,
) -> None:
    """Tokenise SFT pairs once into fixed-length shards (sft.max_len) that `mathrl sft --data DIR` streams."""
    from mathrl.runs.train import pretokenize

    pretokenize(config, sets, data, out, model, shard_rows, quiet)
