"""JSON over HTTP with retries: the one transport of the openai rollout engine and `mathrl
distill` (both talk to OpenAI-compatible servers).

    client = HttpClient("http://127.0.0.1:8000", api_key, timeout_s=60, retries=4)
    models = client.request_json("GET", "/v1/models")
    answer = client.request("POST", "/v1/chat/completions", body, parse=my_parser, stop=event)

A request is up to `retries + 1` tries. A try is transient, and retried, when the server
answers 408, 425, 429 or a 5xx other than 501 and 505, the connection fails or drops, no
answer comes in time, or a 2xx body is unusable: over the size cap, not JSON, or refused by
the caller's `parse` (it raises BadResponse). An answer whose OpenAI error code names a
refusal that no retry changes (FINAL_CODES: a used-up quota, a wrong key, a prompt past the
context) ends the request whatever its status; every other status (3xx, 4xx, 409 and 413
included) ends it at once: the server has decided. Try k waits backoff_s * 2**k (at most
max_backoff_s) times a jitter in [0.5, 1), or longer when the server's Retry-After or
retry-after-ms asks; one that asks more than max_retry_after_s ends the request at once
rather than sleeping through it.

Bounds: a try lasts at most `timeout_s`, from the connect to the body's last byte (every
socket operation is cut to the time left: rollout/deadline.py), so neither a silent server
nor one that trickles its headers or body holds it longer; a body is read up to
`max_body_bytes` (an error body up to 64 KiB, then cut); an optional rate limit spaces the
tries' starts over every thread sharing the client. Whatever fails for good is one
HttpError line that names the URL without its credentials or query (both are still sent).
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from mathrl.errors import ConfigError, MathrlError

T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({408, 425, 429})
"""Retried besides every 5xx but FINAL_STATUSES; any other 3xx or 4xx is an error at once."""
FINAL_STATUSES = frozenset({501, 505})
"""5xx answers no retry changes: not implemented, HTTP version not supported."""
FINAL_CODES = frozenset(
    {
        "insufficient_quota",  # OpenAI's 429 for a used-up balance
        "invalid_api_key",
        "model_not_found",
        "context_length_exceeded",
        "body_too_large",
        "request_too_large",  # mathrl serve: more rows or tokens than one request may ask
        "tokenizer_mismatch",
        "path_outside_root",
        "load_weights_disabled",
        "not_a_model",
    }
)
"""OpenAI-shaped error codes (`{"error": {"code"}}`) that end a request whatever the status."""
MAX_BODY_BYTES = 64 << 20
"""Default cap on a 2xx body."""
MAX_ERROR_BODY_BYTES = 64 << 10
"""An error body is read this far and cut (only its message is shown)."""
MAX_RETRY_AFTER_S = 600.0
"""A Retry-After longer than this ends the request instead of a sleep through it."""
MAX_DETAIL_CHARS = 300
"""How much of a server's message an error line quotes."""


class HttpError(MathrlError):
    """A request that failed for good, as one line: `URL: problem`, with `(after N tries)`
    when the retries ran out. The parts stay on it for callers that word it their own way:
    `detail` is one printable line (the server's message for an HTTP status)."""

    def __init__(
        self,
        url: str,
        detail: str,
        *,
        status: int | None = None,
        kind: str = "",
        tries: int = 1,
        gave_up: bool = False,
        wait_s: float | None = None,
        location: str | None = None,
    ) -> None:
        self.url, self.detail, self.status, self.kind = url, detail, status, kind
        self.tries, self.gave_up, self.wait_s, self.location = tries, gave_up, wait_s, location
        if wait_s is not None:
            message = f"{url} asks to retry after {wait_s:.0f} s ({self.problem})"
        else:
            message = f"{url}: {self.problem}" + (f" (after {tries} tries)" if gave_up else "")
        super().__init__(message)

    @property
    def problem(self) -> str:
        return f"HTTP {self.status}: {self.detail}" if self.status is not None else self.detail


class BadResponse(Exception):
    """A 2xx answer the caller cannot use; `parse` raises it to have the try retried."""


class Cancelled(Exception):
    """The caller's stop event is set: the request was not sent (again)."""


class _Transient(Exception):
    """A try worth repeating: kind (for the fault counts), what happened, the server's wait."""

    def __init__(
        self, kind: str, detail: str, status: int | None = None, wait_s: float | None = None
    ) -> None:
        super().__init__(detail)
        self.kind, self.detail, self.status, self.wait_s = kind, detail, status, wait_s


