"""The MLX backend's models: load through mlx-lm, completion log-probs, save in mlx-lm format.

What loads: an HF dir or hub id (transformers' safetensors, which mlx-lm reads directly),
an MLX dir (mlx-lm's format, possibly quantised), a `.gguf` file or a named offline model
(dequantised once to an HF dir by models/loading.py, then read as one), and a mathrl
checkpoint's `model/` dir (written by save_mlx_model below, or by the torch backend).

The tokenizer is transformers' (prepare_tokenizer, as on torch), not mlx-lm's wrapper:
prompts, chat templates and stop tokens are then the same on both backends.

Known mlx-lm gap, worked around here: transformers >= 5 saves rope_theta inside
`rope_parameters`, and mlx-lm's Qwen2/Llama args read it only at the top level, falling
back *silently* to their own default (1e6 for Qwen2), which changes every logit.
`config_overrides` lifts it (and a non-default rope_scaling) to the top level.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError

MLX_EXTRA = "pip install 'mathrl[mlx]' (mlx and mlx-lm)"
DTYPE_NAMES = {
    "auto": "float32",
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


def require_mlx() -> None:
    """Raise one line naming the extra when mlx or mlx-lm is missing."""
    missing = [m for m in ("mlx", "mlx_lm") if importlib.util.find_spec(m) is None]
    if missing:
        raise MathrlError(
            f"MLX (backend = 'mlx', convert) needs {' and '.join(missing)}: {MLX_EXTRA}"
        )


def config_overrides(model_dir: Path) -> dict[str, Any]:
    """Config keys mlx-lm would otherwise misread (see the module docstring)."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise MathrlError(f"cannot read {model_dir / 'config.json'}: {e}") from None
    out: dict[str, Any] = {}
    rope = config.get("rope_parameters")
    if isinstance(rope, dict):
        if "rope_theta" not in config and "rope_theta" in rope:
            out["rope_theta"] = float(rope["rope_theta"])
        if rope.get("rope_type", "default") != "default" and not config.get("rope_scaling"):
            out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return out


def local_model_dir(path: str, cache_dir: str | Path | None = None) -> Path:
    """A local directory holding config.json + safetensors for `path` (see the docstring)."""
    from mathrl.models.loading import NAMED_MODELS, convert_gguf, named_model_path

    if path in NAMED_MODELS:
        return convert_gguf(named_model_path(path), cache_dir)
    local = Path(path).expanduser()
    if path.endswith(".gguf"):
        if not local.is_file():
            raise MathrlError(f"cannot load model from {path}: no such file")
        return convert_gguf(local, cache_dir)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise MathrlError(f"cannot load model from {path}: the directory has no config.json")
        if (local / "adapter_config.json").is_file():
            raise MathrlError(
                f"{path} holds torch (peft) LoRA adapters, which the MLX backend does not "
                "load: merge them first with `mathrl export --merge`"
            )
        return local
    if path.startswith(("/", "./", "../", "~")):
        raise MathrlError(f"cannot load model from {path}: no such file or directory")
    from huggingface_hub import snapshot_download  # a hub id: users have internet

    try:
        return Path(
            snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
        )
    except Exception as e:  # offline, unknown repo, ...: one line
        raise MathrlError(f"cannot load model {path!r} from the hub: {e}") from None


def load_mlx_model(
    path: str, dtype: str = "auto", cache_dir: str | Path | None = None
) -> tuple[Any, Any]:
    """(mlx-lm model in eval mode, transformers tokenizer ready for chat generation).

    dtype: float32 (auto) / bfloat16 / float16 for the float weights; quantised layers of
    an MLX dir stay quantised.
    """
    require_mlx()
    import mlx.core as mx
    from mlx_lm.utils import load_model
    from transformers import AutoTokenizer

    from mathrl.models.loading import prepare_tokenizer

    if dtype not in DTYPE_NAMES:
        raise MathrlError(f"model.dtype {dtype!r}: choose one of {', '.join(DTYPE_NAMES)}")
    model_dir = local_model_dir(path, cache_dir)
    try:
        model, _ = load_model(model_dir, model_config=config_overrides(model_dir))
    except (ValueError, FileNotFoundError) as e:
        raise MathrlError(f"mlx-lm cannot load {path}: {e}") from None
    target = getattr(mx, DTYPE_NAMES[dtype])
    model.set_dtype(target)  # floating-point parameters only; quantised ones are uint32
    model.eval()
    model.name_or_path = str(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return model, prepare_tokenizer(tokenizer)


def model_config(model: Any) -> dict[str, Any]:
    """The config.json of the directory the model came from, as mlx-lm saves it."""
    source = Path(getattr(model, "name_or_path", ""))
    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    config.update(config_overrides(source))
    return config


def save_mlx_model(model: Any, tokenizer: Any, out: Path) -> None:
    """mlx-lm's format (model.safetensors + index, config.json, tokenizer files), which
    `mlx_lm.load` reads and transformers reads too for an unquantised model."""
    from mlx_lm.utils import save_config, save_model

    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model)
    config = model_config(model)
    quant = getattr(model, "quantization", None)
    if quant:
        config["quantization"] = quant
    save_config(config, out / "config.json")
    source = Path(getattr(model, "name_or_path", ""))
    if (source / "generation_config.json").is_file():
        (out / "generation_config.json").write_bytes(
            (source / "generation_config.json").read_bytes()
        )
    tokenizer.save_pretrained(out)


def completion_arrays(
    prompts: list[list[int]], completions: list[list[int]], pad_id: int
) -> tuple[Any, Any, Any]:
    """Rows `prompt + completion`, right-padded: (ids (B, L), pos (B, T), mask (B, T)).

    Right padding keeps every real token at its unpadded position (a causal mask never
    lets it see the padding after it), so no attention mask is needed. pos[i, j] is where
    the logits predicting completion token j of row i sit; mask marks real tokens.
    """
    import mlx.core as mx
    import numpy as np

    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    width = max(len(r) for r in rows)
    t = max(1, max(len(c) for c in completions))
    ids = np.full((len(rows), width), pad_id, dtype=np.int32)
    pos = np.zeros((len(rows), t), dtype=np.int32)
    mask = np.zeros((len(rows), t), dtype=np.float32)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[i, : len(p) + len(c)] = p + c
        pos[i, : len(c)] = np.arange(len(p) - 1, len(p) - 1 + len(c))
        mask[i, : len(c)] = 1.0
    return mx.array(ids), mx.array(pos), mx.array(mask)


def completion_logprobs_mlx(
    model: Any, ids: Any, pos: Any, return_entropy: bool = False
) -> tuple[Any, Any]:
    """(B, T) log-probs of the completion tokens (float32) and, if asked, their entropies
    (None otherwise), from one forward over the right-padded rows of completion_arrays."""
    import mlx.core as mx

    from mathrl.algorithms.mlx_forms import selective_logprobs_mlx, token_entropy_mlx

    logits = model(ids[:, :-1]).astype(mx.float32)  # position k predicts token k + 1
    # gather the completion positions first: (B, T, V) instead of (B, L, V) afterwards
    picked = mx.take_along_axis(logits, pos[:, :, None], axis=1)
    targets = mx.take_along_axis(ids, pos + 1, axis=1)
    logprobs = selective_logprobs_mlx(picked, targets)
    entropy = token_entropy_mlx(picked) if return_entropy else None
    return logprobs, entropy
