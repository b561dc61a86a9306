"""Convert between HF models and mlx-lm's format (optionally quantised), for `mathrl convert`.

to_mlx: any model load_mlx_model reads (HF dir, hub id, .gguf, a named model, an MLX dir)
becomes an mlx-lm dir that `mlx_lm.load` / `mlx_lm.generate` read: float, or quantised by
mlx-lm's own `quantize_model` (affine, `bits` per weight in groups of `group_size`).
to_hf: an MLX dir (quantised or not) becomes float safetensors + config + tokenizer that
transformers' `from_pretrained` reads: mlx-lm's `dequantize_model`, then the weights under
their names, which for Qwen2/Llama are transformers' own (checked before writing: a name
transformers does not expect, or one it expects and misses, is an error, since it would
otherwise random-initialise the missing weight with only a warning).

Both write into a temp dir beside `out` and rename it into place, so a failure leaves no
half-written `out`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError
from mathrl.models.mlx_model import (
    DTYPE_NAMES,
    config_overrides,
    is_mlx_adapter_dir,
    load_adapters,
    local_model_dir,
    require_mlx,
)

QUANT_BITS = (2, 3, 4, 5, 6, 8)  # mlx's affine quantisation
GROUP_SIZES = (32, 64, 128)
QUANT_KEYS = ("quantization", "quantization_config")
FLOAT_DTYPES = ("float32", "bfloat16", "float16")
# Files beside the weights that describe generation, copied unchanged.
COPIED_FILES = ("generation_config.json",)


@dataclass(frozen=True)
class Converted:
    """What a conversion wrote."""

    out: Path
    files: int
    size_bytes: int
    bits_per_weight: float  # mlx-lm's measure: 32 / 16 for float, ~8.5 for 8-bit in groups of 64

    def summary(self) -> str:
        mb = self.size_bytes / 2**20
        return (
            f"wrote {self.out} ({self.files} files, {mb:.1f} MiB, "
            f"{self.bits_per_weight:.2f} bits per weight)"
        )


def to_mlx(
    source: str,
    out: Path,
    bits: int | None = None,
    group_size: int = 64,
    dtype: str = "auto",
    force: bool = False,
) -> Converted:
    """`source` as an mlx-lm dir at `out`: float in `dtype` (auto: the source's), or quantised."""
    require_mlx()
    if bits is not None and bits not in QUANT_BITS:
        raise MathrlError(f"--bits {bits}: mlx quantises to {', '.join(map(str, QUANT_BITS))} bits")
    if group_size not in GROUP_SIZES:
        raise MathrlError(
            f"--group-size {group_size}: choose one of {', '.join(map(str, GROUP_SIZES))}"
        )
    check_dtype(dtype)
    check_out(out, force)
    model_dir = local_model_dir(source)
    check_not_source(out, model_dir)
    from mlx_lm.utils import compute_bits_per_weight, quantize_model, save_config, save_model

    target = source_dtype(model_dir) if dtype == "auto" else DTYPE_NAMES[dtype]
    model, config = _load_float(model_dir, target)
    if bits is not None:
        with contextlib.redirect_stdout(io.StringIO()):  # mlx-lm prints its own INFO line
            model, config = quantize_model(model, config, group_size, bits)
        if not _has_quantized(model):
            raise MathrlError(
                f"--group-size {group_size}: no layer's input size is a multiple of it, "
                "so nothing was quantised; try a smaller --group-size"
            )
    bpw = float(compute_bits_per_weight(model))
    with atomic_dir(out) as tmp:
        save_model(tmp, model)
        save_config(config, tmp / "config.json")
        _copy_tokenizer(model_dir, tmp)
    return _converted(out, bpw)


def to_hf(source: str, out: Path, dtype: str = "auto", force: bool = False) -> Converted:
    """The MLX model `source` as float safetensors + config + tokenizer (auto: float32)."""
    require_mlx()
    check_dtype(dtype)
    check_out(out, force)
    model_dir = local_model_dir(source)
    check_not_source(out, model_dir)
    if not is_mlx_dir(model_dir):
        raise MathrlError(
            f"{source} is not an MLX model (its safetensors are not mlx-lm's and its "
            "config.json has no quantization); transformers reads it as it is"
        )
    from mlx.utils import tree_flatten
    from mlx_lm.utils import compute_bits_per_weight

    target = "float32" if dtype == "auto" else DTYPE_NAMES[dtype]
    model, config = _load_float(model_dir, target)
    weights = dict(tree_flatten(model.parameters()))
    check_hf_names(config, set(weights))
    bpw = float(compute_bits_per_weight(model))
    with atomic_dir(out) as tmp:
        save_hf_weights(weights, tmp)
        (tmp / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=2))
        _copy_tokenizer(model_dir, tmp)
    return _converted(out, bpw)


