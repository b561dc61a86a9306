"""The commands that read models and write tables: eval, eval suites, probe and score."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mathrl import dist
from mathrl.data import make_task
from mathrl.errors import ConfigError, DataError
from mathrl.eval.evaluate import eval_kwargs, evaluate, write_eval
from mathrl.eval.probe import ProbeResult, ProbeThresholds, probe, table_row, write_table
from mathrl.eval.suite import SUITES, cell, row_sets, sample_ks, write_suite
from mathrl.io import atomic_write_text, read_jsonl, write_jsonl
from mathrl.loggers import say
from mathrl.model_source import load_model_arg, model_labels, resolve_model
from mathrl.rewards import RewardPool
from mathrl.runs.start import load_run_config, open_eval_run, prepare_backend, start_process
from mathrl.tasks import RECORD_CALLS, Task

ONE_TASK = ("task.mixture=[]",)
"""A suite row is one task, even when the run's config trains a mixture."""


def suite_row(base: Any, st: Any) -> tuple[Any, Task | tuple[str, str | None]]:
    """(config, task) of one suite row, or (config, (why, how to get it)) when its data or
    grader is missing (GSM8K offline, no math-verify)."""
    cfg = load_run_config(base, [*ONE_TASK, *row_sets(st, base)])
    try:
        return cfg, make_task(cfg)
    except (DataError, ConfigError) as exc:
        why, _, how = str(exc).partition(": ")
        return cfg, (why[:100], how or None)


def run_eval(
    config: Any,
    sets: list[str] | None,
    out: Path | None,
    models: list[str] | None,
    split: str,
    limit: int | None,
    quiet: bool = False,
) -> tuple[Task, list[dict[str, Any]], Path]:
    """`mathrl eval`: each model evaluated on `split`, written under `out` (one subdir per
    model when several); (task, [{label, model, dir, summary}], out dir)."""
    with dist.joined():  # under torchrun the ranks split the problems; rank 0 writes
        cfg, task, paths, out_dir = open_eval_run(config, sets, out, models, ranks=True)
        kwargs = eval_kwargs(cfg)
        if limit is not None:
            kwargs["limit"] = limit
        rows = []
        for path, label in zip(paths, model_labels(paths), strict=True):
            m, tok = load_model_arg(cfg, task, path, out_dir)
            result = evaluate(m, tok, task, split, progress=not quiet, cfg=cfg, **kwargs)
            del m
            result.summary["model"] = path
            sub = out_dir / label if len(paths) > 1 else out_dir
            dist.on_main(lambda r=result, d=sub: write_eval(r, d))
            summary = result.summary
            rows.append({"label": label, "model": path, "dir": str(sub), "summary": summary})
        if len(paths) > 1:
            table = json.dumps({"models": rows}, indent=2, allow_nan=False) + "\n"
            dist.on_main(lambda: atomic_write_text(out_dir / "eval_table.json", table))
    return task, rows, out_dir


