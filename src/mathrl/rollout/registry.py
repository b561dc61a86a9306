"""Rollout engines by name: the config picks one, the trainer calls make_engine.

An engine is registered as a factory `(model, tokenizer, **options) -> RolloutEngine`
that imports its module when called, so importing this registry (the config does, for
its list of choices) stays cheap. The caller passes every rollout option it has; each
factory takes the ones its engine uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mathrl.registry import Registry
from mathrl.rollout.types import RolloutEngine

EngineFactory = Callable[..., RolloutEngine]
ENGINES: Registry[EngineFactory] = Registry("rollout engine")
SERVER_ENGINES = frozenset({"openai"})
"""Engines that sample in another process: only the training loop's rollouts use them."""


@ENGINES.register("hf")
def _hf_engine(model: Any, tokenizer: Any, **kwargs: Any) -> RolloutEngine:
    """In-process, KV-cached decoding on a transformers model (HFEngine)."""
    from mathrl.rollout.hf_engine import HFEngine  # torch + transformers: only when used

    return HFEngine(
        model,
        tokenizer,
        **_pick(
            kwargs,
            "batch_size",
            "lean_decode",
            "reserve_kv",
            "autocast",
            "weights",
            "keep_copy",
            "static_decode",
            "compile",
        ),
    )


@ENGINES.register("mlx")
def _mlx_engine(model: Any, tokenizer: Any, **kwargs: Any) -> RolloutEngine:
    """In-process, KV-cached decoding on an mlx-lm model (backend = "mlx"): MLXEngine."""
    from mathrl.rollout.mlx_engine import MLXEngine

    return MLXEngine(model, tokenizer, **_pick(kwargs, "batch_size"))


@ENGINES.register("openai")
def _openai_engine(model: Any, tokenizer: Any, **kwargs: Any) -> RolloutEngine:
    """Rollouts from an OpenAI-compatible server (mathrl serve, vLLM): OpenAIEngine."""
    from mathrl.rollout.openai_engine import OpenAIEngine

    keys = (
        "base_url",
        "served_model",
        "api_key",
        "weight_sync",
        "weights_dir",
        "verify_weights",
        "check_tokenizer",
        "concurrency",
        "timeout_s",
    )
    return OpenAIEngine(model, tokenizer, **_pick(kwargs, *keys))


def _pick(options: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: options[k] for k in keys if k in options}


def make_engine(name: str, model: Any, tokenizer: Any, **kwargs: Any) -> RolloutEngine:
    """Build the engine registered as `name` (e.g. "hf") on a model and tokenizer."""
    return ENGINES.get(name)(model, tokenizer, **kwargs)
