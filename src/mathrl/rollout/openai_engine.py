"""Rollouts from an OpenAI-compatible server (`rollout.engine = "openai"`).

The trainer keeps its model; generation happens in another process (`mathrl serve`, vLLM,
SGLang), possibly on another machine. Per call:
1. one `/v1/completions` request per prompt, its token ids as the prompt, `n` samples,
   `seed` = the prompt's seed (sampler.prompt_seed), `logprobs: 0` and `return_token_ids`
   (vLLM's name): RL needs the sampled token ids and their log-probs back, so a server that
   does not return them is refused with one line. Requests go out concurrently; the
   server batches them. mathrl serve samples prompt i of a call seeded s exactly as the
   in-process engine does (the per-completion streams of sampler.py).
2. after each optimizer step the trainer calls update_weights(model): the engine writes the
   weights under `weights_dir` (a fresh directory per version, renamed into place whole)
   and tells the server to load them (`weight_sync`):
   - "load_weights": mathrl serve's `POST /v1/load_weights {"path"}`; the reply's weights
     digest must equal the trainer's (models.identity.weights_digest), else the run stops;
   - "vllm_lora": vLLM's runtime LoRA loading, `POST /v1/load_lora_adapter
     {"lora_name", "lora_path"}` (the server started with --enable-lora and
     VLLM_ALLOW_RUNTIME_LORA_UPDATING=True), later requests name the new adapter and the
     previous one is unloaded; LoRA training only;
   - "none": the server is never updated (its model is fixed: off-policy by design).

Before the first request the server's tokenizer must be the trainer's: mathrl serve reports
its fingerprint on /health; other servers are asked to tokenize a probe text (/tokenize).
Responses are bounded (size, count, types, ranges) and a bad one is a one-line error.
"""

from __future__ import annotations

import math
import os
import queue
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mathrl.errors import MathrlError
from mathrl.models import lora
from mathrl.models.identity import tokenizer_fingerprint, weights_digest
from mathrl.rollout.http import Cancelled, HttpClient, HttpError, http_url, public_url
from mathrl.rollout.stops import Row, default_stop_ids
from mathrl.rollout.types import Chunk, FinishReason, RolloutEngine, SamplingParams

WEIGHT_SYNCS = ("load_weights", "vllm_lora", "none")
MAX_RESPONSE_BYTES = 64 << 20
"""Largest reply read (n completions of a long rollout with their log-probs)."""
JSON_KINDS: dict[type, str] = {list: "an array", str: "a string", bool: "a boolean"}
JSON_KINDS.update({int: "a number", float: "a number", type(None): "null"})
PROBE = "Natalia sold 48/2 = 24 clips in May; 3 + 4 * (5 - 2) = 15. <|im_end|> \u00e9\u4e2d"


class ServerError(MathrlError):
    """The rollout server failed or answered something RL cannot use."""


