"""`mathrl train`, `expert-iter`, `sft` and `sft-pretokenize`: the training commands."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from mathrl.cli.app import app
from mathrl.cli.options import (
    EPILOG,
    AllowOpt,
    ConfigOpt,
    NprocOpt,
    OutOpt,
    QuietOpt,
    ResumeOpt,
    SetOpt,
    relaunch,
)
from mathrl.errors import MathrlError
from mathrl.runs import (
    finish_run,
    join_ranks,
    load_run_config,
    make_logger,
    open_run,
    run_training,
    say,
    start_training_run,
    stopped_in,
)
from mathrl.stopping import graceful_stop


@app.command("train", epilog=EPILOG)
def train_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    allow_config_change: AllowOpt = False,
    quiet: QuietOpt = False,
    nproc: NprocOpt = 1,
) -> None:
    """Online RL with GRPO, Dr GRPO, RLOO or REINFORCE; an SFT warm-up first per [warmup]."""
    if not relaunch(nproc):
        run_training(config, sets, out, resume, allow_config_change, quiet)


@app.command("expert-iter", epilog=EPILOG)
def expert_iter_cmd(
    config: ConfigOpt = None,
    sets: SetOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    allow_config_change: AllowOpt = False,
    quiet: QuietOpt = False,
    nproc: NprocOpt = 1,
) -> None:
    """Expert iteration: rounds of sampling, keeping correct completions, SFT on them, eval ([expert_iter])."""
    from mathrl import dist
    from mathrl.expert_iter import run_expert_iter
    from mathrl.policy import load_policy

    if relaunch(nproc):
        return
    started = time.perf_counter()
    with dist.joined():  # torchrun: the ranks split sampling, SFT and eval; rank 0 writes
        cfg, task, run_dir, resume_from, start = start_training_run(
            config, sets, out, resume, allow_config_change, quiet, rl=False
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
    nproc: NprocOpt = 1,
) -> None:
    """Supervised fine-tuning (response-only loss); same checkpoint format as RL."""
    from mathrl import dist

    if relaunch(nproc):
        return
    cfg = load_run_config(config, sets, quiet, ranks=True)
    n = steps if steps is not None else cfg.sft.steps
    if n <= 0:
        raise MathrlError("Nothing to do: set --steps N or sft.steps > 0")
    join_ranks(cfg)  # torchrun: join the ranks
    with dist.joined():
        _sft(cfg, out, data, n, resume, allow_config_change)


def _sft(
    cfg: Any, out: Path | None, data: Path | None, n: int, resume: bool, allow_change: bool
) -> None:
    from mathrl.policy import load_policy
    from mathrl.run_setup import resume_point
    from mathrl.sft import file_pair_sampler, read_pairs, task_pair_sampler, train_sft

    task, run_dir = open_run(cfg, out, resume, fresh=True)
    prev = resume_point(run_dir, cfg, task.fingerprint, allow_change) if resume else None
    model, tokenizer = load_policy(cfg, task, run_dir, prev / "model" if prev else None)
    source = data or (Path(cfg.sft.data) if cfg.sft.data else None)
    if source is not None and source.is_dir():
        from mathrl.shards import shard_sampler

        sampler: Any = shard_sampler(source, tokenizer)  # pre-tokenised (sft-pretokenize)
    else:
        sampler = file_pair_sampler(read_pairs(source)) if source else task_pair_sampler(task)
    with graceful_stop(), stopped_in(lambda: run_dir), make_logger(cfg, run_dir, n) as logger:
        final = train_sft(
            cfg,
            model,
            tokenizer,
            sampler,
            run_dir,
            logger,
            task.fingerprint,
            steps=n,
            resume_from=prev,
        )
    say(f"SFT finished at step {final}; checkpoints in {run_dir / 'checkpoints'}")


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
    say(
        f"{meta['rows']} rows in {len(meta['shards'])} shards of length {cfg.sft.max_len} -> {out}"
        + (f" ({cut} rows cut at sft.max_len)" if cut else "")
    )
