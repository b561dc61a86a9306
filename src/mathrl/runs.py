"""Start, resume and finish a run: config, run directory, loggers, SFT warm-up, summary
and report. Everything a command does besides parsing its options lives here, so the
commands in cli/ stay thin and other front ends (torchrun workers, notebooks) can call it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mathrl.errors import ConfigError, MathrlError
from mathrl.stopping import Stopped, graceful_stop


def load_run_config(
    config: Any, sets: list[str] | None, quiet: bool = False, ranks: bool = False
) -> Any:
    """The run's Config from a file or preset name (CLI), or a Config object (Python API;
    MATHRL_CONFIG does not apply to it), with `sets` on top. Under torchrun only commands
    that run data-parallel (ranks=True: train, sft, expert-iter, the decoupled commands)
    may start: the others would run once per rank into the same directory."""
    from mathrl import dist
    from mathrl.config import Config

    # a Config object comes from a run already started (the end-of-run suite on rank 0)
    if dist.launched() and not ranks and not isinstance(config, Config):
        raise ConfigError(
            "this command runs in one process: launch it without torchrun (data-parallel: "
            "train, sft, expert-iter, rollout, train-buffer, loop, eval, probe)"
        )
    from mathrl.config import Config, load_config

    if isinstance(config, Config):
        cfg = load_config(None, sets or [], env=False, base=config)
    else:
        cfg = load_config(config, sets or [])
    if quiet:
        cfg.log.quiet = True
    if cfg.eval.suite:  # read from a registry above the config layer; a typo must not
        from mathrl.eval.suite import SUITES  # wait for the end of a training run

        SUITES.get(cfg.eval.suite)
    return cfg


def make_logger(cfg: Any, run_dir: Path, total: int | None = None) -> Any:
    from mathrl import dist
    from mathrl.loggers import EventsLog, JSONLLogger, MultiLogger, ProgressLogger

    if not dist.current().is_main:  # rank 0 logs for every rank
        return MultiLogger([])
    # events.jsonl (warnings) first: MultiLogger closes in reverse, so it records the others'
    loggers: list[Any] = [EventsLog(run_dir), JSONLLogger(run_dir / "metrics.jsonl")]
    if not cfg.log.quiet:  # a bar on a terminal, plain per-step lines otherwise
        loggers.append(ProgressLogger(total, cfg.log.every, label=run_dir.name))
    if cfg.log.wandb or cfg.log.tensorboard:
        import dataclasses

        from mathrl.trackers import TensorBoardLogger, WandbLogger

        if cfg.log.wandb:
            loggers.append(
                WandbLogger(
                    "mathrl",
                    run_dir,
                    dataclasses.asdict(cfg),
                    mode=os.environ.get("WANDB_MODE", "online"),
                )
            )
        if cfg.log.tensorboard:
            loggers.append(TensorBoardLogger(run_dir / "tensorboard"))
    return MultiLogger(loggers)


def say(msg: str) -> None:
    """One line of progress or outcome on stderr (stdout keeps tables and JSON); rank 0's."""
    from mathrl import dist

    if dist.current().is_main and dist.speaks():  # speaks(): also after the ranks left
        print(msg, file=sys.stderr, flush=True)


def start_process(cfg: Any) -> Any:
    """Quiet libraries, threads and seeds as configured; returns the configured task."""
    from mathrl.data import make_task
    from mathrl.run_setup import quiet_libraries, set_deterministic, set_seed, set_threads

    prepare_backend(cfg)
    quiet_libraries()
    set_threads(cfg.model.threads)
    set_deterministic(cfg.run.deterministic)
    set_seed(cfg.seed)
    return make_task(cfg)


def open_run(
    cfg: Any, out: Path | None, resume: bool, reset: bool = False, fresh: bool = False
) -> tuple[Any, Path]:
    """The task and the run directory (resolved config and manifest written into it)."""
    from mathrl import dist
    from mathrl.checkpoint import write_run_manifest
    from mathrl.run_setup import prepare_run_dir

    task = start_process(cfg)

    def prepare() -> Path:
        run_dir = prepare_run_dir(cfg, str(out) if out else None, resume, reset, fresh)
        write_run_manifest(
            run_dir,
            cfg.seed,
            task.fingerprint,
            {"task": task.name, "model": cfg.model.path, "deterministic": cfg.run.deterministic},
        )
        return run_dir

    return task, dist.on_main(prepare)  # rank 0 writes; every rank gets the same dir


