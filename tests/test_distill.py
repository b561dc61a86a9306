"""`mathrl distill`: teacher traces from an OpenAI-compatible endpoint, tested on 127.0.0.1.

A stdlib fake teacher (answers chosen per prompt, faults on a schedule by arrival order)
covers retries, resume, kills and bad answers; one test distils from a real `mathrl serve`
of a tiny scratch model and trains `mathrl sft` on the result.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import serve_in_thread
from mathrl.data import make_task
from mathrl.distill import (
    DistillOptions,
    chat_url,
    parse_reply,
    problems,
    run_distill,
    trace_seed,
)
from mathrl.errors import MathrlError
from mathrl.io import read_jsonl
from mathrl.rollout.http import BadResponse
from mathrl.runs.start import load_run_config
from mathrl.sft import read_pairs

REPO = Path(__file__).resolve().parents[1]
HANG_S = 1.5  # a "hang" answers after this long, past the tests' 0.5 s timeout


def chat_body(content: str, reasoning: str | None = None, **extra) -> dict:
    message = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "teacher-v1",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": len(content)},
        **extra,
    }


class FakeTeacher:
    """Answers a chat request with answers[user content] (else a wrong answer) and the
    reasoning 'think <seed>'; the k-th request to arrive gets schedule[k] instead."""

    def __init__(self, answers: dict[str, str], schedule=(), delay: float = 0.0) -> None:
        self.answers, self.schedule, self.delay = answers, list(schedule), delay
        self.requests: list[tuple[float, dict, dict, str]] = []  # (t, body, headers, fault)
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0
        self.always: tuple | None = None  # answer every request with this

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        with self.lock:
            fault = (
                self.schedule[len(self.requests)]
                if len(self.requests) < len(self.schedule)
                else "ok"
            )
            self.requests.append((time.monotonic(), body, dict(h.headers), fault))
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            time.sleep(self.delay)
            self.act(h, body, fault)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a hang past its timeout)
        finally:
            with self.lock:
                self.inflight -= 1

    def act(self, h: BaseHTTPRequestHandler, body: dict, fault: str) -> None:
        if self.always is not None:
            return send(h, *self.always)
        if fault == "close":  # drop the connection without an answer
            h.close_connection = True
            return
        if fault == "truncated":  # promise 1000 bytes, send 10, close
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
            h.wfile.write(b'{"choices"')
            h.close_connection = True
            return
        if fault == "hang":
            time.sleep(HANG_S)
        if fault in ("500", "503"):
            return send(h, int(fault), json.dumps({"error": {"message": "overloaded"}}).encode())
        if fault == "429":
            return send(h, 429, b'{"error": {"message": "slow down"}}', {"Retry-After": "1"})
        if fault == "malformed":
            return send(h, 200, b'{"choices": [{"message": ')
        if fault == "huge":
            return send(h, 200, json.dumps(chat_body("x" * (200 << 10))).encode())
        content = body["messages"][-1]["content"]
        answer = self.answers.get(content, "Final: 1+1")
        send(h, 200, json.dumps(chat_body(answer, f"think {body.get('seed')}")).encode())


def send(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict | None = None) -> None:
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(data)


@contextmanager
def serving(teacher: FakeTeacher):
    """The fake teacher on 127.0.0.1 and a free port; yields its base URL (…/v1)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            teacher.handle(self)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def task_of(tiny_config):
    def build(*sets: str):
        cfg = load_run_config(tiny_config, list(sets))
        return cfg, make_task(cfg)

    return build


@pytest.fixture
def answers(task_of):
    """Right answers for every other training problem (in selection order), and their ids."""
    cfg, task = task_of()
    right = {}
    for i, ex in enumerate(problems(cfg, task, "train", 0)):
        if i % 2 == 0:
            right[task.messages(ex)[-1]["content"]] = task.response(ex)
    ids = {ex.id for ex in task.examples("train") if task.messages(ex)[-1]["content"] in right}
    return right, ids


@pytest.fixture
def distill(task_of):
    """distill(url, out, *sets, **options) -> (totals, lines said), in-process."""

    def run(url: str, out: Path, *sets: str, **kw):
        cfg, task = task_of(*sets)
        kw = {"model": "teacher", "backoff_s": 0.01, "progress_s": 0.0, "timeout_s": 5.0, **kw}
        lines: list[str] = []
        totals = run_distill(cfg, task, DistillOptions(endpoint=url, out=out, **kw), lines.append)
        return totals, lines

    return run