@dataclass
class Answer(Generic[T]):
    """A request's result: what `parse` made of the JSON body, the tries it took, and the
    seconds from the start of the try that succeeded to its parsed answer."""

    data: T
    tries: int
    latency_s: float


# -- pieces (pure) ----------------------------------------------------------------------


def one_line(text: bytes | str, limit: int = MAX_DETAIL_CHARS) -> str:
    """The start of `text` on one printable line (what a server sent goes into a terminal)."""
    if isinstance(text, bytes):
        text = text[: 4 * limit].decode("utf-8", "replace")
    flat = " ".join(text[: 4 * limit].split())
    return "".join(c if c.isprintable() else "?" for c in flat)[:limit]


def quote(text: bytes | str) -> str:
    """one_line(text) in quotes, for a message that must show where the server's text ends."""
    return repr(one_line(text))


def decode_json(body: bytes) -> Any:
    """The JSON value of a body; BadResponse says why not (bad UTF-8, nesting too deep)."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadResponse(f"body is not JSON ({type(exc).__name__}): {quote(body)}") from None


def error_code(body: bytes) -> str | None:
    """An OpenAI error body's `error.code`, when it is a short string."""
    try:
        error = json.loads(body).get("error")
        code = error.get("code") if isinstance(error, dict) else None
    except (ValueError, RecursionError, AttributeError):
        return None
    return code if isinstance(code, str) and len(code) <= 100 else None


def is_transient(status: int, code: str | None) -> bool:
    """Whether an HTTP error answer is worth another try (see the module docstring)."""
    if code in FINAL_CODES:
        return False
    return status in TRANSIENT_STATUSES or (status >= 500 and status not in FINAL_STATUSES)


def error_detail(body: bytes) -> str:
    """An error answer's message (OpenAI's {"error": {"message"}} or {"error": "..."}), else
    the start of the body; one line."""
    try:
        error = json.loads(body).get("error")
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message.strip():
            return one_line(message)
    except (ValueError, RecursionError, AttributeError):
        pass
    return one_line(body)


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks to wait: retry-after-ms, else Retry-After (seconds or an HTTP
    date; a past date is 0); None when absent, negative, not finite or not understood."""
    try:
        ms = float(headers.get("retry-after-ms", "nan"))
        if 0 <= ms < float("inf"):
            return ms / 1000
    except ValueError:
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        seconds = max(0.0, seconds)
    return seconds if 0 <= seconds < float("inf") else None


def http_url(url: str) -> urllib.parse.SplitResult | None:
    """`url` split, when it is http(s) with a host and a valid port; else None."""
    parts = urllib.parse.urlsplit(url.strip())
    try:
        _ = parts.port  # raises on a port out of range or not a number
    except ValueError:
        return None
    ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    return parts if ok else None


def join_url(base: str, path: str) -> str:
    """`path` appended to the path of `base`; credentials and query stay."""
    parts = urllib.parse.urlsplit(base.strip())
    return urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + path))


def public_url(url: str) -> str:
    """`url` as messages and records show it: no credentials, query or fragment."""
    parts = urllib.parse.urlsplit(url.strip())
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_api_key(key: str | None) -> None:
    """Refuse a key an HTTP library would reject with an error that quotes it."""
    if key and (not key.isprintable() or " " in key):
        raise ConfigError("the API key holds spaces or control characters (not shown)")


class RateLimiter:
    """At most `rate` starts per second over all threads (0: no limit)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next_t = 0.0
        self.lock = threading.Lock()

    def wait(self, stop: threading.Event) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_t)
            self.next_t = start + self.interval
        if stop.wait(start - now):
            raise Cancelled


def _as_is(data: Any) -> Any:
    return data


# -- the client -------------------------------------------------------------------------


