"""Starting a command: its config, the backend check, the ranks, the process (threads,
seeds), the run directory, and what a stop on the way out learns."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mathrl import dist
from mathrl.backends import check_mlx_forms
from mathrl.checkpoint import default_run_dir, latest_checkpoint, write_run_manifest
from mathrl.config import Config, dumps_toml, load_config
from mathrl.data import make_task
from mathrl.errors import ConfigError, MathrlError
from mathrl.eval.suite import SUITES
from mathrl.io import atomic_write_text
from mathrl.loggers import events_log, log_event, say
from mathrl.model_source import resolve_model
from mathrl.models.backends import require_backend
from mathrl.run_setup import (
    check_resumable,
    prepare_run_dir,
    quiet_libraries,
    set_deterministic,
    set_seed,
    set_threads,
)
from mathrl.stopping import Stopped
from mathrl.tasks import Task


def load_run_config(
    config: Any, sets: list[str] | None, quiet: bool = False, ranks: bool = False
) -> Config:
    """The run's Config from a file or preset name (CLI), or a Config object (Python API;
    MATHRL_CONFIG does not apply to it), with `sets` on top. Under torchrun only commands
    that run data-parallel (ranks=True: train, sft, expert-iter, the buffer commands, eval,
    probe) may start: the others would run once per rank into the same directory."""
    # a Config object comes from a run already started (the end-of-run suite on rank 0)
    if dist.launched() and not ranks and not isinstance(config, Config):
        raise ConfigError(
            "this command runs in one process: launch it without torchrun (data-parallel: "
            "train, sft, expert-iter, rollout, train-buffer, loop, eval, probe)"
        )
    if isinstance(config, Config):
        cfg = load_config(None, sets or [], env=False, base=config)
    else:
        cfg = load_config(config, sets or [])
    if quiet:
        cfg.log.quiet = True
    if cfg.eval.suite:  # a registry above the config layer: a typo must not wait for the
        SUITES.get(cfg.eval.suite)  # end of a training run
    return cfg


def prepare_backend(cfg: Config) -> None:
    """The backend can run here and runs this config (MLX: every algorithm has its MLX
    form); MLX on the CPU when model.device says so. Before any work."""
    require_backend(cfg.backend)
    if cfg.backend == "mlx":
        check_mlx_forms(cfg)
        if cfg.model.device == "cpu":  # else MLX's default: the GPU (Metal) where there is one
            # mlx is imported only by MLX runs: torch-only processes never load it
            import mlx.core as mx

            mx.set_default_device(mx.cpu)


def join_ranks(cfg: Config) -> None:
    """Check the backend, then (torchrun) join the ranks; the MLX backend runs in one
    process, so several ranks are refused before any work."""
    prepare_backend(cfg)
    if cfg.backend != "torch" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MathrlError(
            f"backend = {cfg.backend!r} runs in one process: run it without torchrun / --nproc"
        )
    dist.init(cfg.train.collective_timeout_s, cfg.model.device)


def start_process(cfg: Config) -> Task:
    """Quiet libraries, threads and seeds as configured; returns the configured task."""
    quiet_libraries()
    set_threads(cfg.model.threads)
    set_deterministic(cfg.run.deterministic)
    set_seed(cfg.seed)
    return make_task(cfg)


def open_run(
    cfg: Config,
    out: Path | None,
    resume: bool,
    reset: bool = False,
    fresh: bool = False,
    allow_change: bool | None = None,
) -> tuple[Task, Path]:
    """The task and the run directory (resolved config and manifest written into it) of a
    command whose ranks have joined. With allow_change (a training command), --resume is
    checked against the run's checkpoints before anything is written."""
    task = start_process(cfg)

    def check(run_dir: Path) -> None:
        if allow_change is not None:
            check_resumable(run_dir, cfg, task.fingerprint, allow_change)

    def prepare() -> Path:
        where = str(out) if out else None
        run_dir = prepare_run_dir(cfg, where, resume, reset, fresh, check)
        write_run_manifest(
            run_dir,
            cfg.seed,
            task.fingerprint,
            {"task": task.name, "model": cfg.model.path, "deterministic": cfg.run.deterministic},
        )
        announce(task, run_dir)
        return run_dir

    return task, dist.on_main(prepare)  # rank 0 writes; every rank gets the same dir


def open_eval_run(
    config: Any,
    sets: list[str] | None,
    out: Path | None,
    models: list[str] | None,
    ranks: bool = False,
) -> tuple[Config, Task, list[str], Path]:
    """Config, task, model paths (checked) and the output dir, with the resolved config in it
    (ranks=True: under torchrun every rank joins and rank 0 writes)."""
    cfg = load_run_config(config, sets, ranks=ranks)
    join_ranks(cfg)
    paths = models or [cfg.model.path]
    for path in paths:
        resolve_model(path)  # fail on a bad path before writing anything
    task = start_process(cfg)

    def prepare() -> Path:
        out_dir = out or default_run_dir()
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.toml", dumps_toml(cfg))
        announce(task, out_dir)
        return out_dir

    return cfg, task, paths, dist.on_main(prepare)  # rank 0 writes


def announce(task: Task, run_dir: Path) -> None:
    """What loading the data chose or dropped on its own (the default validation split,
    deduplicated rows): on the console and in the run's events log."""
    notes = getattr(task, "notes", [])
    if notes:
        with events_log(run_dir):
            for note in notes:
                say(note)
                log_event("info", note)


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
            stop.checkpoint = latest_checkpoint(where) or latest_checkpoint(where / "warmup_sft")
        raise