class ServerClient:
    """JSON over HTTP to one rollout server: rollout.http's transport (retries with backoff
    and Retry-After, deadline, bounded replies) with failures as one-line ServerErrors."""

    def __init__(
        self, base_url: str, api_key: str | None = None, timeout_s: float = 600.0, **http: Any
    ) -> None:
        """`http`: more of HttpClient's options (retries, backoff_s)."""
        if http_url(base_url) is None:
            raise MathrlError(
                "rollout.server_url must be the server's address, http://HOST:PORT or "
                f"https://HOST:PORT (got {base_url!r})"
            )
        self.base_url = base_url.strip().rstrip("/").removesuffix("/v1")
        self.http = HttpClient(
            self.base_url, api_key, timeout_s=timeout_s, max_body_bytes=MAX_RESPONSE_BYTES, **http
        )

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        stop: threading.Event | None = None,
    ) -> dict[str, Any]:
        """The JSON object of one call's reply (anything else is a ServerError); Cancelled
        once `stop` is set."""
        try:
            reply = self.http.request_json(method, path, body, stop=stop)
        except HttpError as e:
            raise ServerError(str(e)) from None
        if not isinstance(reply, dict):
            kind = JSON_KINDS.get(type(reply), type(reply).__name__)
            raise ServerError(
                f"{public_url(self.base_url)}{path} replied with {kind}, not a JSON object"
            )
        return reply

    def first_model(self) -> str:
        """The first model /v1/models lists (also a cheap check that the server answers)."""
        data = self.request("GET", "/v1/models")
        try:
            return str(data["data"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"{public_url(self.base_url)}/v1/models lists no model") from None


class OpenAIEngine(RolloutEngine):
    """Samples through an OpenAI-compatible server; see the module docstring."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        base_url: str,
        served_model: str = "",
        api_key: str | None = None,
        weight_sync: str = "load_weights",
        weights_dir: str | Path | None = None,
        verify_weights: bool = True,
        check_tokenizer: bool = True,
        concurrency: int = 32,
        timeout_s: float = 600.0,
        retries: int = 4,
        backoff_s: float = 0.5,
    ) -> None:
        if weight_sync not in WEIGHT_SYNCS:
            raise MathrlError(
                f"rollout.weight_sync must be one of {', '.join(WEIGHT_SYNCS)}, got {weight_sync!r}"
            )
        if weight_sync != "none" and not weights_dir:
            raise MathrlError(
                f"rollout.weight_sync = {weight_sync!r} needs rollout.weights_dir: a directory "
                "the server can read (for mathrl serve: under its --weights-root)"
            )
        if weight_sync == "vllm_lora" and not lora.is_peft_model(model):
            raise MathrlError(
                "rollout.weight_sync = 'vllm_lora' loads LoRA adapters into vLLM, so it needs "
                "LoRA training (model.lora.r > 0); use load_weights or none for full weights"
            )
        self.server = ServerClient(
            base_url, api_key, timeout_s, retries=retries, backoff_s=backoff_s
        )
        self.base_url = public_url(self.server.base_url)  # for messages: no credentials
        self.model = model
        self.tokenizer = tokenizer
        self.weight_sync = weight_sync
        self.weights_dir = Path(weights_dir).resolve() if weights_dir else None
        self.verify_weights = verify_weights
        self.concurrency = max(1, concurrency)
        self.stop_token_ids = set(default_stop_ids(model, tokenizer))
        self.vocab = len(tokenizer)
        self.version = 0
        self.tag = secrets.token_hex(4)
        """Names this engine's adapters apart from another process's (a resumed run's)."""
        self.published: dict[str, Any] | None = None
        self.served_model = served_model or self.server.first_model()
        self.request_model = self.served_model
        if check_tokenizer:
            self._check_tokenizer()
        if weight_sync != "none":
            self.update_weights(model)  # the server samples from the trainer's weights

    def _check_tokenizer(self) -> None:
        """Token ids must mean the same on both sides: compare fingerprints or a probe."""
        health = self.server.request("GET", "/health")
        theirs = health.get("tokenizer") if isinstance(health, dict) else None
        if isinstance(theirs, str):
            if theirs != tokenizer_fingerprint(self.tokenizer):
                raise ServerError(
                    f"{self.base_url} serves a model with another tokenizer (vocabulary, special "
                    "tokens or chat template): its token ids would not mean the trainer's"
                )
            return
        body = {"model": self.served_model, "prompt": PROBE, "add_special_tokens": False}
        try:
            reply = self.server.request("POST", "/tokenize", body)
        except ServerError as e:
            raise ServerError(
                f"cannot check the server's tokenizer ({e}); set rollout.check_tokenizer = false "
                "if you are sure it is the trainer's"
            ) from None
        mine = self.tokenizer.encode(PROBE, add_special_tokens=False)
        if not isinstance(reply, dict) or reply.get("tokens") != mine:
            raise ServerError(
                f"{self.base_url} tokenizes a probe text differently from the trainer: its "
                "token ids would not mean the trainer's"
            )

    # -- sampling --------------------------------------------------------------------------

    def _prompts_per_chunk(self, sampling: SamplingParams, count: int) -> int:
        """One chunk: every prompt is its own request, and the server batches them."""
        return max(1, count)

    def _decode_chunk(self, chunk: Chunk, state: None) -> list[Row]:
        """The n choices of each prompt from the server, requested concurrently."""
        t0 = time.perf_counter()
        prompts, sampling = chunk.prompts, chunk.sampling
        replies = run_concurrently(
            lambda i, stop: self._complete(prompts[i], chunk.seeds[i], sampling, stop),
            len(prompts),
            self.concurrency,
        )
        rows: list[Row] = []
        for reply in replies:
            rows += parse_choices(
                reply, sampling.n, sampling.max_new_tokens, self.vocab, self.stop_token_ids
            )
        chunk.timing["decode_s"] += time.perf_counter() - t0
        return rows

    def _complete(
        self, prompt: list[int], seed: int, sampling: SamplingParams, stop: threading.Event
    ) -> Any:
        body: dict[str, Any] = {
            "model": self.request_model,
            "prompt": prompt,
            "n": sampling.n,
            "max_tokens": sampling.max_new_tokens,
            "temperature": 0.0 if sampling.is_greedy else sampling.temperature,
            "top_p": sampling.top_p,
            # as a signed int64 (vLLM refuses seeds >= 2^63); the same stream (row_keys
            # reduces seeds mod 2^64)
            "seed": (seed % 2**64) - (2**64 if seed % 2**64 >= 2**63 else 0),
            "logprobs": 0,
            "return_token_ids": True,
        }
        if sampling.top_k:
            body["top_k"] = sampling.top_k
        if sampling.ignore_eos:
            body["ignore_eos"] = True
        return self.server.request("POST", "/v1/completions", body, stop=stop)

    # -- weights ---------------------------------------------------------------------------

    def update_weights(self, model: Any) -> None:
        """Publish `model`'s weights to the server (weight_sync) and wait until it uses them."""
        self.model = model
        if self.weight_sync == "none":
            return
        assert self.weights_dir is not None
        self.version += 1
        target = self.weights_dir / f"v{self.version:06d}"
        _save_whole(model, self.tokenizer, target)
        previous = self.published
        if self.weight_sync == "load_weights":
            reply = self.server.request("POST", "/v1/load_weights", {"path": str(target)})
            if self.verify_weights and reply.get("digest") != weights_digest(model):
                raise ServerError(
                    f"{self.base_url} loaded {target} but its weights digest differs from the "
                    "trainer's (a dtype the server casts to, or another file): set "
                    "rollout.verify_weights = false to accept it"
                )
            self.published = {"path": str(target)}
        else:  # vllm_lora
            name = f"mathrl-{self.tag}-v{self.version}"
            self.server.request(
                "POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(target)}
            )
            self.request_model = name
            self.published = {"path": str(target), "lora_name": name}
            if previous and "lora_name" in previous:
                self.server.request(
                    "POST", "/v1/unload_lora_adapter", {"lora_name": previous["lora_name"]}
                )
        if previous is not None:
            shutil.rmtree(previous["path"], ignore_errors=True)


def run_concurrently(
    fn: Callable[[int, threading.Event], Any], count: int, workers: int
) -> list[Any]:
    """[fn(0, stop), ..., fn(count - 1, stop)] on up to `workers` daemon threads. The first
    failure (or an interrupt of the caller) sets `stop` and is raised at once: requests
    still in flight end on their own (no new try starts), and nothing waits for them."""
    stop = threading.Event()
    todo: queue.SimpleQueue[int] = queue.SimpleQueue()
    for i in range(count):
        todo.put(i)
    done: queue.SimpleQueue[tuple[int, Any, BaseException | None]] = queue.SimpleQueue()

    def work() -> None:
        while not stop.is_set():
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((i, fn(i, stop), None))
            except Cancelled:
                return
            except BaseException as exc:  # handed to the caller's thread
                done.put((i, None, exc))
                return

    for k in range(min(max(1, workers), count)):
        threading.Thread(target=work, name=f"mathrl-request-{k}", daemon=True).start()
    results: list[Any] = [None] * count
    try:
        for _ in range(count):
            i, value, exc = done.get()
            if exc is not None:
                raise exc
            results[i] = value
    finally:
        stop.set()
    return results


def parse_choices(
    reply: Any, n: int, max_tokens: int, vocab: int, stop_ids: set[int]
) -> list[tuple[list[int], list[float], FinishReason]]:
    """(token ids, log-probs, finish) of each of the n choices of a /v1/completions reply,
    ordered by index; anything RL cannot use is a ServerError naming it."""
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or len(choices) != n:
        got = len(choices) if isinstance(choices, list) else "no"
        raise ServerError(f"the server returned {got} choices for n = {n}")
    out: list[tuple[list[int], list[float], FinishReason] | None] = [None] * n
    for k, ch in enumerate(choices):
        if not isinstance(ch, dict):
            raise ServerError(f"choice {k} is not an object")
        index = ch.get("index", k)
        if type(index) is not int or not 0 <= index < n or out[index] is not None:
            raise ServerError(f"choice {k} has a bad or repeated index {str(index)[:20]}")
        ids = ch.get("token_ids")
        lp_obj = ch.get("logprobs")
        lps = lp_obj.get("token_logprobs") if isinstance(lp_obj, dict) else None
        if ids is None or lps is None:
            raise ServerError(
                "the server did not return the sampled token ids and their log-probs, which "
                "RL needs for the importance ratio: use mathrl serve, or vLLM >= 0.10.2 "
                "(return_token_ids); the engine asks for logprobs=0 and return_token_ids=true"
            )
        if not isinstance(ids, list) or not 1 <= len(ids) <= max_tokens:
            raise ServerError(f"choice {k}: token_ids must be a list of 1..{max_tokens} ids")
        if any(type(t) is not int or not 0 <= t < vocab for t in ids):
            raise ServerError(f"choice {k}: a token id is not an integer in [0, {vocab})")
        if not isinstance(lps, list) or len(lps) != len(ids):
            raise ServerError(f"choice {k}: {len(ids)} token ids but not as many log-probs")
        if any(type(x) not in (int, float) or not math.isfinite(x) or x > 1e-3 for x in lps):
            raise ServerError(f"choice {k}: a log-prob is not a finite number <= 0")
        reason = ch.get("finish_reason")
        if reason not in ("stop", "length"):
            raise ServerError(f"choice {k}: finish_reason {str(reason)[:40]!r} is not stop/length")
        # "stop" at a stop token is the engine's "eos"; a server that stopped elsewhere
        # (a stop string it was not sent) is treated as cut at length.
        finish: FinishReason = "eos" if reason == "stop" and ids[-1] in stop_ids else "length"
        out[index] = (list(ids), [min(0.0, float(x)) for x in lps], finish)
    return [c for c in out if c is not None]


def _save_whole(model: Any, tokenizer: Any, target: Path) -> None:
    """save_pretrained into target.tmp, then rename: the server never sees a partial dir."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if lora.is_peft_model(model):  # the adapters, naming their base (as a checkpoint does)
        lora.save_adapters(model, tmp)
    else:
        model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
