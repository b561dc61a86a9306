"""`mathrl quickstart` (the first run, from anywhere) and `mathrl config presets`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mathrl.cli.app import app, config_app
from mathrl.cli.options import EPILOG, AllowOpt, QuietOpt, ResumeOpt, SetOpt
from mathrl.config.presets import describe, list_presets, resolve_config


@app.command("quickstart", epilog=EPILOG)
def quickstart_cmd(
    sets: SetOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path(
        "runs/quickstart"
    ),
    resume: ResumeOpt = False,
    allow_config_change: AllowOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train the offline Countdown quickstart: `mathrl train --config quickstart` (minutes on a CPU)."""
    from mathrl.cli.train import train_cmd  # imported here so quickstart heads `mathrl --help`

    train_cmd(
        config=resolve_config("quickstart"),
        sets=sets,
        out=out,
        resume=resume,
        allow_config_change=allow_config_change,
        quiet=quiet,
    )


@config_app.command("presets")
def config_presets() -> None:
    """List the shipped presets (names for --config, e.g. -c countdown/smoke)."""
    names = list_presets()
    width = max(map(len, names))
    for name in names:
        typer.echo(f"{name:<{width}}  {describe(name)}")
