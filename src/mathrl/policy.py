"""The policy a run trains: model and tokenizer as configured (scratch, hub/local, LoRA, FSDP, MLX)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mathrl import dist, fsdp
from mathrl.config import Config
from mathrl.errors import MathrlError
from mathrl.models.loading import load_model, resolve_autocast, resolve_device
from mathrl.models.lora import adapter_settings, add_adapters, is_peft_model
from mathrl.models.scratch import build_scratch_model
from mathrl.tasks import Task


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
    return load_torch_policy(cfg, source, shard)


def load_torch_policy(cfg: Config, source: str, shard: bool = True) -> tuple[Any, Any]:
    """load_policy on torch: LoRA per model.lora; sharded under FSDP (and shard)."""

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
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if use_lora:
        if is_peft_model(model):
            check_adapters(model, cfg, source)
        else:
            model = apply_lora(model, cfg, base=source)
    if sharded:  # train.parallel = "fsdp": each rank keeps its shards, on its device
        model = fsdp.shard(model, str(resolve_device(device)))
    return model, tokenizer


def enable_gradient_checkpointing(model: Any) -> None:
    """transformers' gradient checkpointing, non-reentrant (the reentrant form computes no
    gradients when no input of a layer requires one: LoRA's frozen embeddings)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise MathrlError(
            f"model.gradient_checkpointing: {type(model).__name__} does not support it"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def load_mlx_policy(cfg: Config, source: str) -> tuple[Any, Any]:
    """load_policy on MLX: the model, with trainable LoRA adapters under model.lora (its
    own when `source` holds matching ones, else new ones)."""
    # mlx is imported only by MLX runs: torch-only processes never load it
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

    lc = cfg.model.lora
    r, alpha, targets = adapter_settings(model)
    if (r, alpha, targets) != (lc.r, lc.alpha, set(lc.targets)):
        raise MathrlError(
            f"{source} holds LoRA adapters with r={r}, alpha={alpha:g}, "
            f"targets={sorted(targets)}, but model.lora says r={lc.r}, alpha={lc.alpha:g}, "
            f"targets={sorted(lc.targets)}: set model.lora to match to train them on, or "
            "start from `mathrl export --merge` of it"
        )
