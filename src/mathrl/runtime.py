"""Set-up shared by every command that writes a run: seeds, threads, run dir, policy."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from mathrl import checkpoint as ckpt_mod
from mathrl import dist, fsdp
from mathrl.config import Config, config_hash, dumps_toml
from mathrl.errors import MathrlError
from mathrl.io import atomic_write_text
from mathrl.tasks import Task


def derive_seed(seed: int, *parts: int) -> int:
    """The seed of one random stream of a run, from the run's seed and the stream's indices.

    seed * 1_000_003 + the parts read as digits in base 101 (`(step, round)` gives
    `step * 101 + round`). Every derived seed in mathrl comes from here; the formula is
    older than this helper and is kept so that earlier runs reproduce.
    """
    mixed = 0
    for part in parts:
        mixed = mixed * 101 + part
    return seed * 1_000_003 + mixed


def set_seed(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


CUBLAS_WORKSPACE = ":4096:8"
"""CUBLAS_WORKSPACE_CONFIG that makes cuBLAS deterministic (CUDA >= 10.2, torch's docs)."""


def set_deterministic(on: bool) -> None:
    """run.deterministic: deterministic kernels everywhere, or torch's defaults.

    Called before any model is loaded, so the cuBLAS variable is set before CUDA starts.
    """
    import torch

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False


def quiet_libraries() -> None:
    """transformers' per-load progress bars would drown mathrl's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads if threads > 0 else (os.cpu_count() or 1))


def prepare_run_dir(
    cfg: Config, out: str | None, resume: bool, reset: bool = False, fresh: bool = False
) -> Path:
    """Create (or reopen, when resuming) the run directory and write the resolved config."""
    import shutil

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
    ckpt_mod.clean_orphans(run_dir)
    atomic_write_text(run_dir / "config.toml", dumps_toml(cfg))
    return run_dir


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


def load_policy(
    cfg: Config, task: Task, run_dir: Path, path: str | Path | None = None, shard: bool = True
) -> tuple[Any, Any]:
    """Model and tokenizer: from `path` (a checkpoint's model dir) or as configured.

    With model.lora.r > 0 only LoRA adapters train: new ones on the loaded model, or, when
    the source is a LoRA checkpoint (a resume, the warm-up's result), its own adapters,
    trained on. A LoRA source without model.lora loads merged, and all weights train.
    With train.parallel = "fsdp" under torchrun (and shard) the model is read on the CPU
    and each rank moves only its shards to its device (mathrl.fsdp).
    """
    from mathrl.models.loading import load_model, resolve_autocast, resolve_device
    from mathrl.models.scratch import build_scratch_model

    source = str(path) if path is not None else cfg.model.path
    if path is None and cfg.model.path == "scratch":
        s = cfg.model.scratch
        scratch_dir = run_dir / "scratch_model"

        def build() -> None:
            if not (scratch_dir / "config.json").is_file():
                build_scratch_model(
                    scratch_dir,
                    task.corpus(),
                    arch=s.arch,
                    hidden=s.hidden,
                    layers=s.layers,
                    heads=s.heads,
                    vocab_size=s.vocab_size,
                    max_position=s.max_position,
                    seed=cfg.seed,
                )

        # rank 0 checks and builds, the others wait: a rank that checked on its own could
        # see rank 0's half-written dir and skip the wait
        dist.on_main(build)
        source = str(scratch_dir)
    if cfg.backend == "mlx":
        return load_mlx_policy(cfg, source)
    fsdp.check(cfg)
    sharded = shard and fsdp.wanted(cfg)
    device = dist.rank_device(cfg.model.device)
    use_lora = cfg.model.lora.r > 0
    model, tokenizer = load_model(
        source,
        dtype=cfg.model.dtype,
        device="cpu" if sharded else device,
        # autocast "auto" is decided by the device the model runs on, not the CPU it is read on
        autocast=resolve_autocast(cfg.model.autocast, resolve_device(device)),
        train_adapters=use_lora,
    )
    if use_lora:
        from mathrl.models.lora import is_peft_model

        if is_peft_model(model):
            check_adapters(model, cfg, source)
        else:
            model = apply_lora(model, cfg, base=source)
    if sharded:  # train.parallel = "fsdp": each rank keeps its shards, on its device
        model = fsdp.shard(model, str(resolve_device(device)))
    return model, tokenizer


def load_mlx_policy(cfg: Config, source: str) -> tuple[Any, Any]:
    """load_policy on MLX: the model, with trainable LoRA adapters under model.lora (its
    own when `source` holds matching ones, else new ones)."""
    from mathrl.models.mlx_model import add_lora, is_quantized, load_mlx_model, lora_settings

    lc = cfg.model.lora
    model, tokenizer = load_mlx_model(source, dtype=cfg.model.dtype, train_adapters=lc.r > 0)
    if lc.r == 0 and is_quantized(model):  # mlx freezes quantised layers: only norms would train
        raise MathrlError(
            f"{source} is a quantised MLX model, whose weights cannot train: set model.lora.r "
            "> 0 (QLoRA) or train a float model (`mathrl convert --to hf`)"
        )
    if lc.r > 0:
        found = lora_settings(model)
        if found is None:
            add_lora(model, lc.r, lc.alpha, lc.dropout, list(lc.targets), cfg.seed)
        elif found != (lc.r, lc.alpha, set(lc.targets)):
            r, alpha, targets = found
            raise MathrlError(
                f"{source} holds LoRA adapters with r={r}, alpha={alpha:g}, "
                f"targets={sorted(targets)}, but model.lora says r={lc.r}, alpha={lc.alpha:g}, "
                f"targets={sorted(lc.targets)}: set model.lora to match to train them on"
            )
    return model, tokenizer


def apply_lora(model: Any, cfg: Config, base: str | None = None) -> Any:
    """New LoRA adapters per model.lora; `base` (what the model was loaded from) is what
    the adapters' checkpoints will name as their base."""
    from mathrl.models.lora import add_adapters

    lc = cfg.model.lora
    return add_adapters(
        model,
        r=lc.r,
        alpha=lc.alpha,
        dropout=lc.dropout,
        targets=lc.targets,
        base=base or str(getattr(model, "name_or_path", "")),
    )


def check_adapters(model: Any, cfg: Config, source: str) -> None:
    """Adapters loaded to train on must be the ones model.lora describes."""
    from mathrl.models.lora import adapter_settings

    lc = cfg.model.lora
    r, alpha, targets = adapter_settings(model)
    if (r, alpha, targets) != (lc.r, lc.alpha, set(lc.targets)):
        raise MathrlError(
            f"{source} holds LoRA adapters with r={r}, alpha={alpha:g}, "
            f"targets={sorted(targets)}, but model.lora says r={lc.r}, alpha={lc.alpha:g}, "
            f"targets={sorted(lc.targets)}: set model.lora to match to train them on, or "
            "start from `mathrl export --merge` of it"
        )


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
