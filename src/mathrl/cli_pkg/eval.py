"""`mathrl eval` and `mathrl probe`: thin commands over eval/evaluate.py and eval/probe.py.

cli.py calls `register(app)`; this module never imports mathrl.cli (no import cycle), so
the shared option types come from cli_options.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from mathrl.cli_options import EPILOG, ConfigOpt, OutOpt, QuietOpt, SetOpt
from mathrl.errors import MathrlError

MODEL_HELP = (
    "A checkpoint dir (holding model/), a run dir (its newest checkpoint), an HF dir or hub id, "
    "a .gguf file, 'smollm2-135m-instruct' or 'scratch' (default: model.path)."
)


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


def resolve_model(path: str) -> str:
    """What load_model should read for a --model argument (see MODEL_HELP)."""
    from mathrl.checkpoint import latest_checkpoint
    from mathrl.models.loading import NAMED_MODELS

    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "model" / "config.json").is_file():
            return str(p / "model")
        for run_dir in (p, p / "warmup_sft"):
            if (run_dir / "checkpoints").is_dir():
                latest = latest_checkpoint(run_dir)
                if latest is not None:
                    return str(latest / "model")
        if (p / "config.json").is_file():
            return str(p)
        raise MathrlError(f"{path}: not a checkpoint, a run dir with a checkpoint, or an HF dir")
    if path in NAMED_MODELS or path == "scratch":
        return path
    if p.suffix == ".gguf" or path.startswith(("/", "./", "../", "~")) or p.exists():
        if not p.is_file() or p.suffix != ".gguf":
            raise MathrlError(f"model not found: {path}")
        return str(p)
    return path  # a hub id


def _load_model(cfg: Any, task: Any, path: str, out_dir: Path) -> tuple[Any, Any]:
    """Model and tokenizer for a --model argument; 'scratch' builds one into out_dir."""
    from mathrl.models.loading import load_model
    from mathrl.runtime import load_policy

    source = resolve_model(path)
    if source == "scratch":
        scratch_cfg = copy.deepcopy(cfg)
        scratch_cfg.model.path = "scratch"
        return load_policy(scratch_cfg, task, out_dir)
    return load_model(
        source, dtype=cfg.model.dtype, device=cfg.model.device, autocast=cfg.model.autocast
    )


def _labels(paths: list[str]) -> list[str]:
    """Short, unique, filesystem-safe names for the models (used as subdirs and columns)."""
    out: list[str] = []
    for path in paths:
        p = Path(path.rstrip("/"))
        name = f"{p.parent.name}_{p.name}" if p.name.startswith("step_") else p.name or path
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
        label, i = base, 2
        while label in out:
            label, i = f"{base}-{i}", i + 1
        out.append(label)
    return out


def _setup(
    config: Path | None, sets: list[str] | None, out: Path | None, models: list[str] | None
) -> tuple[Any, Any, list[str], Path]:
    """Config, task, model paths (checked) and the output dir, with the resolved config in it."""
    from mathrl.checkpoint import default_run_dir
    from mathrl.config import dumps_toml, load_config
    from mathrl.data import make_task
    from mathrl.io import atomic_write_text
    from mathrl.runtime import quiet_libraries, set_seed, set_threads

    cfg = load_config(config, sets or [])
    paths = models or [cfg.model.path]
    for path in paths:
        resolve_model(path)  # fail on a bad path before writing anything
    quiet_libraries()
    set_threads(cfg.model.threads)
    set_seed(cfg.seed)
    task = make_task(cfg)
    out_dir = out or default_run_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.toml", dumps_toml(cfg))
    return cfg, task, paths, out_dir


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_table(title: str, summaries: dict[str, dict[str, Any]]) -> None:
    """Metrics as rows, models as columns; `key_lo`/`key_hi` shown as a 95% CI beside `key`."""
    from rich.table import Table

    from mathrl.loggers import console

    table = Table(title=title)
    table.add_column("metric")
    for label in summaries:
        table.add_column(label, justify="right")
    keys: list[str] = []
    for s in summaries.values():
        keys += [k for k in s if k not in keys and not k.endswith(("_lo", "_hi"))]
    for key in keys:
        cells = []
        for s in summaries.values():
            cell = _fmt(s.get(key, "-"))
            if f"{key}_lo" in s:
                cell += f" [{s[f'{key}_lo']:.3f}, {s[f'{key}_hi']:.3f}]"
            cells.append(cell)
        table.add_row(key, *cells)
    console.print(table)


def eval_cmd(
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help=MODEL_HELP + " Repeatable.")
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    split: Annotated[str, typer.Option(help="Split to evaluate: test or val.")] = "test",
    limit: Annotated[
        int | None, typer.Option(help="Problems (seeded sample); 0 = all (default eval.limit).")
    ] = None,
    out: OutOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Greedy pass@1 and sampled mean@n / pass@k / maj@k of one or more models, side by side."""
    from mathrl.eval.evaluate import eval_kwargs, evaluate, write_eval
    from mathrl.io import atomic_write_text
    from mathrl.sampling import rollout_engine

    cfg, task, paths, out_dir = _setup(config, sets, out, model)
    kwargs = eval_kwargs(cfg)
    if limit is not None:
        kwargs["limit"] = limit
    summaries: dict[str, dict[str, Any]] = {}
    rows = []
    for path, label in zip(paths, _labels(paths), strict=True):
        m, tok = _load_model(cfg, task, path, out_dir)
        engine = rollout_engine(cfg, m, tok, batch_size=kwargs["batch_size"])
        result = evaluate(m, tok, task, split, progress=not quiet, engine=engine, **kwargs)
        del engine
        del m
        result.summary["model"] = path
        sub = out_dir / label if len(paths) > 1 else out_dir
        write_eval(result, sub)
        summaries[label] = result.summary
        rows.append({"label": label, "model": path, "dir": str(sub), "summary": result.summary})
    print_table(f"{task.name} {split}", summaries)
    if len(paths) > 1:
        table = json.dumps({"models": rows}, indent=2, allow_nan=False) + "\n"
        atomic_write_text(out_dir / "eval_table.json", table)
    where = "eval_table.json and one subdir per model" if len(paths) > 1 else "eval_summary.json"
    _say(f"wrote {where} (+ eval_examples.jsonl) to {out_dir}")