def join_ranks(cfg: Any) -> None:
    """Check the backend can run here, then (torchrun) join the ranks; the MLX backend
    runs in one process, so several ranks are refused before any work."""
    import os

    from mathrl import dist

    prepare_backend(cfg)
    if cfg.backend != "torch" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MathrlError(
            f"backend = {cfg.backend!r} runs in one process: run it without torchrun / --nproc"
        )
    dist.init(cfg.train.collective_timeout_s, cfg.model.device)


def prepare_backend(cfg: Any) -> None:
    """The backend can run here and runs this config (MLX: every algorithm has its MLX
    form); MLX on the CPU when model.device says so. Before any work; idempotent."""
    from mathrl.models.backends import require_backend

    require_backend(cfg.backend)
    if cfg.backend == "mlx":
        from mathrl.rl.backend import check_mlx_forms

        check_mlx_forms(cfg)
        if cfg.model.device == "cpu":  # else MLX's default: the GPU (Metal) where there is one
            import mlx.core as mx

            mx.set_default_device(mx.cpu)


def start_training_run(
    config: Any,
    sets: list[str] | None,
    out: Path | None,
    resume: bool,
    allow_change: bool,
    quiet: bool,
    rl: bool = True,
) -> tuple[Any, Any, Path, Path | None, Path | None]:
    """Set up a training command: (cfg, task, run_dir, checkpoint to resume, model to start).
    rl=False (expert-iter): train.* settings of online RL are not checked against the ranks.

    Resuming takes the newest complete checkpoint (refusing changed inputs); a fresh start
    (or a resume still inside the warm-up) goes through the SFT warm-up per [warmup]. The
    model to start from is None for the configured model.
    """
    from mathrl import checkpoint as ckpt_mod
    from mathrl import dist
    from mathrl.groups import check_rollout_server
    from mathrl.run_setup import resume_point
    from mathrl.trainer import check_parallel

    cfg = load_run_config(config, sets, quiet, ranks=True)
    join_ranks(cfg)  # torchrun: join the ranks
    if rl:  # what several ranks cannot do, before any work
        check_parallel(cfg, dist.current().world)
        check_rollout_server(cfg)
    else:
        from mathrl import fsdp

        fsdp.check(cfg)
    task, run_dir = open_run(cfg, out, resume, fresh=True)
    resume_from = (
        resume_point(run_dir, cfg, task.fingerprint, allow_change)
        if resume and ckpt_mod.list_checkpoints(run_dir)
        else None
    )
    if resume and resume_from is None and not ckpt_mod.list_checkpoints(run_dir / "warmup_sft"):
        raise MathrlError(f"--resume given but {run_dir} holds no complete checkpoint")
    if resume_from is not None:
        return cfg, task, run_dir, resume_from, resume_from / "model"
    return cfg, task, run_dir, None, maybe_warmup(cfg, task, run_dir, resume, allow_change)


def run_training(
    config: Any,
    sets: list[str] | None,
    out: Path | None,
    resume: bool,
    allow_change: bool,
    quiet: bool,
) -> Path:
    """`mathrl train` from start to summary: warm-up, RL, checkpoints, report; the run dir.
    SIGINT/SIGTERM stop it at a step boundary with a checkpoint (mathrl.stopping.Stopped)."""
    from mathrl import dist
    from mathrl.policy import load_policy
    from mathrl.trainer import train

    started = time.perf_counter()
    run_dir: Path | None = None
    with graceful_stop(), stopped_in(lambda: run_dir), dist.joined():
        cfg, task, run_dir, resume_from, start = start_training_run(
            config, sets, out, resume, allow_change, quiet
        )
        model, tokenizer = load_policy(cfg, task, run_dir, start)
        with make_logger(cfg, run_dir, cfg.train.steps) as logger:
            state = train(cfg, task, model, tokenizer, run_dir, logger, resume_from=resume_from)
        main = dist.current().is_main
    if not main:  # rank 0 evaluates the suite and writes the summary and report
        return run_dir
    say(f"trained {state.step} steps; checkpoints in {run_dir / 'checkpoints'}")
    if cfg.eval.suite:  # before finish_run, so that the report shows it
        _, paths = run_suite(cfg, None, run_dir / "suite", [str(run_dir)], cfg.eval.suite, quiet)
        print(paths["md"].read_text())
    finish_run(cfg, task, run_dir, started, resumed=resume_from is not None)
    return run_dir


