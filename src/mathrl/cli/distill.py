"""`mathrl distill`: a thin command over distill.py (teacher traces from an OpenAI-compatible
endpoint, scored, kept as SFT pairs)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from mathrl.cli.app import app
from mathrl.cli.options import EPILOG, ConfigOpt, SetOpt

EndpointOpt = Annotated[
    str,
    typer.Option(
        help="Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 "
        "(requests go to <URL>/chat/completions)."
    ),
]
OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        help="Trace file (JSONL, appended); rerunning with it skips what is written.",
    ),
]
ApiKeyEnvOpt = Annotated[
    str,
    typer.Option(help="Environment variable holding the API key (unset: none is sent)."),
]
KeepOpt = Annotated[
    str,
    typer.Option(help="Traces in the SFT pairs file: 'correct' (by the task's reward) or 'all'."),
]
SftOutOpt = Annotated[
    Path | None,
    typer.Option(
        help="SFT pairs file that `mathrl sft --data` reads, rewritten from --out at the "
        "end (default: --out with .sft.jsonl)."
    ),
]
LimitOpt = Annotated[
    int, typer.Option(help="Problems to use (a seeded sample of the split); 0 = all.")
]
MaxTokensOpt = Annotated[
    int | None, typer.Option(help="max_tokens per request (default rollout.max_new_tokens).")
]
TemperatureOpt = Annotated[
    float | None, typer.Option(help="Sampling temperature (default rollout.temperature).")
]
TimeoutOpt = Annotated[
    float, typer.Option(help="Seconds one request may take in all before it is retried.")
]
MaxRetriesOpt = Annotated[
    int,
    typer.Option(
        help="Retries of one request on 429, 5xx, timeouts, dropped connections and bad answers."
    ),
]
BackoffOpt = Annotated[
    float,
    typer.Option(
        help="First retry waits about this many seconds, doubling each time (max 60 s, "
        "jittered; a longer Retry-After wins)."
    ),
]
RateLimitOpt = Annotated[
    float, typer.Option(help="Most requests started per second, retries included; 0 = none.")
]
SeedOpt = Annotated[
    bool,
    typer.Option(
        help="Send a per-trace seed (from the config's seed); --no-seed for endpoints "
        "that refuse the field."
    ),
]


@app.command("distill", epilog=EPILOG)
def distill_cmd(
    endpoint: EndpointOpt,
    model: Annotated[str, typer.Option("--model", "-m", help="Model name the endpoint serves.")],
    out: OutOpt,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    n: Annotated[int, typer.Option("--n", help="Samples per problem.")] = 4,
    concurrency: Annotated[int, typer.Option(help="Requests in flight at once.")] = 8,
    api_key_env: ApiKeyEnvOpt = "OPENAI_API_KEY",
    keep: KeepOpt = "correct",
    sft_out: SftOutOpt = None,
    limit: LimitOpt = 0,
    max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None,
    timeout: TimeoutOpt = 600.0,
    max_retries: MaxRetriesOpt = 6,
    backoff: BackoffOpt = 1.0,
    rate_limit: RateLimitOpt = 0.0,
    split: Annotated[str, typer.Option(help="Problems from this split: train, val or test.")] = (
        "train"
    ),
    seed: SeedOpt = True,
) -> None:
    """Sample a teacher's solutions from an OpenAI-compatible endpoint, score them with the
    task's reward, and write traces plus the SFT pairs `mathrl sft --data` reads."""
    from mathrl.distill import DistillOptions, chat_url, run_distill
    from mathrl.loggers import say
    from mathrl.runs.start import load_run_config, prepare_backend, start_process

    opts = DistillOptions(
        endpoint=endpoint,
        model=model,
        out=out,
        n=n,
        concurrency=concurrency,
        api_key=os.environ.get(api_key_env) or None,
        keep=keep,
        sft_out=sft_out,
        limit=limit,
        max_tokens=max_tokens,
        temperature=temperature,
        timeout_s=timeout,
        max_retries=max_retries,
        rate_limit=rate_limit,
        split=split,
        backoff_s=backoff,
        seed=seed,
    )
    url, _ = chat_url(endpoint)  # a bad URL stops here, before the task is built
    host = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    loopback = host.startswith(("127.", "localhost", "[::1]"))
    if opts.api_key and url.startswith("http://") and not loopback:
        say(f"warning: sending the API key from ${api_key_env} over plain http to {host}")
    cfg = load_run_config(config, sets)
    prepare_backend(cfg)
    task = start_process(cfg)
    run_distill(cfg, task, opts, say)
