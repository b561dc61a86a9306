"""Rollout engines by name: the config picks one, the trainer calls make_engine.

An engine is registered as a factory `(model, tokenizer, **kwargs) -> RolloutEngine`
that imports its module when called, so importing this registry (the config does, for
its list of choices) stays cheap. A vLLM or remote engine would register here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mathrl.registry import Registry
from mathrl.rollout.types import RolloutEngine

EngineFactory = Callable[..., RolloutEngine]
ENGINES: Registry[EngineFactory] = Registry("rollout engine")


@ENGINES.register("hf")
def _hf_engine(model: Any, tokenizer: Any, **kwargs: Any) -> RolloutEngine:
    """In-process, KV-cached decoding on a transformers model (HFEngine)."""
    from mathrl.rollout.hf_engine import HFEngine  # torch + transformers: only when used

    return HFEngine(model, tokenizer, **kwargs)


def make_engine(name: str, model: Any, tokenizer: Any, **kwargs: Any) -> RolloutEngine:
    """Build the engine registered as `name` (e.g. "hf") on a model and tokenizer."""
    return ENGINES.get(name)(model, tokenizer, **kwargs)
