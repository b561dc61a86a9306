"""`mathrl serve`: a thin command over serve/launch.py (an OpenAI-compatible server)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mathrl.cli.app import app
from mathrl.cli.options import EPILOG, MODEL_HELP, ConfigOpt, SetOpt


@app.command("serve", epilog=EPILOG)
def serve_cmd(
    model: Annotated[str | None, typer.Option("--model", "-m", help=MODEL_HELP)] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback exposes the model.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            help="Name of an environment variable holding the API key; requests must then "
            "send 'Authorization: Bearer <key>' (401 otherwise)."
        ),
    ] = None,
    weights_root: Annotated[
        Path | None,
        typer.Option(
            help="POST /v1/load_weights may load checkpoints from under this directory only "
            "(symlinks and .. resolved); without it, load_weights is refused."
        ),
    ] = None,
    served_model_name: Annotated[
        str | None, typer.Option(help="The model id clients send (default: --model as given).")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Largest max_tokens a request may ask.")] = 4096,
    max_n: Annotated[int, typer.Option(help="Largest n a request may ask.")] = 64,
    max_body_bytes: Annotated[
        int, typer.Option(help="Largest request body (413 beyond it).")
    ] = 1_048_576,
    max_rows: Annotated[
        int, typer.Option(help="Largest rows (prompts x n) one request may ask (400 beyond).")
    ] = 256,
    max_request_tokens: Annotated[
        int,
        typer.Option(
            help="Largest rows x max_tokens one request may ask (400 beyond; a request "
            "without max_tokens counts the most the context leaves)."
        ),
    ] = 262_144,
    max_queue_rows: Annotated[
        int,
        typer.Option(
            help="Rows of all requests queued or running; a request past it gets 429 with "
            "Retry-After."
        ),
    ] = 4096,
    max_queue_tokens: Annotated[
        int,
        typer.Option(
            help="Rows x max_tokens of all requests queued or running; past it: 429 with "
            "Retry-After."
        ),
    ] = 8_388_608,
    batch_rows: Annotated[
        int | None,
        typer.Option(help="Rows (prompts x n) per engine call (default rollout.batch_size)."),
    ] = None,
    batch_wait_ms: Annotated[
        float, typer.Option(help="How long an idle server waits for more requests to batch.")
    ] = 10.0,
) -> None:
    """Serve a model over HTTP with OpenAI's API (chat, completions, models), batched."""
    from mathrl.errors import ConfigError
    from mathrl.serve.launch import build_state, run_server
    from mathrl.serve.schemas import Limits

    try:
        limits = Limits(
            max_body_bytes=max_body_bytes,
            max_n=max_n,
            max_tokens=max_tokens,
            max_rows=max_rows,
            max_request_tokens=max_request_tokens,
            max_queue_rows=max_queue_rows,
            max_queue_tokens=max_queue_tokens,
        )
    except ValueError as e:
        raise ConfigError(f"serve limits: {e}") from None
    state = build_state(
        model,
        config,
        sets,
        api_key_env=api_key_env,
        weights_root=weights_root,
        name=served_model_name,
        limits=limits,
        batch_rows=batch_rows,
        batch_wait_s=batch_wait_ms / 1000,
    )
    run_server(state, host, port)
