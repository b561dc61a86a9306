"""The training commands from start to finish: train, expert-iter, sft, and the buffer
commands (rollout, train-buffer, loop). Each joins the ranks, opens or resumes its run
directory, trains, and rank 0 writes the summary and report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mathrl import checkpoint as ckpt_mod
from mathrl import dist, fsdp
from mathrl.buffer_rl import loop, rollout_iteration, train_on_buffer
from mathrl.config import Config
from mathrl.data import heldout_split
from mathrl.errors import ConfigError, MathrlError
from mathrl.expert_iter import run_expert_iter
from mathrl.groups import check_rollout_server
from mathrl.io import sha256_file
from mathrl.loggers import events_log, make_logger, say, warn
from mathrl.models.loading import load_model
from mathrl.policy import load_policy
from mathrl.report.html import write_report
from mathrl.report.plots import load_metrics
from mathrl.report.summary import before_after_text, run_summary, write_summary
from mathrl.run_setup import resume_point
from mathrl.runs.evaluate import run_suite
from mathrl.runs.start import join_ranks, load_run_config, open_run, stopped_in
from mathrl.sft import encode_pair, file_pair_sampler, read_pairs, task_pair_sampler, train_sft
from mathrl.shards import shard_sampler, tokenizer_fingerprint, write_shards
from mathrl.stopping import graceful_stop
from mathrl.tasks import Task
from mathrl.trainer import check_parallel, train
from mathrl.warmup import maybe_warmup, warmup_summary


def start_training_run(
    config: Any,
    sets: list[str] | None,
    out: Path | None,
    resume: bool,
    allow_change: bool,
    quiet: bool,
    rl: bool = True,
) -> tuple[Config, Task, Path, Path | None, Path | None]:
    """Set up a training command: (cfg, task, run_dir, checkpoint to resume, model to start).
    rl=False (expert-iter): train.* settings of online RL are not checked against the ranks.

    Resuming takes the newest complete checkpoint (refusing changed inputs); a fresh start
    (or a resume still inside the warm-up) goes through the SFT warm-up per [warmup]. The
    model to start from is None for the configured model.
    """
    cfg = load_run_config(config, sets, quiet, ranks=True)
    join_ranks(cfg)
    if rl:  # what several ranks cannot do, before any work
        check_parallel(cfg, dist.current().world)
        check_rollout_server(cfg)
    else:
        fsdp.check(cfg)
    task, run_dir = open_run(cfg, out, resume, fresh=True, allow_change=allow_change)
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


def run_expert_iteration(
    config: Any,
    sets: list[str] | None,
    out: Path | None,
    resume: bool,
    allow_change: bool,
    quiet: bool,
) -> Path:
    """`mathrl expert-iter`: rounds of sampling, keeping correct completions, SFT, eval."""
    started = time.perf_counter()
    with dist.joined():  # torchrun: the ranks split sampling, SFT and eval; rank 0 writes
        cfg, task, run_dir, resume_from, start = start_training_run(
            config, sets, out, resume, allow_change, quiet, rl=False
        )
        with make_logger(cfg, run_dir, cfg.expert_iter.rounds) as logger:
            rounds = run_expert_iter(
                cfg,
                task,
                run_dir,
                lambda path: load_policy(cfg, task, run_dir, path or start),
                logger,
                lambda rdir, steps: make_logger(cfg, rdir, steps),
                say,
            )
        main = dist.current().is_main
    if main:
        say(f"expert iteration: {rounds} rounds; checkpoints in {run_dir / 'checkpoints'}")
        finish_run(cfg, task, run_dir, started, resumed=resume_from is not None)
    return run_dir


def run_sft(
    config: Any,
    sets: list[str] | None,
    out: Path | None,
    data: Path | None,
    steps: int | None,
    resume: bool,
    allow_change: bool,
    quiet: bool,
) -> Path:
    """`mathrl sft`: supervised fine-tuning on a JSONL file, a shard dir from
    sft-pretokenize, or the task's own solutions; the run dir."""
    cfg = load_run_config(config, sets, quiet, ranks=True)
    n = steps if steps is not None else cfg.sft.steps
    if n <= 0:
        raise MathrlError("Nothing to do: set --steps N or sft.steps > 0")
    join_ranks(cfg)
    with dist.joined():
        task, run_dir = open_run(cfg, out, resume, fresh=True, allow_change=allow_change)
        prev = resume_point(run_dir, cfg, task.fingerprint, allow_change) if resume else None
        model, tokenizer = load_policy(cfg, task, run_dir, prev / "model" if prev else None)
        source = data or (Path(cfg.sft.data) if cfg.sft.data else None)
        if source is not None and source.is_dir():  # pre-tokenised (sft-pretokenize)
            sampler: Any = shard_sampler(source, tokenizer)
        else:
            sampler = file_pair_sampler(read_pairs(source)) if source else task_pair_sampler(task)
        with graceful_stop(), stopped_in(lambda: run_dir), make_logger(cfg, run_dir, n) as log:
            final = train_sft(
                cfg,
                model,
                tokenizer,
                sampler,
                run_dir,
                log,
                task.fingerprint,
                steps=n,
                resume_from=prev,
            )
    say(f"SFT finished at step {final}; checkpoints in {run_dir / 'checkpoints'}")
    return run_dir


