"""`mathrl report` and `mathrl compare`: plots and an HTML report from run directories."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report_cmd(
    run_dir: Annotated[
        Path, typer.Argument(help="Run directory holding metrics.jsonl (and rollouts.jsonl).")
    ],
    prompt_id: Annotated[
        str | None,
        typer.Option(
            "--prompt-id",
            help="Also plot this prompt's accuracy over training (an id in rollouts.jsonl).",
        ),
    ] = None,
) -> None:
    """Write RUN_DIR/plots/*.png and a self-contained RUN_DIR/report.html; print its path."""
    from mathrl.report.html import write_report

    typer.echo(str(write_report(run_dir, prompt_id=prompt_id)))


def compare_cmd(
    run_a: Annotated[Path, typer.Argument(help="First run directory.")],
    run_b: Annotated[Path, typer.Argument(help="Second run directory.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory for the overlay PNGs and compare.html.")
    ],
) -> None:
    """Overlay the metric curves two runs have in common; print the written files."""
    from mathrl.report.html import compare_runs

    for path in compare_runs(run_a, run_b, out):
        typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add the `report` and `compare` subcommands to the mathrl CLI."""
    app.command("report")(report_cmd)
    app.command("compare")(compare_cmd)
