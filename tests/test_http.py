"""rollout.http, the transport of the openai engine and `mathrl distill`, against a scripted
stdlib server on 127.0.0.1: statuses, Retry-After values, bodies over the cap, non-JSON,
hangs past the deadline, closed connections. Each adversarial case is a table row."""

from __future__ import annotations

import email.utils
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("httpx")

from mathrl.errors import ConfigError, MathrlError  # noqa: E402
from mathrl.rollout.http import (  # noqa: E402
    BadResponse,
    Cancelled,
    HttpClient,
    HttpError,
    error_detail,
    public_url,
    retry_after,
)

Action = Callable[[BaseHTTPRequestHandler], None]
TIMEOUT_S = 2.0  # the clients' deadline in these tests (a whole try); a hang lasts longer
HANG_S = 4.0


def reply(status: int, body: bytes | object = b"{}", headers: dict | None = None) -> Action:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    def act(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        for k, v in {"Content-Length": str(len(raw)), **(headers or {})}.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(raw)

    return act


def hang(h: BaseHTTPRequestHandler) -> None:
    time.sleep(HANG_S)
    reply(200)(h)


def trickle(h: BaseHTTPRequestHandler) -> None:
    """A byte every 0.1 s: no read times out, but the whole answer is past the deadline."""
    h.send_response(200)
    h.send_header("Content-Length", "50")
    h.end_headers()
    for _ in range(50):
        h.wfile.write(b" ")
        h.wfile.flush()
        time.sleep(0.1)


def trickle_headers(h: BaseHTTPRequestHandler) -> None:
    """The status line, then a header byte every 0.1 s for 6 s: each read comes in time."""
    h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    for _ in range(60):
        h.wfile.write(b"a")
        h.wfile.flush()
        time.sleep(0.1)
    h.wfile.write(b"\r\nContent-Length: 2\r\n\r\n{}")


def close(h: BaseHTTPRequestHandler) -> None:
    h.close_connection = True  # no answer at all


def truncated(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "1000")
    h.end_headers()
    h.wfile.write(b'{"choices"')
    h.close_connection = True


def chunked(size: int) -> Action:
    """A 200 without Content-Length (chunked): only counting while reading finds the size."""

    def act(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for _ in range(size // 1024):
            h.wfile.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")

    return act


class Server:
    """Answers each path with script[path] in turn (the last repeats); records requests."""

    def __init__(self) -> None:
        self.script: dict[str, list[Action]] = {}
        self.requests: list[tuple[float, str, dict]] = []  # (time, path, headers)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def handle_one(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append((time.monotonic(), self.path, dict(self.headers)))
                queue = server.script[self.path.split("?")[0]]
                action = queue.pop(0) if len(queue) > 1 else queue[0]
                try:
                    action(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up

            do_GET = do_POST = handle_one

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # a client that hung up
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def times(self) -> list[float]:
        return [t for t, _, _ in self.requests]


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@contextmanager
def client_of(url: str, **kw) -> Iterator[HttpClient]:
    kw = {"timeout_s": TIMEOUT_S, "retries": 1, "backoff_s": 0.001, **kw}
    client = HttpClient(url, **kw)
    try:
        yield client
    finally:
        client.close()


# -- statuses and bodies: (script for /x, client options, what comes back) ---------------

OK = {"ok": 1}
OPENAI_ERROR = {"error": {"message": "max_tokens is too large", "type": "invalid_request"}}
FAILS_THEN_OK = [(s, 2) for s in (408, 425, 429, 500, 502, 503, 504, 599)]
QUOTA = {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}
MISMATCH = {"error": {"message": "another tokenizer", "code": "tokenizer_mismatch"}}
ANSWERED_AT_ONCE = [
    (409, MISMATCH, "HTTP 409: another tokenizer"),  # a refusal: load_weights is not resent
    (413, {"error": "too big"}, "HTTP 413: too big"),
    (429, QUOTA, "HTTP 429: You exceeded your current quota"),  # the code says: final
    (503, MISMATCH, "HTTP 503: another tokenizer"),
    (505, OPENAI_ERROR, "HTTP 505: max_tokens is too large"),
    (400, OPENAI_ERROR, "HTTP 400: max_tokens is too large"),
    (401, {"error": "bad key"}, "HTTP 401: bad key"),
    (403, {"error": {"message": ""}}, 'HTTP 403: {"error": {"message": ""}}'),  # the body
    (404, b"<html>not\nhere</html>", "HTTP 404: <html>not here</html>"),
    (422, b"\x1b[31mred\x00", "HTTP 422: ?[31mred?"),  # one printable line
    (501, OPENAI_ERROR, "HTTP 501: max_tokens is too large"),  # not implemented: final
    (502, OPENAI_ERROR, "HTTP 502: max_tokens is too large (after 2 tries)"),  # 5xx: retried
]
CASES = [
    ("200 JSON", [reply(200, OK)], {}, (OK, 1)),
    *[(f"{s} then 200", [reply(s), reply(200, OK)], {}, (OK, n)) for s, n in FAILS_THEN_OK],
    *[(f"{s} at once ({m[10:25]})", [reply(s, b)], {}, (HttpError, m, 1 + ("after" in m))) for s, b, m in ANSWERED_AT_ONCE],
    ("308 redirect", [reply(308, b"", {"Location": "https://elsewhere/v1"})], {}, (HttpError, "HTTP 308", 1)),
    ("500 lasts", [reply(500, OPENAI_ERROR)], {"retries": 3}, (HttpError, "500: max_tokens is too large (after 4 tries)", 4)),
    ("not JSON", [reply(200, b"<html>oops</html>")], {}, (HttpError, "bad answer: body is not JSON (JSONDecodeError): '<html>oops</html>' (after 2", 2)),
    ("bad UTF-8", [reply(200, b'{"a": "\xff"}')], {}, (HttpError, "not JSON (UnicodeDecodeError", 2)),
    ("nested 100k deep", [reply(200, b"[" * 100_000 + b"]" * 100_000)], {}, (HttpError, "not JSON (RecursionError", 2)),
    ("bad once, then good", [reply(200, b"{"), reply(200, OK)], {}, (OK, 2)),
    ("JSON not an object is still JSON", [reply(200, b"[1, 2]")], {}, ([1, 2], 1)),
    ("over the cap (Content-Length)", [reply(200, b"1" * 2000)], {"max_body_bytes": 1024}, (HttpError, "body over 1024 bytes", 2)),
    ("over the cap (chunked)", [chunked(8 << 10)], {"max_body_bytes": 4096}, (HttpError, "body over 4096 bytes", 2)),
    ("at the cap", [reply(200, b'"' + b"x" * 1022 + b'"')], {"max_body_bytes": 1024}, ("x" * 1022, 1)),
    ("a 1 MiB error page is cut", [reply(502, b"<html>" + b"x" * (1 << 20))], {}, (HttpError, f"HTTP 502: <html>{'x' * 294} (after 2", 2)),
    ("hang past the deadline", [hang], {}, (HttpError, "no answer within 2 s (after 2 tries)", 2)),
    ("trickle past the deadline", [trickle], {"retries": 0}, (HttpError, "no answer within 2 s", 1)),
    ("headers trickled past the deadline", [trickle_headers], {"retries": 0}, (HttpError, "no answer within 2 s", 1)),
    ("hang once, then good", [hang, reply(200, OK)], {}, (OK, 2)),
    ("closed without an answer", [close], {}, (HttpError, "RemoteProtocolError: Server disconnected", 2)),
    ("closed mid-body", [truncated], {}, (HttpError, "RemoteProtocolError", 2)),
    ("closed, then good", [close, truncated, reply(200, OK)], {"retries": 2}, (OK, 3)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("script", "options", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_transport_table(server, script, options, expected):
    server.script["/x"] = list(script)
    started = time.monotonic()
    with client_of(server.url, **options) as client:
        if expected[0] is HttpError:
            _, message, tries = expected
            with pytest.raises(HttpError) as err:
                client.request("POST", "/x", {"q": 1})
            text = str(err.value)
            assert message in text and text.startswith(f"{server.url}/x: ")
            assert "\n" not in text and len(text) < 500 and err.value.tries == tries
        else:
            value, tries = expected
            answer = client.request("POST", "/x", {"q": 1})
            assert (answer.data, answer.tries) == (value, tries)
            assert 0 <= answer.latency_s < TIMEOUT_S
        assert client.retries_made() == tries - 1
    assert len(server.requests) == tries
    assert time.monotonic() - started < 12  # bounded: deadlines, cut bodies, no long sleeps


def test_a_redirect_keeps_its_target_and_a_gave_up_error_its_parts(server):
    server.script["/x"] = [reply(308, b"", {"Location": "https://elsewhere/v1"})]
    server.script["/y"] = [reply(503, OPENAI_ERROR)]
    with client_of(server.url) as client:
        with pytest.raises(HttpError) as err:
            client.request_json("GET", "/x")
        e = err.value
        assert (e.status, e.location, e.gave_up, e.tries) == (308, "https://elsewhere/v1", False, 1)
        with pytest.raises(HttpError) as err:
            client.request_json("GET", "/y")
        e = err.value
        assert (e.status, e.kind, e.detail, e.gave_up) == (
            503,
            "503",
            "max_tokens is too large",
            True,
        )
        assert client.faults == {"503": 1}


def test_a_dead_server_is_a_connect_error(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    with client_of(f"http://127.0.0.1:{port}", retries=2) as client:
        with pytest.raises(HttpError, match=r"ConnectError: .* \(after 3 tries\)") as err:
            client.request_json("GET", "/x")
    assert err.value.kind == "connection" and client.faults == {"connection": 2}


def test_parse_refusing_an_answer_retries_it(server):
    server.script["/x"] = [reply(200, {"n": 1}), reply(200, {"n": 2})]

    def parse(data):
        if data["n"] < 2:
            raise BadResponse(f"n is {data['n']}")
        return data["n"]

    with client_of(server.url) as client:
        assert client.request("POST", "/x", {}, parse=parse).data == 2
        assert client.faults == {"bad_response": 1}
        server.script["/x"] = [reply(200, {"n": 1})]
        with pytest.raises(HttpError, match=r"bad answer: n is 1 \(after 2 tries\)"):
            client.request("POST", "/x", {}, parse=parse)


# -- Retry-After ------------------------------------------------------------------------


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "-1", "retry-after": "9"}, 9.0),  # a bad -ms: the other one
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),
        ({"retry-after-ms": "nan"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date in the past
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "1e400"}, None),  # overflows to inf
        ({"retry-after": "1e9"}, 1e9),  # huge but a number: the client refuses to wait it
        ({"retry-after": "Mon, 99 Foo 2015 99:99:99 GMT"}, None),
        ({}, None),
    ],
)
def test_retry_after(headers, seconds):
    assert retry_after(headers) == seconds


def test_retry_after_a_future_date():
    assert 95 < retry_after({"retry-after": http_date(100)}) <= 101


@pytest.mark.parametrize(
    ("headers", "least_s"),
    [
        ({"Retry-After": "0.3"}, 0.3),
        ({"retry-after-ms": "300"}, 0.3),
        ({"Retry-After": http_date(-3600)}, 0.0),  # past: no wait beyond the backoff
        ({"Retry-After": "soon"}, 0.0),  # garbage: the backoff alone
        ({"Retry-After": "-5"}, 0.0),
        ({"Retry-After": "nan"}, 0.0),
    ],
)
def test_the_retry_waits_what_the_server_asks(server, headers, least_s):
    server.script["/x"] = [reply(429, {"error": "slow down"}, headers), reply(200, OK)]
    with client_of(server.url) as client:
        assert client.request_json("GET", "/x") == OK
    gap = server.times()[1] - server.times()[0]
    assert least_s * 0.95 <= gap < least_s + 0.5


def test_a_retry_after_over_the_cap_ends_the_request_at_once(server):
    server.script["/x"] = [reply(503, {"error": "down for maintenance"}, {"Retry-After": "1e9"})]
    with client_of(server.url, retries=5, max_retry_after_s=600) as client:
        with pytest.raises(
            HttpError, match=r"asks to retry after 1000000000 s \(HTTP 503: down"
        ) as e:
            client.request_json("GET", "/x")
    assert len(server.requests) == 1 and e.value.wait_s == 1e9


def test_backoff_is_jittered_exponential_and_capped():
    with client_of("http://127.0.0.1:9", backoff_s=1.0, max_backoff_s=8.0) as client:
        for attempt, full in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (10, 8.0), (10_000, 8.0)]:
            delays = [client._delay(attempt, None) for _ in range(200)]
            assert full * 0.5 <= min(delays) and max(delays) < full
            assert max(delays) - min(delays) > 0.1 * full  # jittered
        assert client._delay(0, 30.0) == 30.0  # the server's wait when longer


# -- stopping, rate limit, what is sent and shown ---------------------------------------


def test_a_stop_event_cancels_before_a_try_and_during_a_backoff(server):
    server.script["/x"] = [reply(503)]
    stop = threading.Event()
    with client_of(server.url, retries=3, backoff_s=30.0) as client:
        stop.set()
        with pytest.raises(Cancelled):
            client.request("GET", "/x", stop=stop)
        assert server.requests == []
        stop.clear()
        threading.Timer(0.2, stop.set).start()
        started = time.monotonic()
        with pytest.raises(Cancelled):
            client.request("GET", "/x", stop=stop)  # asleep in a 15-30 s backoff when stopped
    assert time.monotonic() - started < 1.5 and len(server.requests) == 1


def test_the_rate_limit_spaces_starts_over_threads(server):
    server.script["/x"] = [reply(200, OK)]
    with client_of(server.url, rate_limit=20) as client:
        threads = [
            threading.Thread(target=client.request_json, args=("GET", "/x")) for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    times = sorted(server.times())
    assert len(times) == 6 and times[-1] - times[0] >= 5 * 0.05 * 0.9


def test_the_key_and_url_credentials_are_sent_but_never_shown(server):
    server.script["/v1/x"] = [reply(200, OK), reply(400, {"error": "no"})]
    url = server.url.replace("://", "://user:secret@") + "/v1/?k=1"
    with client_of(url, api_key="sk-1", user_agent="mathrl-test") as client:
        assert client.request_json("POST", "/x", {"a": 1}) == OK
        with pytest.raises(HttpError) as err:
            client.request_json("POST", "/x", {"a": 1})
    assert str(err.value) == f"{server.url}/v1/x: HTTP 400: no"  # no credentials, no query
    (_, path, headers), _ = server.requests
    assert path == "/v1/x?k=1" and headers["User-Agent"] == "mathrl-test"
    with client_of(server.url + "/v1", api_key="sk-1") as client:
        server.script["/v1/x"] = [reply(200, OK)]
        client.request_json("GET", "/x")
    assert server.requests[-1][2]["Authorization"] == "Bearer sk-1"


@pytest.mark.parametrize(
    ("url", "key", "error", "message"),
    [
        ("ftp://x/v1", None, MathrlError, "is not an http"),
        ("127.0.0.1:8000", None, MathrlError, "is not an http"),
        ("http://:80", None, MathrlError, "is not an http"),
        ("http://127.0.0.1:99999", None, MathrlError, "is not an http"),
        ("http://127.0.0.1:9", "sk 1", ConfigError, "spaces or control characters"),
        ("http://127.0.0.1:9", "sk\n1", ConfigError, "spaces or control characters"),
    ],
)
def test_bad_urls_and_keys_are_refused(url, key, error, message):
    with pytest.raises(error, match=message) as err:
        HttpClient(url, key)
    assert "sk" not in str(err.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@api.x.com/v1/chat?k=1#f", "https://api.x.com/v1/chat"),
        ("http://[::1]:9/v1", "http://[::1]:9/v1"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
    ],
)
def test_public_url(url, shown):
    assert public_url(url) == shown


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b'{"error": {"message": "bad\\nfield"}}', "bad field"),
        (b'{"error": "slow down"}', "slow down"),
        (b'{"error": {"code": 5}}', '{"error": {"code": 5}}'),
        (b"[" * 10_000 + b"]" * 10_000, "[" * 300),
        (b"\xff\xfeoops", "\ufffd\ufffdoops"),
        (b"", ""),
    ],
)
def test_error_detail(body, detail):
    assert error_detail(body) == detail
