"""Option types and texts shared by every CLI command module.

One definition per convention (--config/-c, --set/-s, --out/-o, --resume,
--allow-config-change, --quiet/-q), so `--help` reads the same in every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def resolve_config_option(value: Path | None) -> Path | None:
    """--config: an existing file, or a shipped preset's name (`-c countdown/smoke`)."""
    from mathrl.config.presets import resolve_config

    return None if value is None else resolve_config(value)


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML/YAML file or a preset name (mathrl config presets lists them), e.g. countdown/smoke.",
        callback=resolve_config_option,
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
