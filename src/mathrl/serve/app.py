"""The FastAPI app: OpenAI routes over a ServeState.

Every failure is answered in OpenAI's shape, `{"error": {"message", "type", "param",
"code"}}`: bad requests with a 4xx (the body is read here, capped, and parsed by
schemas.parse, so FastAPI's own 422 never appears), unknown routes with 404/405, and an
internal error with a 500 whose message says to read the server's log (the traceback goes
there, never to the client).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from mathrl.serve.batching import Abandoned, ServerClosing
from mathrl.serve.responses import Choice, apply_stop, chat_response, completion_response
from mathrl.serve.schemas import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    LoadWeightsRequest,
    parse,
)
from mathrl.serve.server import ServeState


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    too_big = ApiError(413, f"the body is larger than {limit} bytes", code="body_too_large")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad Content-Length header", code="invalid_body")
        if int(declared) > limit:
            raise too_big
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_big
            chunks.append(chunk)
    except ClientDisconnect:  # hung up mid-body: nobody to answer, nothing to log
        raise ApiError(499, "the client closed the connection", code="client_closed") from None
    return b"".join(chunks)


def create_app(state: ServeState) -> FastAPI:
    """The app; its lifespan starts and stops the batcher's worker thread."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.batcher.start()
        yield
        state.batcher.close()

    app = FastAPI(
        title="mathrl serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.serve = state
    app.state.started = int(time.time())
    _install_error_handlers(app)
    app.include_router(router)
    return app


router = APIRouter()
"""The routes; each reads its ServeState from the app (`request.app.state.serve`)."""


async def body_of(request: Request, model: type[Any]) -> Any:
    """The request's body parsed as `model`, after the API key check."""
    state: ServeState = request.app.state.serve
    state.check_key(request.headers.get("authorization"))
    return parse(model, await read_body(request, state.limits.max_body_bytes))


async def sample(
    request: Request, prompts: list[list[int]], req: Any, max_tokens: int | None, param: str
) -> tuple[Any, list[Choice]]:
    """(sampling, choices with the request's stop strings applied) for the prompts."""
    state: ServeState = request.app.state.serve
    sampling = state.sampling(req, prompts, max_tokens, param)
    try:
        completions = await state.generate(prompts, sampling, request.is_disconnected)
    except ServerClosing as e:
        raise ApiError(503, str(e), type="server_error", code="shutting_down") from None
    except Abandoned as e:
        raise ApiError(499, str(e), code="client_closed") from None
    stops = req.stop_list()

    def cut() -> list[Choice]:
        return [apply_stop(state.tokenizer, c, stops) for c in completions]

    return sampling, await run_in_threadpool(state.tokenizing, cut)


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness for anyone; the model, weights and counters only with the key (when set)."""
    state: ServeState = request.app.state.serve
    try:
        state.check_key(request.headers.get("authorization"))
    except ApiError:
        return {"status": "ok"}
    b = state.batcher
    return {
        "status": "ok",
        "model": state.name,
        "weights": state.weights,
        "tokenizer": state.fingerprint,
        "engine_calls": b.engine_calls,
        "requests_done": b.jobs_done,
        "clients_gone": state.clients_gone,
        "requests_cancelled": b.jobs_cancelled,
        "requests_refused_busy": b.jobs_refused,
        "calls_stopped": b.calls_stopped,
        "queued_rows": b.queued_rows,
        "queued_tokens": b.queued_tokens,
    }


@router.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    state: ServeState = request.app.state.serve
    state.check_key(request.headers.get("authorization"))
    created = request.app.state.started
    card = {"id": state.name, "object": "model", "created": created, "owned_by": "mathrl"}
    return {"object": "list", "data": [{**card, "max_model_len": state.context}]}


@router.post("/v1/chat/completions")
async def chat(request: Request) -> JSONResponse:
    state: ServeState = request.app.state.serve
    req: ChatRequest = await body_of(request, ChatRequest)
    state.check_model(req.model)
    if req.max_tokens is not None and req.max_completion_tokens is not None:
        raise ApiError(400, "give max_tokens or max_completion_tokens, not both", "max_tokens")
    prompt = await run_in_threadpool(state.chat_prompt, req)
    max_tokens = req.max_tokens or req.max_completion_tokens
    _, choices = await sample(request, [prompt], req, max_tokens, "messages")

    def body() -> dict[str, Any]:
        return chat_response(
            state.tokenizer, state.name, prompt, choices, req.logprobs, req.return_token_ids
        )

    return JSONResponse(await run_in_threadpool(state.tokenizing, body))


@router.post("/v1/completions")
async def completions(request: Request) -> JSONResponse:
    state: ServeState = request.app.state.serve
    req: CompletionRequest = await body_of(request, CompletionRequest)
    state.check_model(req.model)
    prompts = await run_in_threadpool(state.completion_prompts, req)
    sampling, choices = await sample(request, prompts, req, req.max_tokens, "prompt")
    logprobs = req.logprobs is not None

    def body() -> dict[str, Any]:
        tok, name, n, ids = state.tokenizer, state.name, sampling.n, req.return_token_ids
        return completion_response(tok, name, prompts, choices, n, logprobs, ids)

    return JSONResponse(await run_in_threadpool(state.tokenizing, body))


@router.post("/v1/load_weights")
async def load_weights(request: Request) -> dict[str, Any]:
    state: ServeState = request.app.state.serve
    req: LoadWeightsRequest = await body_of(request, LoadWeightsRequest)
    return await run_in_threadpool(state.load_weights, req.path)


def _install_error_handlers(app: FastAPI) -> None:
    """ApiError, routing errors and anything unexpected, all in OpenAI's error shape."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        headers = {**exc.headers, **({"WWW-Authenticate": "Bearer"} if exc.status == 401 else {})}
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")
        err.code = code
        return JSONResponse(err.body(), status_code=exc.status_code)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(ApiError(400, "invalid request").body(), status_code=400)

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises it after this answer, so the server's log gets the traceback.
        err = ApiError(
            500,
            f"internal error ({type(exc).__name__}); the server's log has the details",
            type="server_error",
        )
        return JSONResponse(err.body(), status_code=500)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
