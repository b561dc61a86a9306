"""Engine completions -> OpenAI response bodies: stop strings, finish reasons, log-probs.

Stop strings are applied after generation: the engine stops at the model's stop tokens or
max_tokens, then the text is cut before the first stop string and the tokens after the
one that completed it are dropped (finish_reason "stop"). So a stop string saves no
compute, and the returned `token_ids`/log-probs end with the stop string's tokens, which
is what the model sampled. Log-probs are the sampled tokens' under the raw model
distribution (temperature 1, no top-p/top-k), what a trainer's forward recomputes; the
stop token (e.g. <|im_end|>) is included when the model emitted it.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from mathrl.rollout.types import Completion


@dataclass
class Choice:
    """One completion after stop strings: what a choice of the response carries."""

    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" | "length"


def apply_stop(tokenizer: Any, c: Completion, stops: list[str]) -> Choice:
    """Cut `c` at the first of `stops` in its text (see the module docstring)."""
    finish = "stop" if c.finish_reason == "eos" else "length"
    hits = [i for i in (c.text.find(s) for s in stops if s) if i >= 0]
    if not hits:
        return Choice(c.text, list(c.token_ids), list(c.logprobs), finish)

    def has_stop(k: int) -> bool:
        text = tokenizer.decode(c.token_ids[:k], skip_special_tokens=True)
        return any(s and s in text for s in stops)

    # The shortest token prefix whose text holds a stop string (binary search: a longer
    # prefix's text extends a shorter one's).
    lo, hi = 1, len(c.token_ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if has_stop(mid):
            hi = mid
        else:
            lo = mid + 1
    return Choice(c.text[: min(hits)], list(c.token_ids[:lo]), list(c.logprobs[:lo]), "stop")


def token_pieces(tokenizer: Any, token_ids: list[int]) -> list[str]:
    """Each token decoded alone (special tokens kept, so <|im_end|> shows as itself)."""
    return list(tokenizer.batch_decode([[t] for t in token_ids], skip_special_tokens=False))


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable character that stands for each byte."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTE_OF = _byte_level_table()


def token_bytes(tokenizer: Any, token_ids: list[int], pieces: list[str]) -> list[list[int]]:
    """Each token's own bytes: a byte-level BPE token may hold part of a UTF-8 character,
    which its decoded piece shows as U+FFFD; other tokenizers give the piece's UTF-8."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or "ByteLevel" not in repr(backend.decoder):
        return [list(p.encode("utf-8")) for p in pieces]
    out = []
    for token, piece in zip(tokenizer.convert_ids_to_tokens(token_ids), pieces, strict=True):
        if token in tokenizer.all_special_tokens or not all(ch in BYTE_OF for ch in token):
            out.append(list(piece.encode("utf-8")))
        else:
            out.append([BYTE_OF[ch] for ch in token])
    return out


def chat_logprobs(tokenizer: Any, choice: Choice) -> dict[str, Any]:
    """OpenAI chat shape: {"content": [{token, logprob, bytes, top_logprobs}]}."""
    pieces = token_pieces(tokenizer, choice.token_ids)
    raw = token_bytes(tokenizer, choice.token_ids, pieces)
    return {
        "content": [
            {"token": p, "logprob": lp, "bytes": b, "top_logprobs": []}
            for p, lp, b in zip(pieces, choice.logprobs, raw, strict=True)
        ]
    }


def completion_logprobs(tokenizer: Any, choice: Choice) -> dict[str, Any]:
    """OpenAI legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset."""
    pieces = token_pieces(tokenizer, choice.token_ids)
    offsets, at = [], 0
    for p in pieces:
        offsets.append(at)
        at += len(p)
    return {
        "tokens": pieces,
        "token_logprobs": choice.logprobs,
        "top_logprobs": None,
        "text_offset": offsets,
    }


def usage(prompts: list[list[int]], choices: list[Choice]) -> dict[str, int]:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(c.token_ids) for c in choices)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def envelope(kind: str, model: str) -> dict[str, Any]:
    """id, object, created and model of a response; kind: chat.completion | text_completion."""
    prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
    return {
        "id": f"{prefix}-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
    }


def chat_response(
    tokenizer: Any,
    model: str,
    prompt: list[int],
    choices: list[Choice],
    logprobs: bool,
    token_ids: bool,
) -> dict[str, Any]:
    out = []
    for i, c in enumerate(choices):
        item: dict[str, Any] = {
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": chat_logprobs(tokenizer, c) if logprobs else None,
            "finish_reason": c.finish_reason,
        }
        if token_ids:
            item["token_ids"], item["prompt_token_ids"] = c.token_ids, prompt
        out.append(item)
    return {**envelope("chat.completion", model), "choices": out, "usage": usage([prompt], choices)}


def completion_response(
    tokenizer: Any,
    model: str,
    prompts: list[list[int]],
    choices: list[Choice],
    n: int,
    logprobs: bool,
    token_ids: bool,
) -> dict[str, Any]:
    """choices prompt-major: index = prompt * n + sample, as OpenAI numbers them."""
    out = []
    for i, c in enumerate(choices):
        item: dict[str, Any] = {
            "index": i,
            "text": c.text,
            "logprobs": completion_logprobs(tokenizer, c) if logprobs else None,
            "finish_reason": c.finish_reason,
        }
        if token_ids:
            item["token_ids"], item["prompt_token_ids"] = c.token_ids, prompts[i // n]
        out.append(item)
    return {
        **envelope("text_completion", model),
        "choices": out,
        "usage": usage(prompts, choices),
    }