class HttpClient:
    """JSON requests to one server, retried as the module docstring says; thread-safe (one
    client serves all threads: its connections, rate limit and fault counts are shared)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 600.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 60.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_retry_after_s: float = MAX_RETRY_AFTER_S,
        rate_limit: float = 0.0,
        connections: int = 100,
        user_agent: str = "mathrl",
    ) -> None:
        try:
            import httpx
        except ImportError:
            raise MathrlError("HTTP requests need httpx: pip install 'mathrl[distill]'") from None
        if http_url(base_url) is None:
            raise MathrlError(f"{base_url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000)")
        check_api_key(api_key)
        self.httpx, self.base_url = httpx, base_url.strip()
        self.timeout_s, self.retries = timeout_s, max(0, retries)
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.max_body_bytes, self.max_retry_after_s = max_body_bytes, max_retry_after_s
        self.limiter = RateLimiter(rate_limit)
        headers = {"User-Agent": user_agent}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        from mathrl.rollout.deadline import deadline, deadline_transport

        self.deadline = deadline
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0)),
            transport=deadline_transport(httpx.Limits(max_connections=connections)),
            headers=headers,
        )
        self.faults: Counter[str] = Counter()
        """Retries made, by kind: timeout, connection, bad_response or the HTTP status."""
        self.lock = threading.Lock()
        self.rng = random.Random()

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def retries_made(self) -> int:
        with self.lock:
            return sum(self.faults.values())

    def request_json(
        self, method: str, path: str, body: Any = None, stop: threading.Event | None = None
    ) -> Any:
        """The JSON reply of one request (`path` is appended to the base URL's path)."""
        return self.request(method, path, body, stop=stop).data

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        parse: Callable[[Any], T] = _as_is,
        stop: threading.Event | None = None,
    ) -> Answer[T]:
        """One request, retried; `parse` turns the JSON reply into the answer (BadResponse:
        retry). Raises HttpError, or Cancelled once `stop` is set (checked between tries)."""
        url = join_url(self.base_url, path)
        shown = public_url(url)
        stop = stop or threading.Event()
        last: _Transient | None = None
        for attempt in range(self.retries + 1):
            if stop.is_set():
                raise Cancelled
            self.limiter.wait(stop)
            started = time.monotonic()
            try:
                data = self._once(method, url, shown, body, started + self.timeout_s, parse)
            except _Transient as fault:
                last = fault
                if attempt == self.retries:
                    break
                with self.lock:
                    self.faults[fault.kind] += 1
                if stop.wait(self._delay(attempt, fault.wait_s)):
                    raise Cancelled from None
                continue
            return Answer(data, attempt + 1, time.monotonic() - started)
        assert last is not None
        raise HttpError(
            shown, last.detail, status=last.status, kind=last.kind, tries=attempt + 1, gave_up=True
        )

    def _delay(self, attempt: int, wait_s: float | None) -> float:
        """Seconds before the next try: jittered exponential backoff, or the server's wait."""
        backoff = min(self.max_backoff_s, self.backoff_s * 2.0 ** min(attempt, 60))
        return max(backoff * self.rng.uniform(0.5, 1.0), wait_s or 0.0)

    def _once(
        self,
        method: str,
        url: str,
        shown: str,
        body: Any,
        deadline: float,
        parse: Callable[[Any], T],
    ) -> T:
        httpx = self.httpx
        try:
            with self.deadline(deadline), self.client.stream(method, url, json=body) as response:
                status, headers = response.status_code, response.headers
                data = self._read(response, ok=200 <= status < 300)
        except httpx.TimeoutException:
            raise _Transient("timeout", f"no answer within {self.timeout_s:g} s") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise HttpError(shown, one_line(str(exc))) from None
        except httpx.TransportError as exc:  # refused, reset, closed mid-answer
            raise _Transient("connection", one_line(f"{type(exc).__name__}: {exc}")) from None
        if 200 <= status < 300:
            try:
                return parse(decode_json(data))
            except BadResponse as exc:
                raise _Transient(
                    "bad_response", one_line(f"bad answer: {exc}", 2 * MAX_DETAIL_CHARS)
                ) from None
        detail = error_detail(data)
        if is_transient(status, error_code(data)):
            wait_s = retry_after(headers)
            if wait_s is not None and wait_s > self.max_retry_after_s:
                raise HttpError(shown, detail, status=status, kind=str(status), wait_s=wait_s)
            raise _Transient(str(status), detail, status, wait_s)
        location = headers.get("location") if 300 <= status < 400 else None
        raise HttpError(shown, detail, status=status, kind=str(status), location=location)

    def _read(self, response: Any, ok: bool) -> bytes:
        """The body up to the cap (over it: a 2xx is a bad answer, an error body is cut)."""
        limit = self.max_body_bytes if ok else MAX_ERROR_BODY_BYTES
        declared = response.headers.get("content-length", "")
        if ok and declared.isdigit() and int(declared) > limit:  # no need to read it
            raise _Transient("bad_response", f"bad answer: body over {limit} bytes")
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                if ok:
                    raise _Transient("bad_response", f"bad answer: body over {limit} bytes")
                break
        return b"".join(chunks)[:limit]
