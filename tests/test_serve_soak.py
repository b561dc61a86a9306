"""A bounded soak of `mathrl serve` on 127.0.0.1: a real server process and 64 concurrent
clients for SOAK_S seconds (default 60; MATHRL_SOAK_S changes it) mixing valid requests,
requests past the limits, malformed bodies and clients that hang up (after the whole
request or halfway through its body).

It asserts that every valid request is answered correctly (the right number of choices,
the prompt's ids echoed, token ids in range, log-probs equal to a forward pass of the model
for a sample of them), refused with 429 + Retry-After as often as the full queue needs, and
answered at the latest DRAIN_S seconds after the soak, when no new requests come; that
every bad one gets its 4xx; that the server's RSS stays within a bound after warm-up and
its log holds no traceback; and that after SIGTERM the process shuts down gracefully with
nothing left running (no child process, the port closed). MATHRL_SOAK_OUT=FILE writes the
figures as JSON (BENCHMARKS.md's "Serve soak").
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from mathrl.models.scratch import build_scratch_model  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SOAK_S = float(os.environ.get("MATHRL_SOAK_S", "60"))
CLIENTS = 64
DRAIN_S = 60.0
"""Seconds after the soak within which every refused valid request must be answered."""
KEY = "soak-key-0123"
TEXTS = [f"Using the numbers {a} {b} {a + b}, make {a * b}." for a in range(9) for b in range(9)]
LIMITS = ["--max-rows", "16", "--max-request-tokens", "256", "--max-queue-rows", "64"]
LIMITS += ["--max-queue-tokens", "1024", "--max-body-bytes", "65536", "--batch-rows", "16"]
AUTH = {"Authorization": f"Bearer {KEY}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in text:
            out.append(int(status.parent.name))
    return out


def valid_body(rng: random.Random) -> dict:
    prompts = [[rng.randrange(3, 270) for _ in range(rng.randrange(2, 12))]]
    if rng.random() < 0.3:
        prompts.append([rng.randrange(3, 270) for _ in range(3)])
    return {
        "model": "tiny",
        "prompt": prompts,
        "n": rng.choice([1, 2, 4]),
        "max_tokens": rng.randrange(4, 17),
        "temperature": 1.0,
        "seed": rng.randrange(1 << 31),
        "logprobs": 0,
        "return_token_ids": True,
    }


BAD = [  # (kind, body or raw bytes, status)
    ("too many rows", {"model": "tiny", "prompt": [[5, 6]] * 5, "n": 4, "max_tokens": 4}, 400),
    ("too many tokens", {"model": "tiny", "prompt": [5, 6], "n": 4, "max_tokens": 65}, 400),
    ("max_tokens past the cap", {"model": "tiny", "prompt": [5], "max_tokens": 10**6}, 400),
    ("body too large", {"model": "tiny", "prompt": "x" * 70_000}, 413),
    ("not JSON", b"{this is not json", 400),
    ("unknown field", {"model": "tiny", "prompt": [5], "max_token": 3}, 400),
    ("wrong type", {"model": "tiny", "prompt": [5], "n": "2"}, 400),
    ("a JSON array", b"[1, 2, 3]", 400),
]


def hang_up(port: int, payload: bytes, rng: random.Random) -> None:
    """Send a request (whole, or half its body) over a raw socket and close it."""
    cut = len(payload) if rng.random() < 0.7 else len(payload) // 2
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + payload[:cut])
        time.sleep(rng.choice([0.0, 0.01, 0.05]))


def check_answer(body: dict, reply: dict) -> list[tuple[list[int], list[int], list[float]]]:
    """The reply's choices checked against the request; (prompt, tokens, log-probs) each."""
    n, prompts = body["n"], body["prompt"]
    choices = reply["choices"]
    assert [c["index"] for c in choices] == list(range(len(prompts) * n))
    out = []
    for c in choices:
        prompt, tokens = c["prompt_token_ids"], c["token_ids"]
        assert prompt == prompts[c["index"] // n]
        assert 1 <= len(tokens) <= body["max_tokens"] and all(0 <= t < 277 for t in tokens)
        lps = c["logprobs"]["token_logprobs"]
        assert len(lps) == len(tokens) and all(x <= 0 for x in lps)
        assert c["finish_reason"] in ("stop", "length")
        out.append((prompt, tokens, lps))
    return out


def client(
    i: int,
    port: int,
    until: float,
    stats: Counter,
    answered: list,
    samples: list,
):
    rng = random.Random(i)
    url = f"http://127.0.0.1:{port}/v1/completions"
    with httpx.Client(headers=AUTH, timeout=60) as http:
        while time.monotonic() < until:
            roll = rng.random()
            if roll < 0.5:
                body = valid_body(rng)
                started, tries = time.monotonic(), 1
                # 64 closed-loop clients keep the queue full, so a refused request may wait
                # until the soak's end; once no new requests come it must get through
                while (r := http.post(url, json=body)).status_code == 429:
                    stats["valid busy (429)"] += 1
                    assert r.headers["retry-after"] == "1"
                    assert time.monotonic() < until + DRAIN_S, f"still 429 after {tries} tries"
                    time.sleep(float(r.headers["retry-after"]) * rng.uniform(0.5, 1.0))
                    tries += 1
                assert r.status_code == 200, r.text
                got = check_answer(body, r.json())
                answered.append((time.monotonic() - started, tries))
                stats["valid answered"] += 1
                if len(samples) < 24 and rng.random() < 0.1:
                    samples.append(got[0])
            elif roll < 0.8:
                kind, payload, status = BAD[rng.randrange(len(BAD))]
                if isinstance(payload, bytes):
                    r = http.post(
                        url, content=payload, headers={"Content-Type": "application/json"}
                    )
                else:
                    r = http.post(url, json=payload)
                assert r.status_code in (status, 429) and "error" in r.json(), (kind, r.text)
                stats[f"bad: {kind}"] += 1
            else:
                hang_up(port, json.dumps(valid_body(rng)).encode(), rng)
                stats["hung up"] += 1


def test_serve_soak(tmp_path):
    import torch

    from mathrl.models.loading import load_model

    model_dir = build_scratch_model(
        tmp_path / "m", TEXTS, seed=0, hidden=32, layers=1, heads=2, vocab_size=300,
        max_position=256,
    )  # fmt: skip
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    cmd = [sys.executable, "-m", "mathrl", "serve", "--model", str(model_dir), "--port", str(port)]
    cmd += ["--api-key-env", "SOAK_KEY", "--served-model-name", "tiny", *LIMITS]
    cmd += ["--set", "model.threads=1"]
    env = {**os.environ, "SOAK_KEY": KEY, "HF_HUB_OFFLINE": "1"}  # nothing downloads
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 240  # a loaded 2-core machine starts torch slowly
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.2)
        rss: list[tuple[float, float]] = []
        stats: Counter[str] = Counter()
        answered: list[tuple[float, int]] = []  # (latency s, tries) of each valid request
        samples: list = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        t0 = time.monotonic()
        until = t0 + SOAK_S

        def run(i: int) -> None:
            mine: Counter[str] = Counter()  # one per client: no lost updates
            try:
                client(i, port, until, mine, answered, samples)
            except BaseException as exc:  # reported below
                errors.append(exc)
            finally:
                with lock:
                    stats.update(mine)

        threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            rss.append((time.monotonic() - t0, rss_mb(server.pid)))
            time.sleep(1.0)
        for t in threads:
            t.join(60)
        assert not errors, repr(errors[:3])
        health = httpx.get(f"http://127.0.0.1:{port}/health", headers=AUTH, timeout=10).json()
        kids = children(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(30)
        finally:
            if server.poll() is None:
                server.kill()
        log.close()
    text = (tmp_path / "server.log").read_text()
    # a graceful shutdown: uvicorn (>= 0.29; we need 0.30) finishes it, then re-raises the
    # SIGTERM it caught, so a supervisor sees the signal (exit 143 in a shell, as train's)
    assert code == -signal.SIGTERM and "Traceback" not in text, (code, text[-3000:])
    assert "Application shutdown complete." in text
    assert kids == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)

    # every kind was exercised, and the server's counters agree with the clients'
    assert stats["valid answered"] >= 100 and stats["hung up"] >= 20
    assert sum(v for k, v in stats.items() if k.startswith("bad")) >= 50
    assert health["requests_done"] >= stats["valid answered"]
    assert health["engine_calls"] < health["requests_done"]  # batched
    assert health["queued_rows"] == 0 and health["queued_tokens"] == 0
    # the answers are the model's: log-probs equal a full forward of the served model
    model = load_model(str(model_dir), dtype="float32", device="cpu")[0]
    for prompt, tokens, lps in samples:
        ids = torch.tensor([prompt + tokens])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        rows = torch.arange(len(prompt) - 1, len(prompt) + len(tokens) - 1)
        assert lps == pytest.approx(logp[rows, torch.tensor(tokens)].tolist(), abs=1e-4)
    # RSS bounded: after a warm-up of a quarter of the run it grows by at most 15% + 64 MB
    warm = [m for t, m in rss if t >= SOAK_S / 4]
    assert warm and max(warm) <= warm[0] * 1.15 + 64, rss

    latencies, tries = zip(*answered, strict=True)
    figures = {
        "soak_s": SOAK_S,
        "clients": CLIENTS,
        "requests": dict(stats),
        "valid_latency_s": {
            "p50": statistics.median(latencies),
            "p95": statistics.quantiles(latencies, n=20)[-1],
        },
        "valid_per_s": stats["valid answered"] / SOAK_S,
        "valid_tries": {"max": max(tries), "p95": statistics.quantiles(tries, n=20)[-1]},
        "rss_mb": {"start": rss[0][1], "after_warmup": warm[0], "max": max(m for _, m in rss)},
        "server": {k: v for k, v in health.items() if isinstance(v, int)},
        "forward_checked": len(samples),
    }
    if os.environ.get("MATHRL_SOAK_OUT"):
        Path(os.environ["MATHRL_SOAK_OUT"]).write_text(json.dumps(figures, indent=1))
