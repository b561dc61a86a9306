"""`mathrl serve`'s bounds on work: rows and tokens per request, a bounded queue (429 with
Retry-After), and jobs dropped when their client goes away, on a real uvicorn server on
127.0.0.1 with a tiny scratch model. The batcher's worker is held at its next engine call
by the weight-swap lock (what a load_weights holds), so "queued" and "running" are states
the tests set up, not races they hope for."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

import mathrl.cli.serve  # noqa: E402,F401  registers `mathrl serve` on the CLI app
from conftest import serve_in_thread  # noqa: E402
from mathrl.models.scratch import build_scratch_model  # noqa: E402
from mathrl.rollout.http import HttpClient  # noqa: E402
from mathrl.serve.launch import build_state  # noqa: E402
from mathrl.serve.schemas import Limits  # noqa: E402

TEXTS = [f"Using the numbers {a} {b} {a + b}, make {a * b}." for a in range(9) for b in range(9)]
LIMITS = Limits(max_rows=8, max_request_tokens=64, max_queue_rows=8, max_queue_tokens=80)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[object, str]]:
    model = build_scratch_model(
        tmp_path_factory.mktemp("limits") / "m",
        TEXTS,
        seed=0,
        hidden=32,
        layers=1,
        heads=2,
        vocab_size=300,
        max_position=256,
    )
    sets = ["model.threads=2", "rollout.batch_size=16"]
    state = build_state(str(model), None, sets, name="tiny", limits=LIMITS)
    with serve_in_thread(state) as url:
        yield state, url


def body(n: int = 1, max_tokens: int | None = 4, prompt: object = (5, 6, 7)) -> dict:
    out = {"model": "tiny", "prompt": list(prompt), "n": n, "temperature": 1.0, "seed": 3}
    return out if max_tokens is None else {**out, "max_tokens": max_tokens}


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def wait_for(what, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@contextmanager
def worker_held(state) -> Iterator[None]:
    """The batcher's worker stops at its next engine call until the block ends."""
    hold, held = threading.Event(), threading.Event()

    def block(engine) -> None:
        held.set()
        hold.wait(60)

    thread = threading.Thread(target=state.batcher.between_batches, args=(block,), daemon=True)
    thread.start()
    assert held.wait(10)
    try:
        yield
    finally:
        hold.set()
        thread.join(10)


def post_in_thread(url: str, payload: dict) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def go() -> None:
        r = httpx.post(url + "/v1/completions", json=payload, timeout=60)
        out["status"], out["json"] = r.status_code, r.json()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread, out


def send_and_hang_up(url: str, payload: dict, state, rows: int) -> None:
    """A request sent whole over a raw socket, closed once the server has queued it."""
    host, port = url.removeprefix("http://").split(":")
    raw = json.dumps(payload).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(raw)}\r\n\r\n"
    ).encode()
    before = state.batcher.queued_rows
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + raw)
        wait_for(lambda: state.batcher.queued_rows == before + rows)


# -- per request ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (body(n=9), "n"),  # 9 rows > 8
        (body(n=3, prompt=[[5, 6], [7, 8], [9, 10]]), "n"),  # 3 prompts x 3 = 9 rows
        (body(n=4, max_tokens=17), "max_tokens"),  # 68 tokens > 64
        (body(n=1, max_tokens=None), "max_tokens"),  # no max_tokens: the context's room
    ],
    ids=["n", "prompts x n", "rows x max_tokens", "max_tokens left out"],
)
def test_a_request_past_the_caps_is_a_400(server, payload, param):
    _, url = server
    r = httpx.post(url + "/v1/completions", json=payload, timeout=30)
    err = r.json()["error"]
    assert r.status_code == 400 and (err["code"], err["param"]) == ("request_too_large", param)
    assert "at most 8 rows (prompts x n) and 64 tokens" in err["message"]


