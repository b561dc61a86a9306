"""`mathrl export`: a checkpoint as a standalone HF model dir (LoRA adapters merged)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mathrl.cli.app import app
from mathrl.errors import MathrlError


@app.command("export")
def export_cmd(
    ckpt: Annotated[
        str,
        typer.Argument(
            help="A checkpoint dir (holding model/), its model/ dir, or a run dir (its newest checkpoint)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="New dir for the model and tokenizer (from_pretrained reads it)."
        ),
    ],
    merge: Annotated[
        bool,
        typer.Option(
            "--merge",
            help="Fold LoRA adapters into the base weights (peft's merge_and_unload); "
            "a LoRA checkpoint needs it.",
        ),
    ] = False,
) -> None:
    """Write CKPT's model as a plain HF dir (safetensors + tokenizer); print its path."""
    from mathrl.model_source import resolve_model
    from mathrl.models.export import export_model
    from mathrl.models.lora import is_model_dir
    from mathrl.run_setup import quiet_libraries

    quiet_libraries()
    p = Path(ckpt).expanduser()
    if is_model_dir(p / "model"):
        source = p / "model"
    elif is_model_dir(p):
        source = p
    elif p.is_dir():
        source = Path(resolve_model(ckpt))  # a run dir: its newest checkpoint
    else:
        raise MathrlError(f"{ckpt}: not a checkpoint, a model dir or a run dir")
    typer.echo(str(export_model(source, out, merge)))
