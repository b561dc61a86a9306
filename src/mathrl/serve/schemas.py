"""Request bodies of the OpenAI-compatible API, the server's limits and its error type.

Bodies are validated strictly (pydantic strict mode, from the raw JSON): a string where a
number belongs is an error, not coerced, and an unknown field is refused by name, so a
typo such as `max_token` cannot be silently ignored. OpenAI fields that would change the
output and that mathrl does not implement (penalties, logit_bias, tools, streaming, top
log-probs, echo) are accepted only at their defaults; anything else is a 400 naming them.
Extensions, named as vLLM names them: `top_k`, `ignore_eos`, `return_token_ids`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ApiError(Exception):
    """An HTTP error answered as `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (
            status,
            message,
            param,
            code,
            type,
        )
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (beyond these it gets a 413 for the body, else a 400)
    and what the queue holds (a request that does not fit gets a 429 with Retry-After)."""

    max_body_bytes: int = 1 << 20
    max_n: int = 64
    max_tokens: int = 4096
    """Cap on max_tokens; the model's context length caps prompt + max_tokens as well."""
    max_prompts: int = 256
    """Prompts in one /v1/completions request (a list of prompts)."""
    max_stop: int = 4
    max_stop_chars: int = 256
    max_rows: int = 256
    """Rows (prompts x n) in one request."""
    max_request_tokens: int = 262_144
    """Tokens one request may ask to generate: rows x max_tokens (64 x 4096)."""
    max_queue_rows: int = 4096
    """Rows of the requests queued or running together."""
    max_queue_tokens: int = 8_388_608
    """Tokens (rows x max_tokens) of the requests queued or running together."""
    retry_after_s: int = 1
    """The Retry-After a full queue answers with."""

    def __post_init__(self) -> None:
        # a request the per-request caps allow must fit an empty queue
        if self.max_queue_rows < self.max_rows or self.max_queue_tokens < self.max_request_tokens:
            raise ValueError(
                f"max_queue_rows ({self.max_queue_rows}) and max_queue_tokens "
                f"({self.max_queue_tokens}) must be at least max_rows ({self.max_rows}) and "
                f"max_request_tokens ({self.max_request_tokens}): one request must fit"
            )


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # torch.Generator.manual_seed's range


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SamplingFields(_Strict):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str
    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False
    user: str | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    # Extensions (vLLM's names): -1 and 0 both mean "no top-k".
    top_k: int = Field(0, ge=-1)
    ignore_eos: bool = False
    return_token_ids: bool = False
    """Add `token_ids` and `prompt_token_ids` to each choice (what RL needs back)."""

    def unsupported(self) -> dict[str, bool]:
        """Field name -> whether it is set to something mathrl does not implement."""
        return {
            "stream": self.stream,
            "frequency_penalty": self.frequency_penalty != 0,
            "presence_penalty": self.presence_penalty != 0,
            "logit_bias": bool(self.logit_bias),
        }

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_template_dict(self) -> dict[str, str]:
        """{role, content} for the chat template (developer is the newer name of system)."""
        text = (
            self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=1)
    """OpenAI's newer name of max_tokens; give one of them."""
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> dict[str, bool]:
        fmt = (self.response_format or {}).get("type", "text")
        return {
            **super().unsupported(),
            "top_logprobs": bool(self.top_logprobs),
            "tools": bool(self.tools),
            "response_format": fmt != "text",
        }


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0)
    """0 returns the sampled tokens' log-probs; more (top alternatives) is not implemented."""
    echo: bool = False
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None

    def unsupported(self) -> dict[str, bool]:
        return {
            **super().unsupported(),
            "logprobs": bool(self.logprobs),
            "echo": self.echo,
            "best_of": self.best_of not in (None, self.n),
            "suffix": self.suffix is not None,
        }


class LoadWeightsRequest(_Strict):
    path: str = Field(min_length=1, max_length=4096)


UNSUPPORTED_HINT = {
    "logprobs": "only the sampled tokens' log-probs are returned: use logprobs=0",
    "top_logprobs": "only the sampled tokens' log-probs are returned: leave top_logprobs unset",
}


def parse(model: type[_Strict], raw: bytes) -> Any:
    """A request model from the raw body, or ApiError(400) naming the first bad field."""
    try:
        req = model.model_validate_json(raw)
    except ValidationError as e:
        raise validation_error(e) from None
    for name, bad in req.unsupported().items() if isinstance(req, SamplingFields) else ():
        if bad:
            hint = UNSUPPORTED_HINT.get(name, "mathrl serve does not implement it")
            raise ApiError(400, f"'{name}' is not supported: {hint}", param=name)
    return req


UNION_TYPES = {
    "prompt": "a string, a list of strings, a list of token ids or a list of token-id lists",
    "stop": "a string or a list of strings",
    "content": "a string or a list of text parts",
}


def _is_union_tag(part: object) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "int"))


def validation_error(e: ValidationError) -> ApiError:
    """The first pydantic error as one readable line; `param` is the field's path."""
    err = e.errors(include_url=False)[0]
    kind = err["type"]
    if kind == "json_invalid":
        return ApiError(400, f"the body is not valid JSON ({err['msg']})", code="invalid_json")
    # Union members show up in the path as their type names ("list[int]"): leave them out.
    path = [str(p) for p in err["loc"] if not _is_union_tag(p)]
    param = ".".join(path) or None
    if any(_is_union_tag(p) for p in err["loc"]) and path[-1] in UNION_TYPES:
        return ApiError(
            400, f"'{param}' must be {UNION_TYPES[path[-1]]}", param=param, code="invalid_value"
        )
    if kind == "extra_forbidden":
        return ApiError(400, f"unknown field '{param}'", param=param, code="unknown_field")
    if kind == "missing":
        return ApiError(400, f"'{param}' is required", param=param, code="missing_field")
    if kind == "model_type" and not path:
        return ApiError(400, "the body must be a JSON object", code="invalid_body")
    return ApiError(400, f"{param or 'body'}: {err['msg']}", param=param, code="invalid_value")
