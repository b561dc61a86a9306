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

import copy
import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
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


def is_mlx_model(model: Any) -> bool:
    """True for an mlx-lm model (an mlx.nn.Module), without importing mlx."""
    return any(c.__module__.startswith("mlx.") for c in type(model).__mro__)


def is_quantized(model: Any) -> bool:
    """True when any layer of an MLX model is quantised (its weights cannot train)."""
    return any(type(m).__name__.startswith("Quantized") for _, m in model.named_modules())


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
        if (local / "adapter_config.json").is_file() and not is_mlx_adapter_dir(local):
            raise MathrlError(
                f"{path} holds torch (peft) LoRA adapters, which the MLX backend does not "
                "load: merge them first with `mathrl export --merge`"
            )
        if not (local / "config.json").is_file():
            raise MathrlError(f"cannot load model from {path}: the directory has no config.json")
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
    path: str,
    dtype: str = "auto",
    cache_dir: str | Path | None = None,
    train_adapters: bool = False,
) -> tuple[Any, Any]:
    """(mlx-lm model in eval mode, transformers tokenizer ready for chat generation).

    dtype: float32 (auto) / bfloat16 / float16 for the float weights; quantised layers of
    an MLX dir stay quantised. A dir with mlx-lm adapters loads them merged into the
    weights, or (train_adapters) as trainable LoRA layers on the frozen base.
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
    if is_mlx_adapter_dir(model_dir):
        load_adapters(model, model_dir, merge=not train_adapters)
    model.eval()
    model.name_or_path = str(model_dir)
    # read now: the dir may be a checkpoint that rotation deletes before the next save
    config = json.loads((model_dir / "config.json").read_text("utf-8"))
    # kept as text: an mlx Module files dict attributes among its children
    model.mathrl_config = json.dumps({**config, **config_overrides(model_dir)})
    gen = model_dir / "generation_config.json"
    model.mathrl_generation_config = gen.read_text("utf-8") if gen.is_file() else None
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return model, prepare_tokenizer(tokenizer)


def load_adapters(model: Any, model_dir: Path, merge: bool) -> None:
    """Apply the adapters saved in model_dir: merged (plain weights again) or trainable."""
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    config = json.loads((model_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    model.freeze()
    linear_to_lora_layers(model, config["num_layers"], config["lora_parameters"])
    weights = mx.load(str(model_dir / ADAPTERS_FILE))
    expected = adapter_weights(model)
    if weights.keys() != expected.keys():
        raise MathrlError(
            f"{model_dir / ADAPTERS_FILE} does not fit the adapters of {ADAPTER_CONFIG}"
        )
    model.update(tree_unflatten(list(weights.items())))
    if merge:  # a quantised base is dequantised where merged: re-quantising base + delta
        # would cost more than the adapters changed
        fused = [
            (n, m.fuse(dequantize=True)) for n, m in model.named_modules() if hasattr(m, "lora_a")
        ]
        model.update_modules(tree_unflatten(fused))
        model.unfreeze()
    else:
        model.lora_config = json.dumps(config)  # text: see load_mlx_model


def model_config(model: Any) -> dict[str, Any]:
    """The config.json of the directory the model came from (read when it loaded)."""
    config: dict[str, Any] = json.loads(model.mathrl_config)
    return config


def save_mlx_model(model: Any, tokenizer: Any, out: Path) -> None:
    """mlx-lm's format (model.safetensors + index, config.json, tokenizer files), which
    `mlx_lm.load` reads and transformers reads too for an unquantised model."""
    from mlx_lm.utils import save_config, save_model

    out.mkdir(parents=True, exist_ok=True)
    lora = getattr(model, "lora_config", None)
    if lora is not None:
        import mlx.core as mx

        mx.save_safetensors(str(out / ADAPTERS_FILE), adapter_weights(model))
        (out / ADAPTER_CONFIG).write_text(lora, encoding="utf-8")
    with adapters_removed(model):
        save_model(out, model)
    config = model_config(model)
    quant = getattr(model, "quantization", None)
    if quant:
        config["quantization"] = quant
    save_config(config, out / "config.json")
    if model.mathrl_generation_config is not None:
        (out / "generation_config.json").write_text(model.mathrl_generation_config, "utf-8")
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


PLAIN_HEAD_TYPES = frozenset({"llama", "qwen2", "qwen3", "mistral"})
"""mlx-lm model types whose logits are exactly head(model.model(ids)) (no soft-capping or
scaling after the head, as Gemma has): their log-probs skip the prompt positions' logits."""


