"""Build the served state from CLI arguments and run uvicorn on it (`mathrl serve`)."""

from __future__ import annotations

import ipaddress
from functools import partial
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError
from mathrl.groups import rollout_engine
from mathrl.loggers import say
from mathrl.model_source import resolve_model
from mathrl.models.loading import load_model
from mathrl.run_setup import quiet_libraries, set_seed, set_threads
from mathrl.runs.start import load_run_config
from mathrl.serve.app import create_app
from mathrl.serve.schemas import Limits
from mathrl.serve.server import ServeState, api_key_from_env, context_length


def build_state(
    model: str | None,
    config: Any = None,
    sets: list[str] | None = None,
    api_key_env: str | None = None,
    weights_root: Path | None = None,
    name: str | None = None,
    limits: Limits | None = None,
    batch_rows: int | None = None,
    batch_wait_s: float = 0.01,
) -> ServeState:
    """Load the model (as `mathrl eval --model` does) and its engine per the config."""

    cfg = load_run_config(config, sets)
    api_key = api_key_from_env(api_key_env)  # before the (slow) load: fail fast
    if weights_root is not None and not Path(weights_root).is_dir():
        raise MathrlError(f"--weights-root {weights_root}: not a directory")
    path = model or cfg.model.path
    source = resolve_model(path)
    if source == "scratch":
        raise MathrlError(
            "'scratch' is an untrained model built for a task: serve a checkpoint or a run dir"
        )
    quiet_libraries()
    set_threads(cfg.model.threads)
    set_seed(cfg.seed)
    m = cfg.model
    loader = partial(load_model, dtype=m.dtype, device=m.device, autocast=m.autocast)
    policy, tokenizer = loader(source)
    engine = rollout_engine(cfg, policy, tokenizer)
    return ServeState(
        engine,
        tokenizer,
        name=name or path,
        source=source,
        loader=loader,
        context=context_length(policy),
        api_key=api_key,
        weights_root=weights_root,
        limits=limits,
        max_rows=batch_rows or cfg.rollout.batch_size,
        max_wait_s=batch_wait_s,
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(state: ServeState, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until Ctrl-C / SIGTERM (uvicorn handles both and finishes open requests)."""
    import uvicorn  # the serve extra: only `mathrl serve` needs it

    if not is_loopback(host) and state.api_key is None:
        say(f"warning: serving on {host} without an API key: anyone who can reach it can use it")
    key = "required" if state.api_key else "not required"
    root = state.weights_root or "off (no --weights-root)"
    say(f"serving '{state.name}' on http://{host}:{port}/v1 (API key {key}; load_weights: {root})")
    config = uvicorn.Config(
        create_app(state),
        host=host,
        port=port,
        log_level="info",
        timeout_keep_alive=5,
        # h11 refuses header blocks larger than this (uvicorn's default is 64 KiB)
        h11_max_incomplete_event_size=16 * 1024,
    )
    uvicorn.Server(config).run()