def probe_cmd(
    model: Annotated[str | None, typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    split: Annotated[str, typer.Option(help="Split to probe (train for filtering).")] = "train",
    limit: Annotated[int, typer.Option(help="Prompts (seeded sample); 0 = all.")] = 256,
    n: Annotated[int, typer.Option(help="Samples per prompt (>= 2).")] = 16,
    group_size: Annotated[
        int | None,
        typer.Option(help="G of the informative-group estimate (default train.group_size)."),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help="Sampling temperature (default rollout.temperature).")
    ] = None,
    min_acc: Annotated[float, typer.Option(help="'too hard' below this accuracy.")] = 0.10,
    max_acc: Annotated[float, typer.Option(help="'too easy' above this accuracy.")] = 0.80,
    min_var: Annotated[float, typer.Option(help="Mean reward variance needed to train.")] = 0.05,
    out: OutOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Sample n completions per prompt and say whether RL would get a learning signal."""
    from mathrl.eval.probe import ProbeThresholds, probe
    from mathrl.loggers import console
    from mathrl.sampling import rollout_engine

    cfg, task, paths, out_dir = _setup(config, sets, out, [model] if model else None)
    m, tok = _load_model(cfg, task, paths[0], out_dir)
    result = probe(
        m,
        tok,
        task,
        split=split,
        limit=limit,
        n=n,
        group_size=group_size or cfg.train.group_size,
        temperature=temperature if temperature is not None else cfg.rollout.temperature,
        max_new_tokens=cfg.rollout.max_new_tokens,
        batch_size=cfg.rollout.batch_size,
        seed=cfg.seed,
        reward_timeout_s=cfg.train.reward_timeout_s,
        thresholds=ProbeThresholds(min_acc, max_acc, min_var),
        out_dir=out_dir,
        progress=not quiet,
        engine=rollout_engine(cfg, m, tok),
    )
    shown = {k: v for k, v in result.stats.items() if k not in ("verdict", "verdict_reason")}
    print_table(f"probe {task.name} {split}", {"value": shown})
    console.print(
        f"verdict: {result.stats['verdict']} ({result.stats['verdict_reason']})",
        highlight=False,
        soft_wrap=True,
    )
    _say(f"wrote probe_summary.json and pass_rates.jsonl to {out_dir}")


def register(app: typer.Typer) -> None:
    """Add the `eval` and `probe` commands to `app` (idempotent)."""
    names = {c.name for c in app.registered_commands}
    if "eval" not in names:
        app.command("eval", epilog=EPILOG)(eval_cmd)
    if "probe" not in names:
        app.command("probe", epilog=EPILOG)(probe_cmd)