@contextlib.contextmanager
def stopped_in(run_dir: Callable[[], Path | None]) -> Iterator[None]:
    """A Stopped on its way out learns the newest complete checkpoint of the run (RL, else
    the warm-up's) when the loop did not write one itself."""
    try:
        yield
    except Stopped as stop:
        where = run_dir()
        stop.run_dir = where
        if stop.checkpoint is None and where is not None:
            from mathrl.checkpoint import latest_checkpoint

            stop.checkpoint = latest_checkpoint(where) or latest_checkpoint(where / "warmup_sft")
        raise


def maybe_warmup(
    cfg: Any, task: Any, run_dir: Path, resume: bool, allow_change: bool
) -> Path | None:
    """Decide once per run whether to warm up with SFT (see mathrl.warmup), then do it.

    Returns the warmed-up model dir, or None to start RL from the configured model.
    """
    from mathrl import dist, fsdp, warmup
    from mathrl.policy import load_policy

    wdir = run_dir / "warmup_sft"
    # Read on rank 0 and handed to all: a rank reading the file itself could find the one
    # rank 0 writes below, skip that write's collective, and pair every later one wrongly.
    decision = dist.on_main(lambda: warmup.read_decision(wdir)) if resume else None
    if decision is None:
        rate = None
        if cfg.warmup.steps == 0 and cfg.warmup.min_positive > 0:
            say("warm-up probe: sampling RL's first round from the starting model")
            model, tokenizer = load_policy(cfg, task, run_dir)
            # rank 0 samples and every rank takes its rate: one decision for the job
            with fsdp.full_weights(model):
                rate = dist.on_main(lambda: warmup.first_round_correct(cfg, task, model, tokenizer))
            del model, tokenizer
        decision = warmup.decide(cfg, rate)
        if decision.warmup or rate is not None:
            dist.on_main(lambda: warmup.write_decision(wdir, decision))
    if decision.warmup or decision.first_round_correct is not None:
        say(f"warm-up decision: {decision.reason}")
    if not decision.warmup:
        return None
    return run_warmup(cfg, task, run_dir, resume, allow_change, decision.steps)


def run_warmup(
    cfg: Any, task: Any, run_dir: Path, resume: bool, allow_change: bool, steps: int
) -> Path:
    """SFT warm-up on the task's own solutions into run_dir/warmup_sft; returns its model dir."""
    from mathrl import checkpoint as ckpt_mod
    from mathrl import dist
    from mathrl.policy import load_policy
    from mathrl.run_setup import resume_point
    from mathrl.sft import task_pair_sampler, train_sft
    from mathrl.warmup import write_warmup_data

    wdir = run_dir / "warmup_sft"

    def prepare() -> None:
        wdir.mkdir(exist_ok=True)
        ckpt_mod.clean_orphans(wdir)
        if not (wdir / "data.jsonl").is_file():
            n = write_warmup_data(task, wdir / "data.jsonl")
            say(f"warm-up data: {n} prompts with their solutions -> {wdir / 'data.jsonl'}")

    dist.on_main(prepare)
    prev = (
        resume_point(wdir, cfg, task.fingerprint, allow_change)
        if resume and ckpt_mod.list_checkpoints(wdir)
        else None
    )
    if prev is not None and ckpt_mod.read_manifest(prev)["step"] >= steps:
        return prev / "model"
    model, tokenizer = load_policy(cfg, task, run_dir, prev / "model" if prev else None)
    say(f"SFT warm-up: {steps} steps on the task's own solutions")
    with make_logger(cfg, wdir, steps) as logger:
        train_sft(
            cfg,
            model,
            tokenizer,
            task_pair_sampler(task),
            wdir,
            logger,
            task.fingerprint,
            steps=steps,
            resume_from=prev,
        )
    latest = ckpt_mod.latest_checkpoint(wdir)
    assert latest is not None
    return latest / "model"