def save_hf_weights(weights: dict[str, Any], out: Path) -> None:
    """mx arrays as transformers' safetensors: one file, or mlx-lm's shards + an index."""
    import mlx.core as mx
    from mlx_lm.utils import make_shards

    shards = make_shards(weights)
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    if len(shards) == 1:
        names = ["model.safetensors"]
    weight_map = {}
    for name, shard in zip(names, shards, strict=True):
        # "pt": what transformers itself writes (and not "mlx", which is_mlx_dir looks for)
        mx.save_safetensors(str(out / name), shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(v.nbytes for v in weights.values())}}
        index["weight_map"] = dict(sorted(weight_map.items()))
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _load_float(model_dir: Path, dtype: str) -> tuple[Any, dict[str, Any]]:
    """(mlx-lm model with every layer dequantised, cast to `dtype`; its config, no quant keys)."""
    import mlx.core as mx
    from mlx_lm.utils import dequantize_model, load_model

    overrides = config_overrides(model_dir)
    try:
        model, _ = load_model(model_dir, model_config=overrides)
    except (ValueError, FileNotFoundError) as e:
        raise MathrlError(f"mlx-lm cannot load {model_dir}: {e}") from None
    if is_mlx_adapter_dir(model_dir):  # a LoRA checkpoint: the adapters merged in
        load_adapters(model, model_dir, merge=True)  # fused into dequantised weights
    model = dequantize_model(model)  # a no-op for a float model
    model.set_dtype(getattr(mx, dtype))  # floating-point parameters only
    # The raw file, not mlx-lm's load_config (which adds generation_config's eos ids).
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    config.update(overrides)
    for key in QUANT_KEYS:
        config.pop(key, None)
    config["dtype"] = dtype
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype
    return model, config


def _has_quantized(model: Any) -> bool:
    import mlx.nn as nn

    return any(
        isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding) for _, m in model.named_modules()
    )


def check_hf_names(config: dict[str, Any], names: set[str]) -> None:
    """Raise unless `names` are the weights transformers' model for `config` expects."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        hf_config = AutoConfig.for_model(**config)
    except (ValueError, KeyError) as e:
        raise MathrlError(f"transformers does not know this model's config: {e}") from None
    with torch.device("meta"):
        expected = set(AutoModelForCausalLM.from_config(hf_config).state_dict())
    if config.get("tie_word_embeddings", getattr(hf_config, "tie_word_embeddings", False)):
        expected.discard("lm_head.weight")  # one tensor with the input embeddings
    missing, unexpected = sorted(expected - names), sorted(names - expected)
    if missing or unexpected:
        raise MathrlError(
            f"mlx-lm's weight names for model_type {config.get('model_type')!r} are not "
            f"transformers': missing {missing[:3]}, unexpected {unexpected[:3]}"
        )


def is_mlx_dir(path: Path) -> bool:
    """An mlx-lm dir: quantisation in config.json, or safetensors that mlx wrote."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if any(key in config for key in QUANT_KEYS):
        return True
    files = sorted(path.glob("model*.safetensors"))  # not a LoRA dir's adapters.safetensors
    return bool(files) and safetensors_metadata(files[0]).get("format") == "mlx"


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's header (8-byte length, then JSON)."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return dict(header.get("__metadata__") or {})


def source_dtype(model_dir: Path) -> str:
    """The float dtype config.json names (transformers 5 `dtype`, 4.x `torch_dtype`), else fp32."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype")
    return name if name in FLOAT_DTYPES else "float32"


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPE_NAMES:
        raise MathrlError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPE_NAMES)}")


def check_out(out: Path, force: bool) -> None:
    """Refuse an `out` that holds something, unless `force` (then it is replaced)."""
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise MathrlError(f"{out} exists and is not empty; choose another --out or pass --force")


def check_not_source(out: Path, model_dir: Path) -> None:
    """Refuse an `out` that is, or holds, the model being converted (--force would delete it)."""
    src, dst = model_dir.resolve(), out.resolve()
    if src == dst or dst in src.parents:
        raise MathrlError(f"--out {out} holds the model being converted; choose another --out")


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """A temp dir beside `out`, renamed to `out` when the block succeeds, removed when not."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    for stale in (tmp, old):
        _remove(stale)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists() or out.is_symlink():
            os.replace(out, old)  # an empty dir, or --force: gone once the new out is in place
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _copy_tokenizer(model_dir: Path, out: Path) -> None:
    """The source's tokenizer as transformers saves it, and its generation config."""
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(str(out))
    for name in COPIED_FILES:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out / name)


def _converted(out: Path, bits_per_weight: float) -> Converted:
    files = [p for p in out.rglob("*") if p.is_file()]
    return Converted(out, len(files), sum(p.stat().st_size for p in files), bits_per_weight)
