"""Rollout engines by name: the config picks one, the trainer calls make_engine."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mathrl.errors import ConfigError
from mathrl.rollout.hf_engine import HFEngine
from mathrl.rollout.types import RolloutEngine

# name -> constructor (model, tokenizer, **kwargs); a vLLM engine would register here.
ENGINES: dict[str, Callable[..., RolloutEngine]] = {"hf": HFEngine}


def make_engine(name: str, model: Any, tokenizer: Any, **kwargs: Any) -> RolloutEngine:
    """Build the engine registered as `name` (e.g. "hf") on a model and tokenizer."""
    if name not in ENGINES:
        raise ConfigError(f"unknown rollout engine {name!r}; choose one of {', '.join(ENGINES)}")
    return ENGINES[name](model, tokenizer, **kwargs)
