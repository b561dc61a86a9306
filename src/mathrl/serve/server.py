"""What the HTTP handlers work on: the served model, its tokenizer, the batcher, the API key,
the request limits, and `load_weights` confined to the weights root."""

from __future__ import annotations

import asyncio
import hmac
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError
from mathrl.model_source import resolve_model
from mathrl.models import lora
from mathrl.models.identity import tokenizer_fingerprint, weights_digest
from mathrl.rollout.chat import prompt_token_ids
from mathrl.rollout.http import one_line
from mathrl.rollout.types import Completion, RolloutEngine, SamplingParams
from mathrl.serve.batching import Batcher, QueueFull
from mathrl.serve.confine import check_confined, not_a_model, outside_root
from mathrl.serve.schemas import ApiError, ChatRequest, CompletionRequest, Limits, SamplingFields

DISCONNECT_POLL_S = 0.1
"""How often a waiting request checks that its client is still connected."""

Loader = Callable[[str], tuple[Any, Any]]
"""A resolved model source -> (model, tokenizer), on the served model's device and dtype."""


def context_length(model: Any) -> int | None:
    """The model's trained context (max_position_embeddings), if its config says."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


class ServeState:
    """The server's state; the FastAPI app (app.py) only parses, calls this and answers."""

    def __init__(
        self,
        engine: RolloutEngine,
        tokenizer: Any,
        name: str,
        source: str,
        loader: Loader,
        context: int | None,
        api_key: str | None = None,
        weights_root: Path | None = None,
        limits: Limits | None = None,
        max_rows: int = 64,
        max_wait_s: float = 0.01,
    ) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self.loader = loader
        self.context = context
        self.api_key = api_key or None
        self.weights_root = weights_root.resolve(strict=True) if weights_root else None
        self.limits = limits or Limits()
        lim = self.limits
        self.batcher = Batcher(
            engine, max_rows, max_wait_s, lim.max_queue_rows, lim.max_queue_tokens
        )
        self.fingerprint = tokenizer_fingerprint(tokenizer)
        model = getattr(engine, "model", None)
        digest = weights_digest(model) if model is not None else None
        self.weights: dict[str, Any] = {"source": source, "version": 0, "digest": digest}
        self.allowed_bases = _model_bases(source)
        # Text longer than this cannot fit the context, whatever it tokenizes to: refused
        # before tokenizing (a megabyte of text costs seconds of BPE).
        longest_token = max((len(t) for t in tokenizer.get_vocab()), default=1)
        self.max_prompt_chars = 2 * context * max(longest_token, 4) if context else None
        self.tok_lock = threading.Lock()  # HF fast tokenizers are not safe to share across threads
        self.load_lock = threading.Lock()  # one load_weights at a time (each holds a model copy)
        self.clients_gone = 0
        """Requests whose client closed the connection before the answer."""

    # -- checks -------------------------------------------------------------------------

    def check_key(self, authorization: str | None) -> None:
        """401 unless the request carries `Authorization: Bearer <key>` (when a key is set)."""
        if self.api_key is None:
            return
        scheme, _, given = (authorization or "").strip().partition(" ")
        ok = scheme.lower() == "bearer" and given.strip()
        if not ok or not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                code="invalid_api_key",
            )

    def check_model(self, name: str) -> None:
        if name != self.name:
            raise ApiError(
                404,
                f"the model '{name[:200]}' does not exist; this server serves '{self.name}'",
                param="model",
                code="model_not_found",
            )

    def sampling(
        self, req: SamplingFields, prompts: list[list[int]], max_tokens: int | None, param: str
    ) -> SamplingParams:
        """SamplingParams for a request, within the limits and the model's context."""
        lim = self.limits
        if req.n > lim.max_n:
            raise ApiError(400, f"n must be <= {lim.max_n}, got {_short(req.n)}", param="n")
        if len(prompts) > lim.max_prompts:
            raise ApiError(400, f"at most {lim.max_prompts} prompts per request", param=param)
        stops = req.stop_list()
        if len(stops) > lim.max_stop or any(len(s) > lim.max_stop_chars for s in stops):
            raise ApiError(
                400,
                f"at most {lim.max_stop} stop strings of <= {lim.max_stop_chars} characters",
                param="stop",
            )
        if max_tokens is not None and max_tokens > lim.max_tokens:
            raise ApiError(
                400,
                f"max_tokens must be <= {lim.max_tokens}, got {_short(max_tokens)}",
                param="max_tokens",
            )
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ApiError(400, "a prompt is empty", param=param)
        longest = max(len(p) for p in prompts)
        room = lim.max_tokens if self.context is None else self.context - longest
        if room < 1 or (max_tokens is not None and max_tokens > room):
            asked = max_tokens or 1
            raise ApiError(
                400,
                f"this model's maximum context length is {self.context} tokens; the prompt "
                f"has {longest} and max_tokens asks for {asked} more",
                param=param,
                code="context_length_exceeded",
            )
        max_new_tokens = max_tokens or min(lim.max_tokens, room)
        rows = len(prompts) * req.n
        if rows > lim.max_rows or rows * max_new_tokens > lim.max_request_tokens:
            raise ApiError(
                400,
                f"{len(prompts)} prompts x n = {req.n} x max_tokens = {max_new_tokens} asks "
                f"for too much: at most {lim.max_rows} rows (prompts x n) and "
                f"{lim.max_request_tokens} tokens (rows x max_tokens) per request",
                param="n" if rows > lim.max_rows else "max_tokens",
                code="request_too_large",
            )
        return SamplingParams(
            n=req.n,
            max_new_tokens=max_new_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=max(0, req.top_k),
            seed=req.seed,
            ignore_eos=req.ignore_eos,
        )

    # -- prompts ------------------------------------------------------------------------

    def tokenizing(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) holding the tokenizer lock (called from the handlers' thread pool)."""
        with self.tok_lock:
            return fn(*args)

    def check_chars(self, texts: list[str], param: str) -> None:
        if self.max_prompt_chars and sum(len(t) for t in texts) > self.max_prompt_chars:
            raise ApiError(
                400,
                f"the prompt is far longer than this model's context ({self.context} tokens)",
                param=param,
                code="context_length_exceeded",
            )

    def chat_prompt(self, req: ChatRequest) -> list[int]:
        messages = [m.as_template_dict() for m in req.messages]
        self.check_chars([m["content"] for m in messages], "messages")
        return self.tokenizing(prompt_token_ids, self.tokenizer, messages)

    def completion_prompts(self, req: CompletionRequest) -> list[list[int]]:
        """Token ids of each prompt: text is tokenized, token ids are range-checked."""
        texts, prompts = _split_prompt(req.prompt)
        if len(texts) + len(prompts) > self.limits.max_prompts:
            raise ApiError(400, f"at most {self.limits.max_prompts} prompts", param="prompt")
        if texts:
            for t in texts:
                self.check_chars([t], "prompt")
            encoded = self.tokenizing(lambda: [self.tokenizer.encode(t) for t in texts])
            return [list(ids) for ids in encoded]
        if not prompts:
            raise ApiError(400, "prompt is empty", param="prompt")
        vocab = len(self.tokenizer)
        if any(not 0 <= t < vocab for x in prompts for t in x):
            raise ApiError(400, f"token ids must be in [0, {vocab})", param="prompt")
        return prompts

    async def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingParams,
        client_gone: Callable[[], Awaitable[bool]],
    ) -> list[Completion]:
        """Completions from the batcher, prompt-major, without blocking the event loop; a
        full queue is a 429, and a client gone before the answer abandons its job."""
        try:
            job = self.batcher.submit(prompts, sampling)
        except QueueFull as e:
            retry = str(self.limits.retry_after_s)
            raise ApiError(
                429, str(e), type="server_error", code="server_busy", headers={"Retry-After": retry}
            ) from None
        result = asyncio.wrap_future(job.future)
        while True:
            done, _ = await asyncio.wait({result}, timeout=DISCONNECT_POLL_S)
            if done:
                return result.result()
            if await client_gone():
                job.abandon()
                result.cancel()  # what the job still gets goes nowhere
                self.clients_gone += 1
                raise ApiError(499, "the client closed the connection", code="client_closed")

    # -- load_weights -------------------------------------------------------------------

    def resolve_weights(self, path: str) -> str:
        """The model source `path` names, if it lies under the weights root; else ApiError."""

        root = self.weights_root
        if root is None:
            raise ApiError(
                403,
                "load_weights is off: start the server with --weights-root DIR",
                param="path",
                code="load_weights_disabled",
                type="permission_error",
            )
        if "\x00" in path:
            raise ApiError(400, "path holds a NUL byte", param="path")
        given = Path(path)
        try:
            real = (given if given.is_absolute() else root / given).resolve()  # symlinks and ..
            if not real.is_relative_to(root):
                raise outside_root()
            if not real.exists():
                raise ApiError(404, f"nothing at {path!r} under the weights root", param="path")
            try:
                source = Path(resolve_model(str(real))).resolve()
            except MathrlError as e:
                raise not_a_model(str(e)) from None
            # A run dir resolves to its newest checkpoint; any file of the model dir, in a
            # subdirectory or named by a shard index, may be a symlink.
            check_confined(source, root)
        except (OSError, RuntimeError) as e:  # a symlink loop, a name too long, no access
            raise not_a_model(f"cannot read {path!r}: {one_line(str(e))}") from None
        outside = outside_root()
        self._check_adapter_base(source, outside)
        return str(source)

    def _check_adapter_base(self, source: Path, outside: ApiError) -> None:
        """LoRA adapters read their base model: it must be the served model's or in the root."""

        if not lora.is_adapter_dir(source):
            return
        try:
            base = lora.base_reference(source)
        except MathrlError as e:
            raise not_a_model(str(e)) from None
        local = Path(base).expanduser()
        inside = local.exists() and local.resolve().is_relative_to(self.weights_root or "/")
        if not inside and lora.portable(base) not in self.allowed_bases:
            raise outside

    def load_weights(self, path: str) -> dict[str, Any]:
        """Load the checkpoint at `path` and swap it in between two batches."""
        source = self.resolve_weights(path)
        with self.load_lock:
            try:
                model, tokenizer = self.loader(source)
            except Exception as e:  # a broken checkpoint is the request's problem: a 4xx
                detail = one_line(str(e)) or type(e).__name__
                raise not_a_model(f"cannot load {path!r}: {detail}") from None
            if tokenizer_fingerprint(tokenizer) != self.fingerprint:
                raise ApiError(
                    409,
                    "the checkpoint's tokenizer differs from the served one (vocabulary, special "
                    "tokens or chat template): token ids would not mean the same",
                    param="path",
                    code="tokenizer_mismatch",
                )

            digest = weights_digest(model)  # what a trainer compares with its own

            def swap(engine: RolloutEngine) -> None:
                engine.update_weights(model)
                self.context = context_length(model) or self.context

            self.batcher.between_batches(swap)
            version = int(self.weights["version"]) + 1
            self.weights = {"source": source, "version": version, "digest": digest}
        return {"object": "load_weights", "model": self.name, **self.weights}


