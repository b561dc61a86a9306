"""Option types and texts shared by every CLI command module.

One definition per convention (--config/-c, --set/-s, --out/-o, --resume,
--allow-config-change, --quiet/-q), so `--help` reads the same in every command.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

from mathrl import dist


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
NprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Data-parallel ranks on this machine: relaunches the command through torchrun's "
        "launcher (the same as torchrun --standalone --nproc-per-node N -m mathrl ...). "
        "Several machines: run torchrun yourself (docs/many_gpus.md).",
    ),
]


def relaunch(nproc: int) -> bool:
    """Run this command again as `nproc` ranks under torch.distributed.run, unless it is one
    of them already (or nproc is 1); True when it ran (the ranks did the work)."""

    if nproc <= 1 or dist.launched():
        return False

    argv = sys.argv[1:]
    keep = [
        a
        for i, a in enumerate(argv)
        if not (a == "--nproc" or a.startswith("--nproc=") or (i and argv[i - 1] == "--nproc"))
    ]
    # A signal reaches the ranks (forwarded by the launcher); they stop at the step boundary
    # and write a checkpoint, which may take a step's time: not the launcher's 30 s default.
    grace = ["--shutdown-timeout", os.environ.get("MATHRL_SHUTDOWN_TIMEOUT", "3600")]
    args = parse_args(["--standalone", f"--nproc-per-node={nproc}", *grace, "-m", "mathrl"])
    # set after parsing: torchrun's parser would read e.g. `--n 4` as an abbreviation of
    # one of its own options
    args.training_script_args = keep
    os.environ["MATHRL_COMMAND"] = shlex.join(["mathrl", *argv])  # for the resume line
    try:
        run(args)
    except ChildFailedError as e:  # each rank printed its own error line already
        codes = [f.exitcode for f in e.failures.values()]
        raise SystemExit(next((c for c in codes if c and c > 0), 1)) from None
    except SignalException as e:  # the ranks said where they stopped
        raise SystemExit(128 + int(e.sigval)) from None
    return True


EPILOG = (
    "Every config key can be set with --set; list them with `mathrl config keys`. "
    "Add --debug anywhere for a traceback on errors."
)

MODEL_HELP = (
    "A checkpoint dir (holding model/), a run dir (its newest checkpoint), an HF dir or hub id, "
    "a .gguf file, 'smollm2-135m-instruct' or 'scratch' (default: model.path)."
)
