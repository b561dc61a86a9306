"""LoRA adapters (peft): attach, save beside a reference to their base, reload, check.

A LoRA checkpoint's model dir holds what peft writes (`adapter_config.json`,
`adapter_model.safetensors`), the tokenizer, and `mathrl_base.json`, which names the base
the way mathrl's loader reads it (a named model, a `.gguf`, a hub id or a local dir; local
paths absolute, plus relative to the dir, so a moved run dir still finds its own scratch
base). peft's `base_model_name_or_path` is made absolute too, so plain transformers + peft
load the dir without mathrl:

    base = AutoModelForCausalLM.from_pretrained(adapter_config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, "CKPT/model")

The dir has no config.json on purpose: with one, transformers' own adapter support would
take the dir for a full model with an embedded adapter and look for its weights there.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError

ADAPTER_CONFIG = "adapter_config.json"
BASE_FILE = "mathrl_base.json"
_ATTR = "_mathrl_lora_base"
PEFT_HINT = "pip install 'mathrl[peft]'"


def require_peft() -> Any:
    """The peft module, or one line saying how to install it."""
    try:
        import peft
    except ImportError:
        raise MathrlError(f"LoRA adapters need the peft package: {PEFT_HINT}") from None
    return peft


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft reads transformers' deprecated `is_gradient_checkpointing` when it wraps a
    model; the FutureWarning is theirs to fix, not something a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        yield


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path).expanduser() / ADAPTER_CONFIG).is_file()


def is_model_dir(path: str | Path) -> bool:
    """A dir mathrl's loader reads: a full HF model (config.json) or LoRA adapters."""
    p = Path(path).expanduser()
    return (p / "config.json").is_file() or (p / ADAPTER_CONFIG).is_file()


def is_peft_model(model: Any) -> bool:
    """True for a peft model (no import of peft when nothing has loaded it)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def portable(source: str) -> str:
    """A local model path made absolute; named models and hub ids unchanged."""
    local = Path(source).expanduser()
    return str(local.resolve()) if local.exists() else source


def add_adapters(
    model: Any, r: int, alpha: float, dropout: float, targets: list[str], base: str
) -> Any:
    """Wrap `model` (loaded from `base`) with new LoRA adapters; only they are trainable."""
    peft = require_peft()
    conf = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets)
    )
    with _quiet_peft():
        wrapped = peft.get_peft_model(model, conf)
    setattr(wrapped, _ATTR, portable(base))
    return wrapped


def load_adapters(model: Any, adapter_dir: str | Path, trainable: bool) -> Any:
    """The base `model` with the adapters saved in `adapter_dir` (trainable or frozen)."""
    peft = require_peft()
    with _quiet_peft():
        wrapped = peft.PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    setattr(wrapped, _ATTR, base_reference(adapter_dir))
    return wrapped


def adapter_settings(model: Any) -> tuple[int, float, set[str]]:
    """(r, alpha, target module names) of a peft model's active adapter."""
    conf = model.peft_config[model.active_adapter]
    return int(conf.r), float(conf.lora_alpha), set(conf.target_modules)


def save_adapters(model: Any, out: Path) -> None:
    """peft's adapter files, with the base named for peft (absolute) and for mathrl."""
    model.save_pretrained(out, safe_serialization=True)
    conf_path = out / ADAPTER_CONFIG
    conf = json.loads(conf_path.read_text(encoding="utf-8"))
    conf["base_model_name_or_path"] = portable(conf.get("base_model_name_or_path") or "")
    if isinstance(conf.get("target_modules"), list):  # a set in peft: same bytes every run
        conf["target_modules"] = sorted(conf["target_modules"])
    conf_path.write_text(json.dumps(conf, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    base = getattr(model, _ATTR, None) or conf["base_model_name_or_path"]
    info: dict[str, str] = {"path": base}
    if Path(base).is_dir():
        info["relative"] = os.path.relpath(base, out)
    (out / BASE_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _is_local(path: str) -> bool:
    return Path(path).is_absolute() or path.startswith(("./", "../", "~"))


def base_reference(adapter_dir: str | Path) -> str:
    """What load_model reads for the base of the adapters in `adapter_dir`.

    In order: mathrl_base.json's path, the same relative to the dir (a moved run dir), then
    peft's base_model_name_or_path; a local path that no longer exists is passed over.
    """
    d = Path(adapter_dir).expanduser()
    info = json.loads((d / BASE_FILE).read_text()) if (d / BASE_FILE).is_file() else {}
    conf = json.loads((d / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    candidates = [
        info.get("path"),
        str((d / info["relative"]).resolve()) if info.get("relative") else None,
        conf.get("base_model_name_or_path"),
    ]
    tried = [c for c in candidates if c]
    for c in tried:
        if not _is_local(c) or Path(c).expanduser().exists():
            return c
    raise MathrlError(
        f"LoRA adapters in {d}: their base model is gone (looked for {', '.join(tried) or 'nothing named'})"
    )
