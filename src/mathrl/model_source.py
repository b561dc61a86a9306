"""What a --model argument names (a checkpoint, a run dir, an HF dir or hub id, a .gguf, a
named model, 'scratch'), and loading it as a whole model for eval, probe, serve or export."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from mathrl.checkpoint import latest_checkpoint
from mathrl.errors import MathrlError
from mathrl.models.loading import NAMED_MODELS, load_model
from mathrl.models.lora import is_model_dir
from mathrl.policy import load_policy


def resolve_model(path: str) -> str:
    """What load_model should read for a --model argument (cli.options.MODEL_HELP)."""
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
    source = resolve_model(path)
    if source == "scratch":
        scratch_cfg = copy.deepcopy(cfg)
        scratch_cfg.model.path = "scratch"
        return load_policy(scratch_cfg, task, out_dir, shard=False)  # eval: whole models
    if cfg.backend == "mlx":
        # mlx is imported only by MLX runs: torch-only processes never load it
        from mathrl.models.mlx_model import load_mlx_model

        return load_mlx_model(source, dtype=cfg.model.dtype)
    return load_model(
        source, dtype=cfg.model.dtype, device=cfg.model.device, autocast=cfg.model.autocast
    )


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
