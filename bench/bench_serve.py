"""Rollout tokens/s through `mathrl serve` over HTTP vs the in-process engine (the HTTP cost).

Usage: .venv/bin/python bench/bench_serve.py [--prompts 16 --n 4 --tokens 64 --runs 3]

One scratch model, one workload (prompts x n samples, exactly --tokens tokens each:
ignore_eos), three ways:
- in-process: HFEngine.generate, what the trainer calls (on the server's worker thread);
- http, one request: /v1/completions with every prompt as token ids, n, logprobs=0 and
  return_token_ids (what an RL client of the server sends);
- http, concurrent: one /v1/chat/completions request per prompt, all at once (the server
  batches them);
- openai engine: `rollout.engine = "openai"`'s OpenAIEngine.generate, what the trainer
  calls: one seeded /v1/completions request per prompt with token ids, all at once.
The server runs in a thread of this process on 127.0.0.1 (uvicorn), so client and server
share the CPU as they would on one machine. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import torch
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rollout import corpus  # noqa: E402

from mathrl.models.scratch import build_scratch_model  # noqa: E402
from mathrl.rollout.openai_engine import OpenAIEngine  # noqa: E402
from mathrl.rollout.types import SamplingParams  # noqa: E402
from mathrl.serve.app import create_app  # noqa: E402
from mathrl.serve.launch import build_state  # noqa: E402


def timed(fn: Callable[[], int], runs: int) -> tuple[float, int]:
    """Median seconds of `runs` calls after one warm-up, and the tokens one call makes."""
    tokens = fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    # One thread: the tiny model gains nothing from two, and on a shared CPU an OpenMP
    # barrier waiting for a descheduled thread makes timings swing 10x.
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts = corpus(600)
    tmp = Path(tempfile.mkdtemp())
    model_dir = build_scratch_model(
        tmp / "m", texts, hidden=args.hidden, layers=args.layers, heads=4, vocab_size=1024
    )
    sets = [f"model.threads={args.threads}", "rollout.batch_size=256", "model.device=cpu"]
    state = build_state(str(model_dir), None, sets, name="bench", batch_wait_s=0.02)
    tok = state.tokenizer
    prompts = [tok.encode(t)[:32] for t in texts[: args.prompts]]
    sampling = SamplingParams(n=args.n, max_new_tokens=args.tokens, ignore_eos=True, seed=0)

    def in_process() -> int:
        # Through the batcher's worker thread, as the server runs it: torch's CPU thread pool
        # behaves differently on the main thread, which would measure that, not HTTP.
        completions = state.batcher.submit(prompts, sampling).result()
        return sum(len(c.token_ids) for c in completions)

    state.batcher.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(state), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=args.prompts))
    common = {"model": "bench", "max_tokens": args.tokens, "ignore_eos": True, "n": args.n}

    def one_request() -> int:
        body = {**common, "prompt": prompts, "logprobs": 0, "return_token_ids": True}
        r = http.post(url + "/completions", json=body).raise_for_status().json()
        return sum(len(c["token_ids"]) for c in r["choices"])

    def concurrent() -> int:
        def ask(text: str) -> int:
            body = {**common, "messages": [{"role": "user", "content": text[:100]}]}
            r = http.post(url + "/chat/completions", json=body).raise_for_status().json()
            return int(r["usage"]["completion_tokens"])

        with ThreadPoolExecutor(args.prompts) as pool:
            return sum(pool.map(ask, texts[: args.prompts]))

    rows = {}
    for name, fn in [("in-process", in_process), ("http, one request", one_request)]:
        rows[name] = timed(fn, args.runs)
    calls = state.batcher.engine_calls
    rows["http, concurrent"] = timed(concurrent, args.runs)
    calls_per_round = (state.batcher.engine_calls - calls) / (args.runs + 1)
    model = state.batcher.engine.model  # type: ignore[attr-defined]
    engine = OpenAIEngine(model, tok, url, served_model="bench", weight_sync="none")

    def openai_engine() -> int:
        return engine.generate(prompts, sampling).tokens_generated

    rows["openai engine"] = timed(openai_engine, args.runs)
    server.should_exit = True
    thread.join(10)

    base = rows["in-process"][1] / rows["in-process"][0]
    print(
        f"{args.prompts} prompts x {args.n} samples x {args.tokens} tokens, {args.threads} threads"
    )
    print(f"{'path':<20} {'seconds':>8} {'tokens/s':>10} {'vs in-process':>14}")
    result = {"workload": vars(args), "engine_calls_per_concurrent_round": calls_per_round}
    for name, (secs, tokens) in rows.items():
        rate = tokens / secs
        print(f"{name:<20} {secs:>8.3f} {rate:>10.0f} {rate / base:>13.2f}x")
        result[name] = {"seconds": secs, "tokens": tokens, "tokens_per_s": rate}
    print(f"engine calls per concurrent round of {args.prompts} requests: {calls_per_round:g}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
