"""Option types and texts shared by every CLI command module (cli, cli_eval, cli_report).

One definition per convention (--config/-c, --set/-s, --out/-o, --resume,
--allow-config-change, --quiet/-q), so `--help` reads the same in every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML or YAML config file (e.g. configs/countdown/smoke.toml)."
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        help="Override one config key, e.g. --set train.lr=5e-7 (repeatable; `mathrl config keys` lists every key).",
    ),
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Output directory (default runs/<UTC stamp>_<git sha>)."),
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue from the newest complete checkpoint in --out.")
]
AllowOpt = Annotated[
    bool,
    typer.Option(
        "--allow-config-change", help="Resume even if the config or dataset fingerprint changed."
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option("--quiet", "-q", help="No progress bars or per-step console lines (tables stay)."),
]
EPILOG = (
    "Every config key can be set with --set; list them with `mathrl config keys`. "
    "Add --debug anywhere for a traceback on errors."
)