def warmup_summary(run_dir: Path) -> dict[str, Any] | None:
    from dataclasses import asdict

    from mathrl.warmup import read_decision

    decision = read_decision(run_dir / "warmup_sft")
    return asdict(decision) if decision else None


def finish_run(cfg: Any, task: Any, run_dir: Path, started: float, resumed: bool) -> None:
    """summary.json, the before/after table, then the report (which shows the summary too)."""
    from mathrl.data import heldout_split
    from mathrl.report.plots import load_metrics
    from mathrl.report.summary import before_after_text, run_summary, write_summary

    report = run_dir / "report.html"
    summary = run_summary(
        load_metrics(run_dir / "metrics.jsonl"),
        wall_s=time.perf_counter() - started,
        heldout_split=heldout_split(cfg, task),
        warmup=warmup_summary(run_dir),
        resumed=resumed,
        report=str(report),
    )
    path = write_summary(run_dir, summary)
    if final_report(run_dir) is None:
        summary["report"] = None
        write_summary(run_dir, summary)
    print(before_after_text(summary))
    print(f"summary: {path}\nreport:  {summary['report']}")


def final_report(run_dir: Path) -> Path | None:
    """Plots + report.html at the end of a run; a failure here must not fail the run."""
    from mathrl.loggers import events_log, warn
    from mathrl.report.html import write_report

    try:
        return write_report(run_dir)
    except Exception as exc:  # the run itself succeeded; say why there is no report
        with events_log(run_dir):
            warn(f"no report written ({type(exc).__name__}: {exc})")
        return None


def join_decoupled(config: Path | None, sets: list[str] | None, quiet: bool) -> Any:
    """The config of a decoupled command (rollout, train-buffer, loop), its ranks joined
    and what several ranks cannot do refused, before any work."""
    from mathrl import dist
    from mathrl.trainer import check_parallel

    cfg = load_run_config(config, sets, quiet, ranks=True)
    join_ranks(cfg)
    check_parallel(cfg, dist.current().world)
    return cfg


def open_at_latest(
    config: Path | None, sets: list[str] | None, out: Path | None, quiet: bool
) -> tuple[Any, Any, Path, Path | None, Any, Any]:
    """(cfg, task, run_dir, newest checkpoint or None, model, tokenizer) for the decoupled
    commands, which continue whatever --out holds (under torchrun: after joining the ranks)."""
    from mathrl import checkpoint as ckpt_mod
    from mathrl.policy import load_policy

    cfg = join_decoupled(config, sets, quiet)
    task, run_dir = open_run(cfg, out, resume=False)
    latest = ckpt_mod.latest_checkpoint(run_dir)
    model, tokenizer = load_policy(cfg, task, run_dir, latest / "model" if latest else None)
    return cfg, task, run_dir, latest, model, tokenizer


# ---------------------------------------------------------------- eval and probe

MODEL_HELP = (
    "A checkpoint dir (holding model/), a run dir (its newest checkpoint), an HF dir or hub id, "
    "a .gguf file, 'smollm2-135m-instruct' or 'scratch' (default: model.path)."
)


