"""`mathrl eval` and `mathrl probe`: thin commands over mathrl.runs.evaluate (imported in
each command's body: it loads transformers, 0.85 s measured, which `--help` should not wait for)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from mathrl import dist
from mathrl.cli.app import app
from mathrl.cli.options import EPILOG, MODEL_HELP, ConfigOpt, OutOpt, QuietOpt, SetOpt
from mathrl.loggers import console, say


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def print_table(title: str, summaries: dict[str, dict[str, Any]]) -> None:
    """Metrics as rows, models as columns; `key_lo`/`key_hi` shown as a 95% CI beside `key`."""
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


@app.command("eval", epilog=EPILOG)
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
    suite: Annotated[
        str | None,
        typer.Option(
            help="Run a named eval suite instead (default: GSM8K test, Countdown 3 and 4, "
            "generated arithmetic; synthetic: the same without GSM8K; math: GSM8K, MATH-500, "
            "AIME 2024/2025, AMC 2023, each also alone by name): one table of strict and "
            "lenient pass@1 with CIs (avg@n and pass@k where a row samples), rows tasks, "
            "columns models, as suite.json, suite.md and suite.png in --out, each row's "
            "examples under <task>/. --limit sets problems per task."
        ),
    ] = None,
) -> None:
    """Greedy pass@1 and sampled mean@n / pass@k / maj@k of one or more models, side by side."""
    from mathrl.checkpoint import default_run_dir
    from mathrl.runs.evaluate import run_eval, run_suite

    if suite is not None:
        extra = [f"eval.limit={limit}"] if limit is not None else []
        where = out or default_run_dir()
        table, paths = run_suite(config, list(sets or []) + extra, where, model, suite, quiet)
        typer.echo(paths["md"].read_text())
        say(f"wrote suite.json, suite.md and suite.png to {where}")
        return
    task, rows, out_dir = run_eval(config, sets, out, model, split, limit, quiet)
    if not dist.speaks():  # under torchrun: rank 0 prints the table
        return
    print_table(f"{task.name} {split}", {r["label"]: r["summary"] for r in rows})
    where = "eval_table.json and one subdir per model" if len(rows) > 1 else "eval_summary.json"
    say(f"wrote {where} (+ eval_examples.jsonl) to {out_dir}")


@app.command("probe", epilog=EPILOG)
def probe_cmd(
    model: Annotated[str | None, typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Split to probe (default: train, whose pass rates data.keep_pass_rate "
            "filters; with --suite: test, since a suite's tasks generate no training items)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="Prompts (seeded sample); 0 = all.")] = 256,
    n: Annotated[
        int,
        typer.Option(
            "--n",
            "--samples",
            help="Samples per prompt (>= 2); under torchrun write --samples (its parser "
            "takes --n for one of its own options).",
        ),
    ] = 16,
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
    suite: Annotated[
        str | None,
        typer.Option(
            help="Probe every task of a named eval suite (mathrl eval --suite's names, e.g. "
            "synthetic) instead of the config's task: one table with greedy and sampled "
            "pass rates, the share of informative groups and a verdict per task (too hard, "
            "learnable, solved), as probe.json, probe.md and probe.png in --out; each "
            "task's pass_rates.jsonl in --out/<task>/."
        ),
    ] = None,
) -> None:
    """Sample n completions per prompt (and one greedy) and say whether RL would get a
    learning signal: for the config's task, or for every task of an eval suite."""
    from mathrl.checkpoint import default_run_dir
    from mathrl.eval.probe import FORMAT_ONLY, ProbeThresholds, suite_verdict
    from mathrl.runs.evaluate import run_probe, run_probe_suite

    thresholds = ProbeThresholds(min_acc, max_acc, min_var)
    if suite is not None:
        where = out or default_run_dir()
        args = (split or "test", limit, n, group_size, temperature, thresholds, quiet)
        table, paths = run_probe_suite(config, sets, where, model, suite, *args)
        typer.echo(paths["md"].read_text())
        say(f"wrote probe.json, probe.md and probe.png to {where}")
        return
    split = split or "train"
    task, result, out_dir = run_probe(
        config, sets, out, model, split, limit, n, group_size, temperature, thresholds, quiet
    )
    if not dist.speaks():  # rank 0 prints the table and the verdict
        return
    shown = {k: v for k, v in result.stats.items() if k not in ("verdict", "verdict_reason")}
    print_table(f"probe {task.name} {split}", {"value": shown})
    console.print(
        f"verdict: {result.stats['verdict']} ({result.stats['verdict_reason']})",
        highlight=False,
        soft_wrap=True,
    )
    word, reason = suite_verdict(result.stats, thresholds)
    if word == FORMAT_ONLY:
        console.print(f"but {word}: {reason}", highlight=False, soft_wrap=True)
    say(f"wrote probe_summary.json, pass_rates.jsonl and probe.md / .json / .png to {out_dir}")