def test_a_request_at_the_caps_is_answered(server):
    _, url = server
    payload = body(n=4, max_tokens=8, prompt=[[5, 6], [7, 8]])  # 8 rows x 8 = 64 tokens
    r = httpx.post(url + "/v1/completions", json=payload, timeout=60)
    assert r.status_code == 200 and len(r.json()["choices"]) == 8


# -- the queue ----------------------------------------------------------------------------


def test_a_full_queue_answers_429_with_retry_after_and_the_client_waits_it(server):
    """8 rows wait behind the held worker: one more row is refused with 429 and
    Retry-After: 1; rollout.http's client retries after that second and gets its answer."""
    state, url = server
    refused = state.batcher.jobs_refused
    with worker_held(state):
        first, answer = post_in_thread(url, body(n=8, max_tokens=8))
        wait_for(lambda: state.batcher.queued_rows == 8)
        r = httpx.post(url + "/v1/completions", json=body(n=1), timeout=10)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "server_busy"
        http = HttpClient(url, timeout_s=30, retries=10, backoff_s=0.01)
        pending: dict = {}
        started = time.monotonic()
        t = threading.Thread(
            target=lambda: pending.update(a=http.request("POST", "/v1/completions", body())),
            daemon=True,
        )
        t.start()
        wait_for(lambda: http.faults["429"] == 1)
    t.join(30)
    first.join(30)
    assert answer["status"] == 200 and len(answer["json"]["choices"]) == 8
    assert pending["a"].tries >= 2 and time.monotonic() - started >= 1.0  # waited Retry-After
    assert len(pending["a"].data["choices"]) == 1
    http.close()
    assert state.batcher.jobs_refused == refused + pending["a"].tries
    assert (state.batcher.queued_rows, state.batcher.queued_tokens) == (0, 0)


# -- clients that go away -----------------------------------------------------------------


def test_a_job_whose_client_left_before_its_batch_is_never_generated(server):
    """Job A holds the worker; job B's client sends its request and hangs up while B waits
    in the queue: B is cancelled, and only A's engine call runs."""
    state, url = server
    b = state.batcher
    calls, done, cancelled = b.engine_calls, b.jobs_done, b.jobs_cancelled
    with worker_held(state):
        first, answer = post_in_thread(url, body(n=2))
        wait_for(lambda: b.queued_rows == 2)
        time.sleep(0.3)  # the worker has taken A (it waits 10 ms for more) and is held
        send_and_hang_up(url, body(n=3), state, rows=3)
        wait_for(lambda: b.jobs_cancelled == cancelled + 1)
    first.join(30)
    assert answer["status"] == 200
    wait_for(lambda: b.queued_rows == 0)
    assert (b.engine_calls, b.jobs_done) == (calls + 1, done + 1)
    assert health(url) == {**health(url), "requests_cancelled": cancelled + 1}


def test_a_running_call_whose_clients_all_left_stops_before_decoding(server):
    """The worker has taken the job (running) when its client hangs up: the engine call
    stops at its first chunk boundary and generates nothing."""
    state, url = server
    b = state.batcher
    calls, stopped, gone = b.engine_calls, b.calls_stopped, state.clients_gone
    with worker_held(state):
        send_and_hang_up(url, body(n=2), state, rows=2)
        time.sleep(0.3)  # taken by the worker, which waits for the lock
        wait_for(lambda: state.clients_gone == gone + 1)
    wait_for(lambda: b.calls_stopped == stopped + 1)
    assert b.engine_calls == calls and b.queued_rows == 0


def test_serve_help_names_the_limits(run_cli):
    res = run_cli("serve", "--help")
    text = " ".join(res.out.split())
    for option in ("--max-rows", "--max-request-tokens", "--max-queue-rows", "--max-queue-tokens"):
        assert option in text
    assert "429 with Retry-After" in text


def test_queue_caps_below_one_request_are_refused(run_cli):
    res = run_cli("serve", "--model", "x", "--max-rows", "100", "--max-queue-rows", "10")
    assert res.code == 2 and "max_queue_rows (10)" in res.err and "one request must fit" in res.err
