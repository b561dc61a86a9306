"""Set-up shared by every command that writes a run: seeds, threads, the run dir, resume point."""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mathrl import checkpoint as ckpt_mod
from mathrl import dist
from mathrl.config import Config, config_hash, dumps_toml
from mathrl.errors import MathrlError
from mathrl.io import atomic_write_text


def derive_seed(seed: int, *parts: int) -> int:
    """The seed of one random stream of a run, from the run's seed and the stream's indices.

    seed * 1_000_003 + the parts read as digits in base 101 (`(step, round)` gives
    `step * 101 + round`). Every derived seed in mathrl comes from here, so changing the
    formula would change what every earlier run's config reproduces.
    """
    mixed = 0
    for part in parts:
        mixed = mixed * 101 + part
    return seed * 1_000_003 + mixed


def set_seed(seed: int) -> None:

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


CUBLAS_WORKSPACE = ":4096:8"
"""CUBLAS_WORKSPACE_CONFIG that makes cuBLAS deterministic (CUDA >= 10.2, torch's docs)."""


def set_deterministic(on: bool) -> None:
    """run.deterministic: deterministic kernels everywhere, or torch's defaults.

    Called before any model is loaded, so the cuBLAS variable is set before CUDA starts.
    """

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def quiet_libraries() -> None:
    """transformers' per-load progress bars would drown mathrl's own output."""
    # transformers costs ~0.9 s to import, and data.py (imported by every command) imports
    # this module: only commands that load a model reach this line
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def set_threads(threads: int) -> None:

    torch.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))


def prepare_run_dir(
    cfg: Config,
    out: str | None,
    resume: bool,
    reset: bool = False,
    fresh: bool = False,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Create (or reopen, when resuming) the run directory and write the resolved config;
    when resuming, `check(run_dir)` runs first, so a refused resume writes nothing."""

    run_dir = Path(out) if out else ckpt_mod.default_run_dir()
    if reset and run_dir.exists():
        shutil.rmtree(run_dir)
    if resume and not run_dir.is_dir():
        raise MathrlError(f"--resume given but the run directory does not exist: {run_dir}")
    if (
        fresh
        and not resume
        and ((run_dir / "metrics.jsonl").exists() or (run_dir / ckpt_mod.CKPT_DIR).exists())
    ):
        raise MathrlError(
            f"{run_dir} already holds a run: pass --resume to continue it, or choose another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_mod.clean_orphans(run_dir)  # first: it settles an interrupted re-save of a step
    if resume and check is not None:
        check(run_dir)
    atomic_write_text(run_dir / "config.toml", dumps_toml(cfg))
    return run_dir


def check_resumable(run_dir: Path, cfg: Config, fingerprint: str, allow_change: bool) -> None:
    """--resume has a checkpoint to continue (RL's, else the warm-up's) that this config
    and dataset may resume; else the MathrlError that resume_point gives."""
    for where in (run_dir, run_dir / "warmup_sft"):
        if ckpt_mod.list_checkpoints(where):
            if where != run_dir:
                ckpt_mod.clean_orphans(where)
            resume_point(where, cfg, fingerprint, allow_change)
            return
    raise MathrlError(f"--resume given but {run_dir} holds no complete checkpoint")


def resume_point(run_dir: Path, cfg: Config, fingerprint: str, allow_change: bool) -> Path:
    """The checkpoint to resume from; refuses loudly when none is valid or inputs changed."""
    latest = ckpt_mod.latest_checkpoint(run_dir)
    if latest is None:
        raise MathrlError(f"--resume given but {run_dir} holds no complete checkpoint")
    manifest = ckpt_mod.read_manifest(latest)
    written = manifest.get("backend", "torch")  # checkpoints before backends were torch's
    if written != cfg.backend:  # the formats differ: no --allow-config-change crosses this
        raise MathrlError(
            f"{latest} was written by backend = {written!r}: resume it there (this run has "
            f"backend = {cfg.backend!r})"
        )
    if not allow_change:
        if manifest.get("dataset_fingerprint") != fingerprint:
            raise MathrlError(
                f"Dataset changed since {latest.name} (fingerprint differs); "
                "pass --allow-config-change to resume anyway"
            )
        if manifest.get("config_hash") != config_hash(cfg):
            raise MathrlError(
                f"Config changed since {latest.name}; pass --allow-config-change to resume anyway"
            )
    return latest


def checkpoint_meta(
    cfg: Config, fingerprint: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "config_hash": config_hash(cfg),
        "dataset_fingerprint": fingerprint,
        "backend": cfg.backend,
        # the layout that wrote it (a checkpoint resumes under any: see mathrl.fsdp)
        "world_size": dist.current().world,
        "parallel": cfg.train.parallel if dist.current().world > 1 else "none",
        **(extra or {}),
    }
