"""An httpx transport whose every socket operation ends by the calling thread's deadline.

httpx's timeouts bound each read, write and connect on its own: a server that sends one
header byte every 0.4 s never trips a 1 s read timeout, however long the answer takes. Here
each socket operation's timeout is cut to the time left before the deadline that
`deadline(t)` set for the calling thread (a try runs in its caller's thread), so connect,
TLS, sending, the status line, the headers and the body together end by it: past it the
operation raises httpcore's timeout, which httpx raises as its own TimeoutException.

    transport = deadline_transport(httpx.Limits(max_connections=100))
    with deadline(time.monotonic() + 5):
        client.get(url)  # over within 5 s, headers and body alike

Proxies from the environment are not used (the client talks to its server directly).
"""

from __future__ import annotations

import math
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import httpcore
import httpx

_local = threading.local()


@contextmanager
def deadline(at: float) -> Iterator[None]:
    """Socket operations of this thread end by time.monotonic() == `at`."""
    previous = getattr(_local, "at", None)
    _local.at = at
    try:
        yield
    finally:
        _local.at = previous


def _left(timeout: float | None) -> float | None:
    """`timeout` cut to the time left before this thread's deadline (None: no limit)."""
    at = getattr(_local, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    return left if timeout is None else min(timeout, left)


def _check(left: float | None, error: type[Exception]) -> float | None:
    if left is not None and left <= 0:
        raise error("the request's deadline has passed")
    return left


class _Stream(httpcore.NetworkStream):
    """A network stream whose reads and writes end by the thread's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _check(_left(timeout), httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _check(_left(timeout), httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _check(_left(timeout), httpcore.ConnectTimeout)
        return _Stream(self.inner.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """httpcore's socket backend, its streams cut by the thread's deadline."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _check(_left(timeout), httpcore.ConnectTimeout)
        return _Stream(self.inner.connect_tcp(host, port, left, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        left = _check(_left(timeout), httpcore.ConnectTimeout)
        return _Stream(self.inner.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        left = _left(seconds)
        time.sleep(max(0.0, seconds if left is None or math.isnan(left) else left))


def deadline_transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """httpx's transport over a connection pool on the deadline backend."""
    transport = httpx.HTTPTransport(limits=limits)
    # HTTPTransport takes no network backend; its pool is rebuilt with one, as it builds it.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_Backend(),
    )
    return transport
