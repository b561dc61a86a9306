"""The `mathrl` command line: one small module per command group, each command thin (the work
is in mathrl.runs and the layers below; heavy imports happen inside the commands).

    app.py        the typer app and main() (one-line errors, exit codes)
    options.py    option types shared by every command
    basic.py      env, config keys|show, data prepare, score
    train.py      train, expert-iter, sft, sft-pretokenize
    buffer.py     rollout, train-buffer, loop
    eval.py       eval, probe
    report.py     report, compare
    quickstart.py quickstart, config presets
    export.py     export (a checkpoint as a plain HF dir, LoRA merged)
    convert.py    convert (a model as an mlx-lm dir, float or quantised, and back to HF)
    serve.py      serve (an OpenAI-compatible HTTP server on the rollout engine)
    distill.py    distill (teacher traces from an OpenAI-compatible endpoint, as SFT pairs)
"""

import importlib

from mathrl.cli.app import app, main

# Importing a command module registers its commands; `mathrl --help` lists them in this order.
COMMAND_MODULES = (
    "quickstart",
    "train",
    "buffer",
    "eval",
    "report",
    "export",
    "convert",
    "serve",
    "distill",
    "basic",
)
for _name in COMMAND_MODULES:
    importlib.import_module(f"mathrl.cli.{_name}")

__all__ = ["app", "main"]