def run_suite(
    config: Any,
    sets: list[str] | None,
    out: Path,
    models: list[str] | None,
    suite: str,
    quiet: bool = False,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """An eval suite (mathrl.eval.suite.SUITES): every task of it on every model, on its
    test split (greedy, plus eval.n samples where the row samples); one table written as
    suite.json / .md / .png into `out`, each row's examples under out/<task>[/<model>]."""
    tasks = SUITES.get(suite)  # an unknown name is a ConfigError naming the closest
    base = load_run_config(config, sets, quiet)
    paths = models or [base.model.path]
    for path in paths:
        resolve_model(path)  # fail on a bad path before evaluating anything
    prepare_backend(base)
    start_process(base)
    labels = model_labels(paths)
    rows: list[dict[str, Any]] = []
    built: list[tuple[Any, Any]] = []  # (task, its config), or (None, (why, how to get it))
    for st in tasks:
        cfg, task = suite_row(base, st)
        rows.append({"task": st.label, "overrides": list(st.overrides), "n": 0, "cells": {}})
        if cfg.eval.n > 1:
            rows[-1].update(samples=cfg.eval.n, temperature=cfg.eval.temperature)
        built.append((None, task) if isinstance(task, tuple) else (task, cfg))
    for path, label in zip(paths, labels, strict=True):
        model = tok = None
        for row, (task, cfg) in zip(rows, built, strict=True):
            if task is None:
                row["cells"][label] = cell(None, *cfg)
                continue
            if model is None:
                model, tok = load_model_arg(base, task, path, out)
            kwargs = {**eval_kwargs(cfg), "ks": sample_ks(cfg)}
            result = evaluate(model, tok, task, "test", progress=not quiet, cfg=cfg, **kwargs)
            result.summary["model"] = path
            write_eval(result, out / row["task"] / label if len(paths) > 1 else out / row["task"])
            row["n"] = result.summary["n_problems"]
            row["cells"][label] = cell(result.summary, None)
        del model
    table = {
        "suite": suite,
        "models": [{"label": lb, "model": p} for lb, p in zip(labels, paths, strict=True)],
        "rows": rows,
    }
    return table, write_suite(table, out)


def run_probe(
    config: Any,
    sets: list[str] | None,
    out: Path | None,
    model: str | None,
    split: str,
    limit: int,
    n: int,
    group_size: int | None,
    temperature: float | None,
    thresholds: ProbeThresholds,
    quiet: bool = False,
) -> tuple[Task, ProbeResult, Path]:
    """`mathrl probe`: n samples per prompt (and one greedy), whether RL would get a
    learning signal; probe_summary.json, pass_rates.jsonl and the one-row probe table."""
    with dist.joined():  # under torchrun the ranks split the prompts; rank 0 writes
        cfg, task, paths, out_dir = open_eval_run(
            config, sets, out, [model] if model else None, ranks=True
        )
        m, tok = load_model_arg(cfg, task, paths[0], out_dir)
        result = _probe(
            cfg, m, tok, task, split, limit, n, group_size, temperature, thresholds, out_dir, quiet
        )
        table = _table(paths[0], split, n, [table_row(task.name, result.stats, thresholds)])
        dist.on_main(lambda: write_table(table, out_dir))
    return task, result, out_dir


def run_probe_suite(
    config: Any,
    sets: list[str] | None,
    out: Path,
    model: str | None,
    suite: str,
    split: str,
    limit: int,
    n: int,
    group_size: int | None,
    temperature: float | None,
    thresholds: ProbeThresholds,
    quiet: bool = False,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """`mathrl probe --suite NAME`: every task of an eval suite probed on one model (each
    row's files in out/<task>/), one table as probe.json / .md / .png in `out`."""
    tasks = SUITES.get(suite)  # an unknown name is a ConfigError naming the closest
    base = load_run_config(config, sets, quiet)
    path = model or base.model.path
    resolve_model(path)  # fail on a bad path before probing anything
    prepare_backend(base)
    start_process(base)
    rows: list[dict[str, Any]] = []
    m = tok = None
    for st in tasks:
        cfg, task = suite_row(base, st)
        if isinstance(task, tuple):  # e.g. GSM8K offline: keep the row, say why
            rows.append({"task": st.label, "error": task[0]})
            continue
        if m is None:
            m, tok = load_model_arg(base, task, path, out)
        if not quiet:
            say(f"probe {st.label}")
        result = _probe(
            cfg,
            m,
            tok,
            task,
            split,
            limit,
            n,
            group_size,
            temperature,
            thresholds,
            out / st.label,
            quiet,
        )
        rows.append(table_row(st.label, result.stats, thresholds))
    table = _table(path, split, n, rows)
    table["suite"] = suite
    return table, write_table(table, out)


def _probe(
    cfg: Any,
    model: Any,
    tok: Any,
    task: Task,
    split: str,
    limit: int,
    n: int,
    group_size: int | None,
    temperature: float | None,
    thresholds: ProbeThresholds,
    out_dir: Path,
    quiet: bool,
) -> ProbeResult:
    return probe(
        model,
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
        thresholds=thresholds,
        out_dir=out_dir,
        progress=not quiet,
        cfg=cfg,
        greedy=True,
        prompts_per_step=cfg.train.prompts_per_step,
    )


def _table(model: str, split: str, n: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    note = f"split {split}; {n} samples per prompt at the rollout temperature, one greedy"
    return {"model": model, "split": split, "n": n, "note": note, "rows": rows}


def rescore_file(
    task: str,
    input: Path,
    output: Path,
    prompt_style: str,
    scheme: str,
    timeout: float,
    grader: str = "numeric",
) -> list[dict[str, Any]]:
    """`mathrl score`: every record of `input` (its 'completion' and the task's fields)
    scored with the task's reward into `output`."""
    record_call = RECORD_CALLS.get(task)  # an unknown task names the closest
    rows = read_jsonl(input)
    calls = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r.get("completion"), str):
            raise DataError(f"{input}: record {i} has no string 'completion'")
        try:
            calls.append(record_call(r, prompt_style, scheme, grader))
        except ValueError as exc:
            raise DataError(f"{input}: record {i} {exc}") from None
    fns = {fn for fn, _, _ in calls}  # one task: one reward function for every record
    items = [(r["completion"], *args) for r, (_, args, _) in zip(rows, calls, strict=True)]
    with RewardPool(timeout_s=timeout, workers=1) as pool:
        results = pool.map(fns.pop(), items) if items else []
    return _scored_rows(rows, results, [gold for _, _, gold in calls], output)


def _scored_rows(
    rows: list[dict[str, Any]], results: list[Any], golds: list[str], output: Path
) -> list[dict[str, Any]]:
    out_rows = [
        {
            **r,
            "reward": res.reward,
            "correct": res.correct,
            "correct_lenient": res.correct_lenient,
            "pred": res.pred,
            "gold": gold,
            "reason": res.reason,
            "reward_components": res.components,
        }
        for r, res, gold in zip(rows, results, golds, strict=True)
    ]
    write_jsonl(output, out_rows)
    return out_rows