def resolve_model(path: str) -> str:
    """What load_model should read for a --model argument (see MODEL_HELP)."""
    from mathrl.checkpoint import latest_checkpoint
    from mathrl.models.loading import NAMED_MODELS
    from mathrl.models.lora import is_model_dir

    p = Path(path).expanduser()
    if p.is_dir():
        if is_model_dir(p / "model"):  # a checkpoint: full weights or LoRA adapters
            return str(p / "model")
        for run_dir in (p, p / "warmup_sft"):
            if (run_dir / "checkpoints").is_dir():
                latest = latest_checkpoint(run_dir)
                if latest is not None:
                    return str(latest / "model")
        if is_model_dir(p):
            return str(p)
        raise MathrlError(f"{path}: not a checkpoint, a run dir with a checkpoint, or an HF dir")
    if path in NAMED_MODELS or path == "scratch":
        return path
    if p.suffix == ".gguf" or path.startswith(("/", "./", "../", "~")) or p.exists():
        if not p.is_file() or p.suffix != ".gguf":
            raise MathrlError(f"model not found: {path}")
        return str(p)
    return path  # a hub id


def load_model_arg(cfg: Any, task: Any, path: str, out_dir: Path) -> tuple[Any, Any]:
    """Model and tokenizer for a --model argument; 'scratch' builds one into out_dir."""
    from mathrl.models.loading import load_model
    from mathrl.policy import load_policy

    source = resolve_model(path)
    if source == "scratch":
        scratch_cfg = copy.deepcopy(cfg)
        scratch_cfg.model.path = "scratch"
        return load_policy(scratch_cfg, task, out_dir, shard=False)  # eval: whole models
    if cfg.backend == "mlx":
        from mathrl.models.mlx_model import load_mlx_model

        return load_mlx_model(source, dtype=cfg.model.dtype)
    return load_model(
        source, dtype=cfg.model.dtype, device=cfg.model.device, autocast=cfg.model.autocast
    )


def open_eval_run(
    config: Any,
    sets: list[str] | None,
    out: Path | None,
    models: list[str] | None,
    ranks: bool = False,
) -> tuple[Any, Any, list[str], Path]:
    """Config, task, model paths (checked) and the output dir, with the resolved config in it
    (ranks=True: under torchrun every rank joins and rank 0 writes)."""
    from mathrl import dist
    from mathrl.checkpoint import default_run_dir
    from mathrl.config import dumps_toml
    from mathrl.io import atomic_write_text

    cfg = load_run_config(config, sets, ranks=ranks)
    join_ranks(cfg)  # torchrun: join the ranks
    paths = models or [cfg.model.path]
    for path in paths:
        resolve_model(path)  # fail on a bad path before writing anything
    task = start_process(cfg)

    def prepare() -> Path:
        out_dir = out or default_run_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.toml", dumps_toml(cfg))
        return out_dir

    return cfg, task, paths, dist.on_main(prepare)  # rank 0 writes


def model_labels(paths: list[str]) -> list[str]:
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


