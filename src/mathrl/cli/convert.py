"""`mathrl convert`: a model as an mlx-lm dir (float or quantised), or an MLX dir back as HF."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from mathrl.cli.app import app
from mathrl.errors import MathrlError


class Target(StrEnum):
    mlx = "mlx"
    hf = "hf"


ToOpt = Annotated[
    Target,
    typer.Option(
        "--to",
        help="mlx: mlx-lm's format (mlx_lm.load / mlx_lm.generate read it); hf: float "
        "safetensors + config + tokenizer (transformers' from_pretrained reads it).",
    ),
]
ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="--to mlx: a checkpoint dir (holding model/), a run dir (its newest "
        "checkpoint), an HF dir or hub id, a .gguf file or 'smollm2-135m-instruct'. "
        "--to hf: an MLX dir (or a checkpoint / run dir holding one).",
    ),
]
OutOpt = Annotated[
    Path,
    typer.Option("--out", "-o", help="New (or empty) dir to write; see --force."),
]
BitsOpt = Annotated[
    int | None,
    typer.Option(
        "--bits",
        help="--to mlx: quantise the linear and embedding layers to 2, 3, 4, 5, 6 or 8 bits "
        "(mlx-lm's affine quantisation); without it the MLX model stays float.",
    ),
]
GroupSizeOpt = Annotated[
    int,
    typer.Option(
        "--group-size",
        help="--to mlx with --bits: weights sharing one scale and bias (32, 64 or 128); "
        "smaller is more accurate and larger.",
    ),
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="Float dtype of the weights (and of the quantisation scales): float32, "
        "bfloat16 or float16. auto: the source's for --to mlx, float32 for --to hf.",
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option("--force", help="Replace a non-empty --out (only once the new one is complete)."),
]


@app.command("convert")
def convert_cmd(
    to: ToOpt,
    model: ModelOpt,
    out: OutOpt,
    bits: BitsOpt = None,
    group_size: GroupSizeOpt = 64,
    dtype: DtypeOpt = "auto",
    force: ForceOpt = False,
) -> None:
    """Convert a model to mlx-lm's format (--bits: quantised) or an MLX model back to HF."""
    from mathrl.model_source import resolve_model
    from mathrl.models import mlx_convert
    from mathrl.run_setup import quiet_libraries

    quiet_libraries()
    if to is Target.hf and bits is not None:
        raise MathrlError("--bits applies to --to mlx; --to hf always writes float weights")
    if model == "scratch":
        raise MathrlError("--model scratch: build a model first (mathrl train writes one)")
    source = resolve_model(model)
    if to is Target.mlx:
        result = mlx_convert.to_mlx(source, out, bits, group_size, dtype, force)
    else:
        result = mlx_convert.to_hf(source, out, dtype, force)
    typer.echo(result.summary())