def keys(rows: list[dict]) -> list[tuple[str, int]]:
    return sorted((r["problem_id"], r["sample"]) for r in rows)


def expected_keys(task_of, limit: int, n: int) -> list[tuple[str, int]]:
    cfg, task = task_of()
    return sorted((ex.id, s) for ex in problems(cfg, task, "train", limit) for s in range(n))


def strict_lines(path: Path) -> list[dict]:
    """Every line whole: parsed strictly, the file ends with a newline."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    return [json.loads(line) for line in raw.splitlines()]


# -- pure pieces ------------------------------------------------------------------------


GOOD = chat_body("Final: 1+2", "hmm")
ADVERSARIAL_BODIES = [
    ("valid", json.dumps(GOOD).encode(), ("Final: 1+2", "hmm", "stop", 10, 10)),
    (
        "reasoning field",
        json.dumps(
            {"choices": [{"message": {"content": "a", "reasoning": "r"}, "finish_reason": None}]}
        ).encode(),
        ("a", "r", None, None, None),
    ),
    (
        "null content",
        b'{"choices": [{"message": {"content": null}}]}',
        ("", None, None, None, None),
    ),
    (
        "usage of wrong types",
        b'{"choices": [{"message": {"content": "a"}}], "usage": {"prompt_tokens": "9", "completion_tokens": -1}}',
        ("a", None, None, None, None),
    ),
    (
        "usage NaN and true",
        b'{"choices": [{"message": {"content": "a"}}], "usage": {"prompt_tokens": NaN, "completion_tokens": true}}',
        ("a", None, None, None, None),
    ),
    (
        "lone surrogate",
        b'{"choices": [{"message": {"content": "a\\ud800b"}}]}',
        ("a?b", None, None, None, None),
    ),
    ("not JSON", b"<html>502 Bad Gateway</html>", "body is not JSON"),
    ("truncated JSON", b'{"choices": [', "body is not JSON"),
    ("invalid UTF-8", b'{"choices": "\xff\xfe"}', "body is not JSON"),
    ("nested 100k deep", b"[" * 100_000 + b"]" * 100_000, "body is not JSON (RecursionError)"),
    ("a JSON array", b"[1, 2]", "body is a JSON list, not an object"),
    ("no choices", b'{"id": "x"}', "no choices in the answer"),
    ("empty choices", b'{"choices": []}', "no choices in the answer"),
    ("choices a string", b'{"choices": "abc"}', "no choices in the answer"),
    ("an error in a 200", b'{"error": {"message": "busy"}}', "no choices in the answer: error"),
    ("no message", b'{"choices": [{"text": "a"}]}', "choices[0].message is missing"),
    ("content a number", b'{"choices": [{"message": {"content": 5}}]}', "message.content is int"),
    (
        "reasoning a list",
        b'{"choices": [{"message": {"content": "a", "reasoning_content": ["x"]}}]}',
        "message.reasoning_content is list",
    ),
    (
        "finish_reason a number",
        b'{"choices": [{"message": {"content": "a"}, "finish_reason": 1}]}',
        "choices[0].finish_reason is int",
    ),
]


@pytest.mark.parametrize(
    "body,expected", [row[1:] for row in ADVERSARIAL_BODIES], ids=[r[0] for r in ADVERSARIAL_BODIES]
)
def test_parse_reply_table(body, expected):
    if isinstance(expected, str):
        with pytest.raises(BadResponse) as err:
            parse_reply(body)
        assert expected in str(err.value) and len(str(err.value)) < 500
        return
    r = parse_reply(body)
    assert (r.completion, r.reasoning, r.finish_reason, r.prompt_tokens, r.completion_tokens) == (
        expected
    )


LOCAL = "http://127.0.0.1:8000/v1"


@pytest.mark.parametrize(
    "endpoint,url,recorded",
    [
        (LOCAL, f"{LOCAL}/chat/completions", LOCAL),
        (f"{LOCAL}/", f"{LOCAL}/chat/completions", LOCAL),
        (f"{LOCAL}/chat/completions", f"{LOCAL}/chat/completions", LOCAL),
        (  # credentials and query travel in the request, never into the trace file
            "https://u:secret@api.x.com/v1?k=1",
            "https://u:secret@api.x.com/v1/chat/completions?k=1",
            "https://api.x.com/v1",
        ),
        ("http://[::1]:9/v1", "http://[::1]:9/v1/chat/completions", "http://[::1]:9/v1"),
    ],
)
def test_chat_url(endpoint, url, recorded):
    assert chat_url(endpoint) == (url, recorded)


# -- the fake teacher -------------------------------------------------------------------


SCHEDULE = ["500", "429", "close", "malformed", "hang", "503", "truncated", "huge", "500"]


def test_faults_on_a_schedule_give_every_trace_exactly_once(distill, task_of, answers, tmp_path):
    right, right_ids = answers
    teacher = FakeTeacher(right, SCHEDULE)
    out = tmp_path / "traces.jsonl"
    with serving(teacher) as url:
        totals, lines = distill(
            url, out, n=2, limit=5, concurrency=4, timeout_s=0.5, max_retries=12,
            max_body_bytes=64 << 10,
        )  # fmt: skip
    rows = strict_lines(out)
    assert keys(rows) == expected_keys(task_of, 5, 2)  # each (problem, sample) once
    faults = {"500": 2, "429": 1, "connection": 2, "bad_response": 2, "timeout": 1, "503": 1}
    assert totals["faults"] == faults and totals["retries"] == len(SCHEDULE)
    assert len(teacher.requests) == 10 + len(SCHEDULE)
    faulted = [b["seed"] for _, b, _, f in teacher.requests if f != "ok"]
    for r in rows:  # each trace's attempts: 1 + the faults its requests met
        assert r["attempts"] == 1 + faulted.count(trace_seed(0, r["problem_id"], r["sample"]))
    # the 429's retry waited for its Retry-After (1 s)
    t429, body429 = next((t, b) for t, b, _, f in teacher.requests if f == "429")
    again = min(t for t, b, _, _ in teacher.requests if b["seed"] == body429["seed"] and t > t429)
    assert again - t429 >= 0.95
    # scored with the task's reward: right answers for exactly the even problems
    for r in rows:
        assert r["correct"] == (r["problem_id"] in right_ids)
        assert r["reward"] == (1.0 if r["correct"] else 0.1)  # wrong but well formatted
        assert r["reasoning"] == f"think {trace_seed(0, r['problem_id'], r['sample'])}"
        assert (r["model"], r["served_model"], r["finish_reason"]) == (
            "teacher",
            "teacher-v1",
            "stop",
        )
        assert r["prompt"][-1]["role"] == "user" and r["prompt_tokens"] == 10
        assert (r["temperature"], r["max_tokens"], r["split"]) == (1.0, 8, "train")
    n_correct = sum(r["correct"] for r in rows)
    assert n_correct == 6 and totals["correct"] == n_correct  # problems 0, 2, 4 of 5, twice
    completion = sum(len(r["completion"]) for r in rows)
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (100, completion)
    assert f"tokens this run: 100 prompt + {completion} completion" in lines[-2]
    assert any("/10 traces" in line for line in lines)  # progress lines
    # --keep correct (the default): the SFT pairs, reasoning in <think> before the answer
    pairs = read_pairs(tmp_path / "traces.sft.jsonl")
    assert totals["kept"] == len(pairs) == 6
    by_key = {(r["problem_id"], r["sample"]): r for r in rows if r["correct"]}
    for record in read_jsonl(tmp_path / "traces.sft.jsonl"):
        r = by_key[(record["problem_id"], record["sample"])]
        assert record["messages"] == [
            *r["prompt"],
            {
                "role": "assistant",
                "content": f"<think>\n{r['reasoning']}\n</think>\n\n{r['completion']}",
            },
        ]


def test_request_fields_concurrency_and_rate_limit(distill, answers, tmp_path):
    teacher = FakeTeacher(answers[0], delay=0.2)
    with serving(teacher) as url:
        distill(
            url,
            tmp_path / "a.jsonl",
            n=3,
            limit=3,
            concurrency=3,
            max_tokens=5,
            temperature=0.5,
            api_key="k1",
        )
        assert teacher.max_inflight == 3
        bodies = [b for _, b, _, _ in teacher.requests]
        assert {(b["model"], b["max_tokens"], b["temperature"]) for b in bodies} == {
            ("teacher", 5, 0.5)
        }
        assert len({b["seed"] for b in bodies}) == 9
        assert {h["Authorization"] for _, _, h, _ in teacher.requests} == {"Bearer k1"}
        teacher.requests.clear()
        teacher.delay, teacher.max_inflight = 0.0, 0
        started = time.monotonic()
        distill(url, tmp_path / "b.jsonl", n=2, limit=4, concurrency=4, rate_limit=20, seed=False)
        times = sorted(t for t, _, _, _ in teacher.requests)
    assert len(times) == 8 and times[-1] - times[0] >= 7 * 0.05 * 0.85
    assert time.monotonic() - started >= 0.3
    # config defaults (rollout.max_new_tokens = 8, rollout.temperature = 1.0), no seed, no key
    assert all(b["max_tokens"] == 8 and b["temperature"] == 1.0 for _, b, _, _ in teacher.requests)
    assert not any("seed" in b for _, b, _, _ in teacher.requests)
    assert not any("Authorization" in h for _, _, h, _ in teacher.requests)


def test_resume_skips_what_is_written_and_drops_a_torn_tail(distill, task_of, answers, tmp_path):
    teacher = FakeTeacher(answers[0])
    out = tmp_path / "t.jsonl"
    with serving(teacher) as url:
        first, _ = distill(url, out, n=2, limit=3, keep="all")
        assert (first["new"], len(teacher.requests)) == (6, 6)
        with out.open("ab") as fh:
            fh.write(b'{"problem_id": "torn", "sam')  # a kill mid-append
        with pytest.warns(UserWarning, match="torn"):
            again, lines = distill(url, out, n=3, limit=3, keep="all")
        assert (again["new"], again["traces"], len(teacher.requests)) == (3, 9, 9)
        assert "6 already in" in lines[0] and "3 to sample" in lines[0]
        cfg, task = task_of()
        third = {trace_seed(0, ex.id, 2) for ex in problems(cfg, task, "train", 3)}
        assert {b["seed"] for _, b, _, _ in teacher.requests[6:]} == third
        done, _ = distill(url, out, n=3, limit=3, keep="all")
        assert (done["new"], len(teacher.requests)) == (0, 9)
    rows = strict_lines(out)
    assert keys(rows) == expected_keys(task_of, 3, 3)
    assert len(read_pairs(tmp_path / "t.sft.jsonl")) == 9


@pytest.mark.parametrize(
    "change,field",
    [
        ({"model": "other"}, "model"),
        ({"endpoint": "http://localhost:{port}/v1"}, "endpoint"),
        ({"sets": ("data.countdown_max_target=25",)}, "task_fingerprint"),
        ({"split": "test"}, "split"),
        ({"temperature": 0.1}, "temperature"),
        ({"sets": ("rollout.temperature=0.5",)}, "temperature"),
        ({"max_tokens": 7}, "max_tokens"),
        ({"seed": False}, "seed"),
        ({"sets": ("seed=3",)}, "seed"),
    ],
)
def test_resume_refuses_a_file_of_another_run(distill, answers, tmp_path, change, field):
    teacher = FakeTeacher(answers[0])
    out = tmp_path / "t.jsonl"
    with serving(teacher) as url:
        distill(url, out, n=1, limit=2)
        before = out.read_bytes()
        port = url.split(":")[-1].split("/")[0]
        kw = {k: v.format(port=port) if isinstance(v, str) else v for k, v in change.items()}
        sets = kw.pop("sets", ())
        with pytest.raises(MathrlError, match=f"was written for {field} "):
            distill(kw.pop("endpoint", url), out, *sets, n=1, limit=2, **kw)
    assert out.read_bytes() == before and len(teacher.requests) == 2


def test_a_scoring_timeout_is_scored_again_on_resume(distill, tmp_path, monkeypatch):
    """A reward that timed out is not a final `correct: false`: the next run re-scores the
    line (no new request) and its last line replaces the first."""
    flag = tmp_path / "hang"
    flag.touch()
    monkeypatch.setenv("MATHRL_TEST_HANG_FLAG", str(flag))
    sets = (
        "train.reward_timeout_s=0.5",
        'task.rewards=[{fn = "task"}, {fn = "reward_fixtures:hangs_on_marker"}]',
    )
    teacher = FakeTeacher({})
    teacher.always = (200, json.dumps(chat_body("Final: 1+1 HANG")).encode())
    out = tmp_path / "t.jsonl"
    with serving(teacher) as url:
        distill(url, out, *sets, n=1, limit=2, keep="all")
        first = strict_lines(out)
        assert [(r["reason"], r["rescore"], r["correct"]) for r in first] == [
            ("timeout", True, False)
        ] * 2
        flag.unlink()
        totals, lines = distill(url, out, *sets, n=1, limit=2, keep="all")
    assert len(teacher.requests) == 2 and totals["new"] == 0 and "2 re-scored" in lines[0]
    lines_now = strict_lines(out)
    assert len(lines_now) == 4 and lines_now[:2] == first  # appended, nothing rewritten
    again = read_jsonl(out)[2:]
    assert [r["rescore"] for r in again] == [False, False]
    assert all(r["reason"] != "timeout" for r in again)
    assert keys(again) == keys(first)


def test_a_second_writer_and_a_foreign_file_are_refused(distill, tmp_path, monkeypatch):
    monkeypatch.setattr("mathrl.distill.traces.LOCK_WAIT_S", 0.2)
    out = tmp_path / "t.jsonl"
    with out.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(MathrlError, match="another mathrl distill is writing"):
            distill("http://127.0.0.1:9/v1", out)
    out.write_text('{"prompt": "a", "response": "b"}\n')
    with pytest.raises(MathrlError, match="is not a mathrl distill trace"):
        distill("http://127.0.0.1:9/v1", out)


BAD_ANSWERS = [
    (
        "body over the cap",
        (200, json.dumps(chat_body("y" * (100 << 10))).encode()),
        "body over 65536 bytes",
    ),
    ("HTML", (200, b"<html>oops</html>"), "body is not JSON"),
    ("no choices", (200, b'{"object": "chat.completion"}'), "no choices"),
    ("content an object", (200, b'{"choices": [{"message": {"content": {}}}]}'), "content is dict"),
    ("a 502 page", (502, b"<html>" + b"x" * (1 << 20)), "HTTP 502: '<html>xxx"),
]


@pytest.mark.parametrize(
    "answer,message", [r[1:] for r in BAD_ANSWERS], ids=[r[0] for r in BAD_ANSWERS]
)
def test_an_endpoint_that_keeps_answering_badly_stops_with_one_line(
    distill, tmp_path, answer, message
):
    teacher = FakeTeacher({})
    teacher.always = answer
    started = time.monotonic()
    with serving(teacher) as url, pytest.raises(MathrlError) as err:
        distill(url, tmp_path / "t.jsonl", n=1, limit=2, max_retries=1, max_body_bytes=64 << 10)
    text = str(err.value)
    assert "gave up after 2 tries" in text and message in text
    assert "\n" not in text and len(text) < 600
    assert time.monotonic() - started < 10
    assert read_jsonl(tmp_path / "t.jsonl") == []


def test_a_hang_is_bounded_by_the_timeout(distill, tmp_path):
    teacher = FakeTeacher({}, ["hang"] * 4)
    started = time.monotonic()
    with serving(teacher) as url, pytest.raises(MathrlError, match="no answer within 0.3 s"):
        distill(url, tmp_path / "t.jsonl", n=1, limit=1, timeout_s=0.3, max_retries=1)
    assert time.monotonic() - started < 3


# -- the command ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_uses_every_option(run_cli, tiny_config, answers, tmp_path, monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-test")
    teacher = FakeTeacher({**answers[0]}, ["500"])
    with serving(teacher) as url:
        res = run_cli(
            "distill", "--endpoint", url, "--model", "teacher", "-c", tiny_config,
            "--set", "seed=3", "--out", tmp_path / "t.jsonl", "--n", 2, "--concurrency", 2,
            "--api-key-env", "TEACHER_KEY", "--keep", "all", "--sft-out", tmp_path / "p.jsonl",
            "--limit", 4, "--max-tokens", 6, "--temperature", 0.7, "--timeout", 5,
            "--max-retries", 2, "--backoff", 0.01, "--rate-limit", 1000, "--split", "test",
            "--no-seed",
        )  # fmt: skip
    assert res.code == 0, res.err
    assert "1 retries {'500': 1}" in res.err and "8 SFT pairs (all)" in res.err
    assert len(teacher.requests) == 9
    assert {h["Authorization"] for _, _, h, _ in teacher.requests} == {"Bearer sk-test"}
    assert {
        (b["max_tokens"], b["temperature"], "seed" in b) for _, b, _, _ in teacher.requests
    } == {(6, 0.7, False)}
    rows = strict_lines(tmp_path / "t.jsonl")
    cfg = load_run_config(tiny_config, ["seed=3"])
    test_ids = {ex.id for ex in problems(cfg, make_task(cfg), "test", 4)}
    assert {r["problem_id"] for r in rows} == test_ids and {r["split"] for r in rows} == {"test"}
    assert len(read_pairs(tmp_path / "p.jsonl")) == 8


@pytest.mark.parametrize(
    "args,message",
    [
        (["--endpoint", "ftp://x/v1"], "is not an http(s) URL"),
        (["--endpoint", "127.0.0.1:8000/v1"], "is not an http(s) URL"),
        (["--endpoint", "http://:80/v1"], "is not an http(s) URL"),
        (["--endpoint", "http://127.0.0.1:99999/v1"], "is not an http(s) URL"),
        (["-c", "no/such_config.toml"], "no/such_config"),
        (["--n", "0"], "--n must be >= 1"),
        (["--keep", "some"], "--keep must be 'all' or 'correct'"),
        (["--split", "val"], "the val split of countdown is empty"),
        (["--max-retries", "1"], "gave up after 2 tries; the last: ConnectError"),
        (  # credentials in the URL are sent, never shown
            ["--endpoint", "http://u:secret@127.0.0.1:9/v1", "--max-retries", "0"],
            "http://127.0.0.1:9/v1/chat/completions: gave up after 1 tries",
        ),
    ],
)
def test_cli_bad_input_is_one_error_line(run_cli, tiny_config, tmp_path, args, message):
    base = {"--endpoint": f"http://127.0.0.1:{free_port()}/v1", "-c": str(tiny_config)}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    flat = [x for kv in base.items() for x in kv]
    res = run_cli(
        "distill",
        *flat,
        "--model",
        "m",
        "--out",
        tmp_path / "t.jsonl",
        "--backoff",
        "0.01",
        "--limit",
        "1",
    )
    assert res.code == 2, res.err
    last = res.err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, res.err
    assert "Traceback" not in res.err and "secret" not in res.err


@pytest.mark.parametrize(
    "status,hint",
    [
        (400, "bad field"),
        (401, "is the API key set"),
        (404, "ending in /v1"),
        (308, "redirects to 'https://elsewhere/v1/chat/completions'"),
    ],
)
def test_cli_non_retryable_4xx_stops_at_once(run_cli, tiny_config, tmp_path, status, hint):
    teacher = FakeTeacher({})
    error = json.dumps({"error": {"message": "bad field 'x'"}}).encode()
    teacher.always = (status, error, {"Location": "https://elsewhere/v1/chat/completions"})
    with serving(teacher) as url:
        res = run_cli("distill", "--endpoint", url, "--model", "m", "-c", tiny_config,
                      "--out", tmp_path / "t.jsonl", "--limit", 1, "--n", 1)  # fmt: skip
    last = res.err.strip().splitlines()[-1]
    assert res.code == 2 and last.startswith(
        f"error: {url}/chat/completions answered HTTP {status}"
    )
    assert hint in last and "Traceback" not in res.err
    assert len(teacher.requests) == 1  # not retried


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(
    distill, tiny_config, task_of, answers, tmp_path
):
    teacher = FakeTeacher(answers[0], delay=0.1)
    out, whole = tmp_path / "killed.jsonl", tmp_path / "whole.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    with serving(teacher) as url:
        cmd = [sys.executable, "-m", "mathrl", "distill", "--endpoint", url, "--model", "teacher",
               "-c", str(tiny_config), "--out", str(out), "--n", "2", "--limit", "10",
               "--concurrency", "2", "--backoff", "0.01"]  # fmt: skip
        for kill_at in (4, 11):  # kill twice, at different points
            proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
            deadline = time.monotonic() + 60
            while not out.exists() or out.read_bytes().count(b"\n") < kill_at:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
            lines = out.read_bytes().split(b"\n")
            for line in lines[:-1]:  # every complete line is whole JSON
                json.loads(line)
            assert kill_at <= len(lines) - 1 < 20
        resumed, _ = distill(url, out, n=2, limit=10)
        reference, _ = distill(url, whole, n=2, limit=10)
    rows, ref = strict_lines(out), strict_lines(whole)
    assert keys(rows) == keys(ref) == expected_keys(task_of, 10, 2)
    assert resumed["traces"] == 20 and 0 < resumed["new"] <= 9

    def same(r: dict) -> dict:
        return {k: v for k, v in r.items() if k not in ("latency_s", "attempts")}

    assert sorted(map(same, rows), key=lambda r: (r["problem_id"], r["sample"])) == sorted(
        map(same, ref), key=lambda r: (r["problem_id"], r["sample"])
    )


def test_ctrl_c_does_not_wait_for_hanging_requests(tiny_config, answers, tmp_path):
    teacher = FakeTeacher(answers[0])
    out = tmp_path / "t.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    with serving(teacher) as url:
        cmd = [sys.executable, "-m", "mathrl", "distill", "--endpoint", url, "--model", "teacher",
               "-c", str(tiny_config), "--out", str(out), "--n", "2", "--limit", "10",
               "--concurrency", "2", "--timeout", "60"]  # fmt: skip
        # SIGINT may be ignored where the tests run (a background job): restore it
        restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, preexec_fn=restore)
        teacher.delay = 0.05
        deadline = time.monotonic() + 60
        while not out.exists() or out.read_bytes().count(b"\n") < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        teacher.delay = 30.0  # what is asked from now on hangs
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        _, err = proc.communicate(timeout=20)
    assert time.monotonic() - started < 5, err.decode()
    rows = strict_lines(out)
    assert 2 <= len(rows) < 20 and len(set(keys(rows))) == len(rows)


# -- a real mathrl serve ----------------------------------------------------------------


@contextmanager
def live(state):
    """The server in a thread (conftest.serve_in_thread); yields the base URL (…/v1)."""
    with serve_in_thread(state) as url:
        yield url + "/v1"


def test_distill_from_mathrl_serve_then_sft(run_cli, tiny_config, task_of, tmp_path):
    pytest.importorskip("fastapi")
    from mathrl.models.scratch import build_scratch_model
    from mathrl.serve.launch import build_state
    from mathrl.tasks.base import prompt_corpus

    _, task = task_of()
    tiny = dict(hidden=32, layers=1, heads=2, vocab_size=300, max_position=256)
    model_dir = build_scratch_model(tmp_path / "teacher", prompt_corpus(task), seed=0, **tiny)
    state = build_state(str(model_dir), None, ["model.threads=2"], name="tiny")
    out = tmp_path / "t.jsonl"
    args = ["--model", "tiny", "-c", tiny_config, "--n", 2, "--limit", 10, "--max-tokens", 8]
    with live(state) as url:
        res = run_cli("distill", "--endpoint", url, *args, "--out", out, "--keep", "all")
        assert res.code == 0, res.err
        again = run_cli("distill", "--endpoint", url, *args, "--out", tmp_path / "again.jsonl")
        assert again.code == 0, again.err
    rows = strict_lines(out)
    assert keys(rows) == expected_keys(task_of, 10, 2)
    for r in rows:
        assert 1 <= r["completion_tokens"] <= 8 and r["prompt_tokens"] > 10
        assert r["finish_reason"] in ("stop", "length") and r["reasoning"] is None
        assert (r["model"], r["served_model"], r["task"]) == ("tiny", "tiny", "countdown")
    total = sum(r["completion_tokens"] for r in rows)
    assert f"+ {total} completion" in res.err
    # the seed travels in each request, so a second run samples the same traces
    by_key = {(r["problem_id"], r["sample"]): r["completion"] for r in rows}
    assert {
        (r["problem_id"], r["sample"]): r["completion"]
        for r in strict_lines(tmp_path / "again.jsonl")
    } == by_key
    sft_data = tmp_path / "t.sft.jsonl"
    assert len(read_pairs(sft_data)) == 20
    run = tmp_path / "sft_run"
    res = run_cli("sft", "-c", tiny_config, "--data", sft_data, "--out", run, "--steps", 2)
    assert res.code == 0, res.err
    assert (run / "checkpoints" / "step_00000002" / "model").is_dir()