def run_eval(
    config: Any,
    sets: list[str] | None,
    out: Path | None,
    models: list[str] | None,
    split: str,
    limit: int | None,
    quiet: bool = False,
) -> tuple[Any, list[dict[str, Any]], Path]:
    """`mathrl eval`: each model evaluated on `split`, written under `out` (one subdir per
    model when several); (task, [{label, model, dir, summary}], out dir)."""
    import json

    from mathrl import dist
    from mathrl.eval.evaluate import eval_kwargs, evaluate, write_eval
    from mathrl.groups import rollout_engine
    from mathrl.io import atomic_write_text

    with dist.joined():  # under torchrun the ranks split the problems; rank 0 writes
        cfg, task, paths, out_dir = open_eval_run(config, sets, out, models, ranks=True)
        kwargs = eval_kwargs(cfg)
        if limit is not None:
            kwargs["limit"] = limit
        rows = []
        for path, label in zip(paths, model_labels(paths), strict=True):
            m, tok = load_model_arg(cfg, task, path, out_dir)
            engine = rollout_engine(cfg, m, tok, batch_size=kwargs["batch_size"], evaluation=True)
            result = evaluate(m, tok, task, split, progress=not quiet, engine=engine, **kwargs)
            del engine
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
    """An eval suite (mathrl.eval.suite.SUITES): every task of it on every model, greedy,
    on its test split; one table written as suite.json / .md / .png into `out`."""
    from mathrl.data import make_task
    from mathrl.errors import DataError
    from mathrl.eval.evaluate import eval_kwargs, evaluate
    from mathrl.eval.suite import SUITES, cell, write_suite
    from mathrl.groups import rollout_engine

    tasks = SUITES.get(suite)  # an unknown name is a ConfigError naming the closest
    base = load_run_config(config, sets, quiet)
    paths = models or [base.model.path]
    for path in paths:
        resolve_model(path)  # fail on a bad path before evaluating anything
    start_process(base)
    labels = model_labels(paths)
    rows = [{"task": t.label, "overrides": list(t.overrides), "n": 0, "cells": {}} for t in tasks]
    built: list[tuple[Any, Any]] = []  # (task, its config), or (None, why it is missing)
    for st in tasks:
        cfg = load_run_config(base, list(st.overrides))
        try:
            built.append((make_task(cfg), cfg))
        except DataError as exc:  # e.g. GSM8K offline: keep the row, say why
            built.append((None, str(exc).split(":")[0][:80]))
    for path, label in zip(paths, labels, strict=True):
        model = tok = None
        for row, (task, cfg) in zip(rows, built, strict=True):
            if task is None:
                row["cells"][label] = cell(None, cfg)
                continue
            if model is None:
                model, tok = load_model_arg(base, task, path, out)
            kwargs = {**eval_kwargs(cfg), "n": 1, "ks": (1,)}
            engine = rollout_engine(
                cfg, model, tok, batch_size=kwargs["batch_size"], evaluation=True
            )
            result = evaluate(model, tok, task, "test", progress=not quiet, engine=engine, **kwargs)
            row["n"] = result.summary["n_problems"]
            row["cells"][label] = cell(result.summary, None)
        del model
    table = {
        "suite": suite,
        "models": [{"label": lb, "model": p} for lb, p in zip(labels, paths, strict=True)],
        "rows": rows,
    }
    return table, write_suite(table, out)


# ---------------------------------------------------------------- score


def rescore_file(
    task: str,
    input: Path,
    output: Path,
    prompt_style: str,
    scheme: str,
    timeout: float,
    grader: str = "numeric",
) -> list[dict[str, Any]]:
    """Score every record of `input` (its 'completion' and the task's fields) into `output`."""
    from mathrl.errors import DataError
    from mathrl.io import read_jsonl, write_jsonl
    from mathrl.rewards import RewardPool, score_answer, score_countdown, score_gsm8k

    rows = read_jsonl(input)
    items = []
    for i, r in enumerate(rows, 1):
        if not isinstance(r.get("completion"), str):
            raise DataError(f"{input}: record {i} has no string 'completion'")
        if task == "gsm8k":
            gold = r.get("gold")
            if gold is None and isinstance(r.get("answer"), str):
                from mathrl.rewards import parse_gold_gsm8k

                gold = parse_gold_gsm8k(r["answer"])
            if gold is None:
                raise DataError(f"{input}: record {i} needs 'gold' or a GSM8K 'answer'")
            items.append((r["completion"], str(gold), prompt_style, scheme))
        elif task == "countdown":
            if not isinstance(r.get("nums"), list) or not isinstance(r.get("target"), int):
                raise DataError(f"{input}: record {i} needs 'nums' (int list) and 'target' (int)")
            items.append((r["completion"], r["nums"], r["target"], prompt_style, scheme))
        elif task == "qa":
            if r.get("gold") is None:
                raise DataError(f"{input}: record {i} needs 'gold' (the answer)")
            items.append((r["completion"], str(r["gold"]), prompt_style, grader, scheme))
        else:
            raise MathrlError(f"Unknown task '{task}' (choose gsm8k, countdown or qa)")
    fn = {"gsm8k": score_gsm8k, "countdown": score_countdown, "qa": score_answer}[task]
    with RewardPool(timeout_s=timeout, workers=1) as pool:
        results = pool.map(fn, items)
    out_rows = []
    for r, res in zip(rows, results, strict=True):
        gold = str(r["target"]) if task == "countdown" else items[len(out_rows)][1]
        out_rows.append(
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
        )
    write_jsonl(output, out_rows)
    return out_rows