def pretokenize(
    config: Any,
    sets: list[str] | None,
    data: Path,
    out: Path,
    model: str | None,
    shard_rows: int,
    quiet: bool,
) -> dict[str, Any]:
    """`mathrl sft-pretokenize`: SFT pairs tokenised once into fixed-length shards."""
    cfg = load_run_config(config, sets, quiet)
    path = model or cfg.model.path
    if path == "scratch":
        raise MathrlError(
            "sft-pretokenize needs a real tokenizer: pass --model with a checkpoint's model dir "
            "(a scratch run keeps its tokenizer in RUN/scratch_model)"
        )
    pairs = read_pairs(data)
    _, tokenizer = load_model(path, dtype=cfg.model.dtype, device="cpu")
    rows = [encode_pair(tokenizer, m, r, cfg.sft.max_len) for m, r in pairs]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    source = {
        "source": str(data),
        "source_sha256": sha256_file(data),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "model": path,
    }
    meta = write_shards(rows, out, cfg.sft.max_len, pad_id, shard_rows, source)
    cut = sum(len(r.ids) >= cfg.sft.max_len for r in rows)
    say(
        f"{meta['rows']} rows in {len(meta['shards'])} shards of length {cfg.sft.max_len} -> {out}"
        + (f" ({cut} rows cut at sft.max_len)" if cut else "")
    )
    return meta


def finish_run(cfg: Config, task: Task, run_dir: Path, started: float, resumed: bool) -> None:
    """summary.json, the before/after table, then the report (which shows the summary too)."""
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
    try:
        return write_report(run_dir)
    except Exception as exc:  # the run itself succeeded; say why there is no report
        with events_log(run_dir):
            warn(f"no report written ({type(exc).__name__}: {exc})")
        return None


# ---------------------------------------------------------------- the buffer commands


def join_buffer_command(config: Path | None, sets: list[str] | None, quiet: bool) -> Config:
    """The config of a buffer command (rollout, train-buffer, loop), its ranks joined and
    what several ranks cannot do refused, before any work."""
    cfg = load_run_config(config, sets, quiet, ranks=True)
    if cfg.data.curriculum != "uniform" or cfg.task.mixture:
        raise ConfigError(
            "data.curriculum and task.mixture are for `mathrl train`: the buffer commands "
            "draw one task's prompts in shuffled epochs"
        )
    join_ranks(cfg)
    check_parallel(cfg, dist.current().world)
    return cfg


def open_at_latest(
    config: Path | None, sets: list[str] | None, out: Path | None, quiet: bool
) -> tuple[Config, Task, Path, Path | None, Any, Any]:
    """(cfg, task, run_dir, newest checkpoint or None, model, tokenizer) for the buffer
    commands, which continue whatever --out holds (under torchrun: after joining the ranks)."""
    cfg = join_buffer_command(config, sets, quiet)
    task, run_dir = open_run(cfg, out, resume=False)
    latest = ckpt_mod.latest_checkpoint(run_dir)
    model, tokenizer = load_policy(cfg, task, run_dir, latest / "model" if latest else None)
    return cfg, task, run_dir, latest, model, tokenizer


def run_rollout(
    config: Path | None, sets: list[str] | None, out: Path | None, it: int, steps: int, quiet: bool
) -> Path:
    """`mathrl rollout`: the newest checkpoint's completions into buffer/iter_XXX.jsonl."""
    with dist.joined():  # torchrun: the ranks split each step's prompts, rank 0 writes
        cfg, task, run_dir, _, model, tokenizer = open_at_latest(config, sets, out, quiet)
        path = rollout_iteration(cfg, task, model, tokenizer, run_dir, it, steps)
    say(f"wrote {path}")
    return path


def run_train_buffer(
    config: Path | None, sets: list[str] | None, out: Path | None, buffer: Path, quiet: bool
) -> int:
    """`mathrl train-buffer`: train from a buffer file, continuing --out's newest checkpoint."""
    with dist.joined():  # torchrun: the ranks split each step's groups
        cfg, task, run_dir, latest, model, tokenizer = open_at_latest(config, sets, out, quiet)
        with make_logger(cfg, run_dir) as logger:
            step = train_on_buffer(cfg, task, model, tokenizer, run_dir, buffer, logger, latest)
    say(f"trained to step {step}; checkpoints in {run_dir / 'checkpoints'}")
    return step


def run_loop(
    config: Path | None,
    sets: list[str] | None,
    out: Path | None,
    iters: int,
    max_steps: int,
    reset: bool,
    quiet: bool,
) -> int:
    """`mathrl loop`: rollout and train-buffer alternated after a warm-up; resumes itself."""
    with dist.joined():  # torchrun: each iteration's rollout and training split over ranks
        cfg = join_buffer_command(config, sets, quiet)
        task, run_dir = open_run(cfg, out, resume=False, reset=reset)
        # The warm-up (per [warmup]) only matters before the first RL checkpoint; it resumes.
        base = (
            None
            if ckpt_mod.latest_checkpoint(run_dir)
            else maybe_warmup(cfg, task, run_dir, resume=True, allow_change=False)
        )
        with make_logger(cfg, run_dir, max_steps) as logger:
            step = loop(
                cfg,
                task,
                run_dir,
                iters,
                max_steps,
                lambda path: load_policy(cfg, task, run_dir, path or base),
                logger,
                say,
            )
    say(f"loop finished at step {step}; checkpoints in {run_dir / 'checkpoints'}")
    return step