def _short(value: int) -> str:
    """A number for an error message; a 400-digit one is not echoed back whole."""
    text = str(value)
    return text if len(text) <= 20 else f"{text[:8]}... ({len(text)} digits)"


def _split_prompt(
    prompt: str | list[str] | list[int] | list[list[int]],
) -> tuple[list[str], list[list[int]]]:
    """(texts, token-id prompts) of a /v1/completions prompt; one of the two is empty."""
    if isinstance(prompt, str):
        return [prompt], []
    texts = [x for x in prompt if isinstance(x, str)]
    if texts:
        return texts, []
    ids = [x for x in prompt if isinstance(x, int)]
    if ids:
        return [], [ids]
    return [], [list(x) for x in prompt if isinstance(x, list)]


def _model_bases(source: str) -> set[str]:
    """The served model and, for LoRA adapters, their base: the bases adapters may name."""

    bases = {lora.portable(source)}
    if lora.is_adapter_dir(source):
        bases.add(lora.portable(lora.base_reference(source)))
    return bases


def api_key_from_env(var: str | None) -> str | None:
    """The key in $var; naming an unset or empty variable is an error, never an open server."""
    if var is None:
        return None
    key = os.environ.get(var, "")
    if not key:
        raise MathrlError(f"--api-key-env {var}: the environment variable is not set or empty")
    return key
