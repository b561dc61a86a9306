"""The teacher: chat completions from its endpoint over rollout.http's transport, each reply
checked field by field, and failures told in the command's words (with a hint for 401, 403,
404 and redirects)."""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass
from typing import Any

from mathrl.distill.options import DistillOptions
from mathrl.errors import MathrlError
from mathrl.rollout.http import (
    BadResponse,
    HttpClient,
    HttpError,
    decode_json,
    http_url,
    join_url,
    public_url,
    quote,
)


@dataclass
class Reply:
    """One chat completion's choice, as the endpoint returned it."""

    completion: str
    reasoning: str | None
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    served_model: str | None = None
    latency_s: float = 0.0
    attempts: int = 1


def _clean(text: str) -> str:
    """Text that encodes as UTF-8 (a lone surrogate in JSON decodes but cannot be written)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _optional_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise BadResponse(f"{where}.{key} is {type(value).__name__}, not a string")


def _count(usage: Any, key: str) -> int | None:
    value = usage.get(key) if isinstance(usage, dict) else None
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def chat_reply(data: Any) -> Reply:
    """The first choice of a decoded chat completion; BadResponse says what is wrong."""
    if not isinstance(data, dict):
        raise BadResponse(f"body is a JSON {type(data).__name__}, not an object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        error = data.get("error")
        detail = f": error {quote(json.dumps(error))}" if error else ""
        raise BadResponse(f"no choices in the answer{detail}")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        raise BadResponse("choices[0].message is missing or not an object")
    content = _optional_str(message, "content", "message") or ""
    reasoning_fields = ("reasoning_content", "reasoning")
    found = [_optional_str(message, k, "message") for k in reasoning_fields]
    reasoning = next((r for r in found if r), None)
    usage = data.get("usage")
    served = data.get("model")
    return Reply(
        completion=_clean(content),
        reasoning=None if reasoning is None else _clean(reasoning),
        finish_reason=_optional_str(choices[0], "finish_reason", "choices[0]"),
        prompt_tokens=_count(usage, "prompt_tokens"),
        completion_tokens=_count(usage, "completion_tokens"),
        served_model=_clean(served[:200]) if isinstance(served, str) else None,
    )


def parse_reply(body: bytes) -> Reply:
    """The first choice of a chat completion body (as the teacher parses it)."""
    return chat_reply(decode_json(body))


def _base(endpoint: str) -> str:
    """The endpoint's base URL (…/v1), credentials and query kept; refused if not http(s)."""
    parts = http_url(endpoint)
    if parts is None:
        raise MathrlError(
            f"--endpoint {endpoint!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)"
        )
    path = parts.path.rstrip("/").removesuffix("/chat/completions")
    return urllib.parse.urlunsplit(parts._replace(path=path))


def chat_url(endpoint: str) -> tuple[str, str]:
    """(POST URL, the endpoint as recorded: no credentials or query) of a base URL."""
    base = _base(endpoint)
    return join_url(base, "/chat/completions"), public_url(base)


class Teacher:
    """Chat completions from one endpoint; the client's retries, deadline, body cap and rate
    limit are set from the options."""

    def __init__(self, opts: DistillOptions) -> None:
        self.http = HttpClient(
            _base(opts.endpoint),
            opts.api_key,
            timeout_s=opts.timeout_s,
            retries=opts.max_retries,
            backoff_s=opts.backoff_s,
            max_backoff_s=opts.max_backoff_s,
            max_body_bytes=opts.max_body_bytes,
            rate_limit=opts.rate_limit,
            connections=opts.concurrency,
            user_agent="mathrl-distill",
        )
        self.key_sent = bool(opts.api_key)

    @property
    def faults(self) -> Counter[str]:
        return self.http.faults

    def retries(self) -> int:
        return self.http.retries_made()

    def close(self) -> None:
        self.http.close()

    def complete(self, body: dict[str, Any], stop: threading.Event) -> Reply:
        """One trace (rollout.http.Cancelled once `stop` is set); MathrlError when it fails."""
        try:
            answer = self.http.request(
                "POST", "/chat/completions", body, parse=chat_reply, stop=stop
            )
        except HttpError as exc:
            raise MathrlError(self.explain(exc)) from None
        reply = answer.data
        reply.latency_s, reply.attempts = answer.latency_s, answer.tries
        return reply

    def explain(self, exc: HttpError) -> str:
        """A failure as one line: what the endpoint answered and, where it helps, what to do."""
        what = f"HTTP {exc.status}: {quote(exc.detail)}" if exc.status is not None else exc.detail
        if exc.gave_up:
            return f"{exc.url}: gave up after {exc.tries} tries; the last: {what}"
        if exc.wait_s is not None or exc.status is None:
            return str(exc)
        hint = {
            401: f"; is the API key set (--api-key-env)? {'one was' if self.key_sent else 'none was'} sent",
            403: "; the API key may lack access to this model",
            404: "; --endpoint is the base URL (ending in /v1) and --model one it serves?",
        }.get(exc.status, "")
        if 300 <= exc.status < 400:
            hint = f"; it redirects to {quote(exc.location or '?')}: use that as --endpoint"
        return f"{exc.url} answered {what}{hint}"
