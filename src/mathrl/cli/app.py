"""The typer application and the entry point: MathrlError becomes one line, not a traceback."""

from __future__ import annotations

import os
import shlex
import sys
import time
from typing import NoReturn

import click
import torch
import typer

from mathrl import dist
from mathrl.errors import ConfigError, DataError, MathrlError
from mathrl.stopping import Stopped, message

app = typer.Typer(
    name="mathrl",
    help="RL post-training of language models on verifiable math (GSM8K, Countdown).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Prepare datasets.", no_args_is_help=True)
config_app = typer.Typer(
    help="Inspect configuration keys and resolved configs.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")


def _out_of_memory(exc: BaseException, debug: bool) -> NoReturn:
    """An OOM mid-step: nothing of that step was written; say how to go on, exit 3."""
    if debug:
        raise exc
    typer.echo(
        f"error: out of memory ({type(exc).__name__}: {str(exc)[:200]}). Nothing from the "
        "failed step was written; lower rollout.batch_size / train.micro_batch_size and "
        "continue from the last checkpoint with --resume",
        err=True,
    )
    raise SystemExit(3) from None


def _command() -> list[str]:
    """The command line that started this run, for the resume line: `mathrl --nproc N ...`
    passes it to its ranks; a rank of a user's own torchrun names torchrun's options."""

    if os.environ.get("MATHRL_COMMAND"):
        return shlex.split(os.environ["MATHRL_COMMAND"])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return ["torchrun", "[the same options]", "-m", "mathrl", *sys.argv[1:]]
    return ["mathrl", *sys.argv[1:]]


SILENT_RANK_EXIT_DELAY_S = 3.0
"""How long a rank that leaves an error to rank 0 waits before exiting (torchrun stops
the other ranks as soon as one exits non-zero)."""


def main() -> None:
    """Entry point: MathrlError becomes one line on stderr and exit code 2 (unless --debug)."""
    debug = "--debug" in sys.argv[1:] or os.environ.get("MATHRL_DEBUG") == "1"
    sys.argv = [a for a in sys.argv if a != "--debug"]
    if debug:  # the ranks `--nproc` starts inherit it (their argv lacks --debug)
        os.environ["MATHRL_DEBUG"] = "1"
    try:
        # Without standalone mode click returns what would have been the exit code: typer
        # turns a KeyboardInterrupt into Exit(130), which comes back here as 130.
        code = app(standalone_mode=False)
    except Stopped as stop:
        if dist.speaks():  # every rank stopped at the same step; rank 0 says so
            typer.echo(message(stop, _command()), err=True)
        raise SystemExit(stop.exit_code) from None
    except MathrlError as exc:
        if debug:
            raise
        # rank 0's error on every rank (on_main), or a config or data error every rank
        # found in the same inputs: rank 0 prints it; a rank's own error (a dead peer)
        # prints there
        same = getattr(exc, "shared", False) or isinstance(exc, ConfigError | DataError)
        if dist.speaks() or not same:
            typer.echo(f"error: {exc}", err=True)
        elif dist.launched():
            # rank 0 prints it: exiting first would make torchrun stop rank 0 before it does
            time.sleep(SILENT_RANK_EXIT_DELAY_S)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except MemoryError as exc:  # torch.OutOfMemoryError subclasses RuntimeError, see below
        _out_of_memory(exc, debug)
    except Exception as exc:  # click usage errors and the like
        if isinstance(exc, torch.OutOfMemoryError):
            _out_of_memory(exc, debug)
        if isinstance(exc, click.exceptions.Exit):
            raise SystemExit(exc.exit_code) from None
        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        if isinstance(exc, click.exceptions.Abort):
            raise SystemExit(1) from None
        if debug:
            raise
        typer.echo(
            f"error: {type(exc).__name__}: {exc} (run with --debug for a traceback)", err=True
        )
        raise SystemExit(1) from None
    if code == 130:
        typer.echo("interrupted", err=True)
    if isinstance(code, int) and not isinstance(code, bool) and code != 0:
        raise SystemExit(code)
