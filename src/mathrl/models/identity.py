"""What makes two processes agree on a model: the tokenizer's fingerprint (same ids for the
same text) and a digest of the weights (the server samples from the trainer's parameters)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of the vocabulary and special tokens: equal means the same ids for any text."""
    data = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "eos": tokenizer.eos_token_id,
        "template": getattr(tokenizer, "chat_template", None),
    }
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over the trainable-or-not parameters by name, as fp32 bytes on the CPU.

    fp32 whatever the stored dtype, so a model saved in fp32 and loaded in fp32 elsewhere
    digests the same; names are peft-free (a LoRA model digests its merged-free state as is).
    """
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
