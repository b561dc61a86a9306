"""A model mathrl loads, written as a plain HF dir: LoRA adapters merged into the weights.

The dir holds the model (safetensors) and its tokenizer, and nothing of peft, so plain
transformers, vLLM or a GGUF converter read it. It is written into a temp dir beside
`out` and renamed into place, so a failure leaves no half-written export.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mathrl.errors import MathrlError
from mathrl.models import lora
from mathrl.models.loading import load_model


def export_model(source: str | Path, out: Path, merge: bool) -> Path:
    """Write the model dir `source` to `out`; a LoRA dir needs `merge` (merge_and_unload)."""
    source = Path(source).expanduser()
    if lora.is_adapter_dir(source) and not merge:
        raise MathrlError(
            f"{source} holds LoRA adapters: pass --merge to fold them into the base weights"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MathrlError(f"{out} exists and is not empty; choose another --out")
    model, tokenizer = load_model(str(source), device="cpu")  # a LoRA dir loads merged
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