def output_head(model: Any) -> Any:
    """The vocabulary projection of an mlx-lm Llama/Qwen2-style model (hidden -> logits:
    lm_head, or the tied embedding), or None when the model is not laid out that way."""
    inner = getattr(model, "model", None)
    args = getattr(model, "args", None)
    if getattr(args, "model_type", None) not in PLAIN_HEAD_TYPES or inner is None:
        return None
    if getattr(args, "tie_word_embeddings", False):
        return inner.embed_tokens.as_linear
    return getattr(model, "lm_head", None)


def completion_logprobs_mlx(
    model: Any, ids: Any, pos: Any, return_entropy: bool = False
) -> tuple[Any, Any]:
    """(B, T) log-probs of the completion tokens (float32) and, if asked, their entropies
    (None otherwise), from one forward over the right-padded rows of completion_arrays."""
    import mlx.core as mx

    from mathrl.algorithms.mlx_forms import selective_logprobs_mlx, token_entropy_mlx

    inputs = ids[:, :-1]  # position k predicts token k + 1
    head = output_head(model)
    if head is None:  # an architecture without the usual layout: every position's logits
        picked = mx.take_along_axis(model(inputs), pos[:, :, None], axis=1)
    else:  # the head on the completion positions only: (B, T, V), not (B, L, V)
        hidden = mx.take_along_axis(model.model(inputs), pos[:, :, None], axis=1)
        picked = head(hidden)
    picked = picked.astype(mx.float32)
    targets = mx.take_along_axis(ids, pos + 1, axis=1)
    logprobs = selective_logprobs_mlx(picked, targets)
    entropy = token_entropy_mlx(picked) if return_entropy else None
    return logprobs, entropy


# ---- LoRA (mlx-lm's LoRALinear layers) ----------------------------------------------------
#
# A LoRA checkpoint's model/ dir holds the base weights (model.safetensors, as any MLX
# model) and the adapters in mlx-lm's layout beside them (adapters.safetensors +
# adapter_config.json), so `mlx_lm.load(dir, adapter_path=dir)` reads it, and mathrl
# loads it merged (eval, serve-like uses) or with trainable adapters (training, resume).

ADAPTERS_FILE = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def is_mlx_adapter_dir(path: Path) -> bool:
    """True for a dir holding mlx-lm adapters (peft's adapter_config.json has no
    lora_parameters)."""
    try:
        config = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and "lora_parameters" in config


def add_lora(
    model: Any, r: int, alpha: float, dropout: float, targets: list[str], seed: int
) -> Any:
    """Freeze the model and give every target linear layer (by module name, as
    model.lora.targets) trainable LoRA adapters, scale alpha / r, A drawn with `seed`."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import linear_to_lora_layers

    keys = sorted(
        {
            name
            for layer in model.layers
            for name, _ in layer.named_modules()
            if name.split(".")[-1] in targets
        }
    )
    if not keys:
        raise MathrlError(f"model.lora.targets {targets} name no linear layer of this model")
    model.freeze()
    mx.random.seed(seed)
    config = {"rank": r, "scale": alpha / r, "dropout": dropout, "keys": keys}
    linear_to_lora_layers(model, len(model.layers), config)
    adapter_config = {
        "fine_tune_type": "lora",
        "num_layers": len(model.layers),
        "lora_parameters": config,
        "mathrl": {"r": r, "alpha": alpha, "targets": sorted(targets)},
    }
    model.lora_config = json.dumps(adapter_config, indent=2)  # text: see load_mlx_model
    return model


def lora_settings(model: Any) -> tuple[int, float, set[str]] | None:
    """(r, alpha, targets) of a model's adapters, or None without adapters."""
    text = getattr(model, "lora_config", None)
    if text is None:
        return None
    m = json.loads(text)["mathrl"]
    return int(m["r"]), float(m["alpha"]), set(m["targets"])


@contextmanager
def adapters_removed(model: Any) -> Iterator[Any]:
    """The model with its LoRA layers swapped for their base layers, for the duration
    (saving the base weights under the plain model's names); restored afterwards."""
    from mlx.utils import tree_unflatten

    lora = [(n, m) for n, m in model.named_modules() if hasattr(m, "lora_a")]
    model.update_modules(tree_unflatten([(n, m.linear) for n, m in lora]))
    try:
        yield model
    finally:
        model.update_modules(tree_unflatten(lora))


def adapter_weights(model: Any) -> dict[str, Any]:
    """The LoRA A and B matrices by parameter name (mlx-lm's adapters.safetensors keys)."""
    from mlx.utils import tree_flatten

    return {
        n: v
        for n, v in tree_flatten(model.parameters())
        if n.rsplit(".", 1)[-1] in ("lora_a", "lora_b")
    }


def base_model(model: Any) -> Any:
    """A frozen copy of a LoRA model's base weights (adapters off): the KL reference."""
    with adapters_removed(model):
        ref = copy.deepcopy(model)
    ref.freeze()
    return ref
