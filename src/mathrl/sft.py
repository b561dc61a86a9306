"""Supervised fine-tuning: response-only cross-entropy on (messages, response) pairs.

Pairs come from a prompt/response (or chat `messages`) JSONL file, or from the task's own
solutions (GSM8K worked solutions, Countdown solver solutions; a random valid solution
each time). Each step draws its batch with an RNG seeded by (seed, step), so a resumed
run sees the same batches. Batches are sorted by length so padding stays small.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mathrl import checkpoint as ckpt_mod
from mathrl import dist, fsdp, stopping
from mathrl.backends import backend_for
from mathrl.config import Config
from mathrl.errors import DataError, MathrlError
from mathrl.io import read_jsonl
from mathrl.run_setup import derive_seed
from mathrl.shards import Encoded
from mathrl.tasks import Task

Pair = tuple[list[dict[str, str]], str]


def read_pairs(path: str | Path) -> list[Pair]:
    """prompt/response records, or chat records whose last message is the assistant's."""
    rows = read_jsonl(Path(path))
    pairs: list[Pair] = []
    for i, r in enumerate(rows, 1):
        if isinstance(r.get("prompt"), str) and isinstance(r.get("response"), str):
            pairs.append(([{"role": "user", "content": r["prompt"]}], r["response"]))
        elif (
            isinstance(r.get("messages"), list)
            and r["messages"]
            and r["messages"][-1].get("role") == "assistant"
        ):
            msgs = r["messages"]
            pairs.append((list(msgs[:-1]), str(msgs[-1]["content"])))
        else:
            raise DataError(
                f"{path}: record {i} needs 'prompt' and 'response' strings, or 'messages' ending with an assistant turn"
            )
    if not pairs:
        raise DataError(f"SFT data file is empty: {path}")
    return pairs


def task_pair_sampler(
    task: Task, split: str = "train"
) -> Callable[[random.Random, int], list[Pair]]:
    """Draw n (messages, response) pairs from the task's own solutions."""
    examples = task.examples(split)
    if not examples:
        raise DataError(f"The {split} split is empty")

    def sample(rng: random.Random, n: int) -> list[Pair]:
        return [(task.messages(ex), task.response(ex, rng)) for ex in rng.choices(examples, k=n)]

    return sample


def file_pair_sampler(pairs: list[Pair]) -> Callable[[random.Random, int], list[Pair]]:
    def sample(rng: random.Random, n: int) -> list[Pair]:
        return rng.choices(pairs, k=n)

    return sample


def encode_pair(
    tokenizer: Any, messages: list[dict[str, str]], response: str, max_len: int
) -> Encoded:
    """(prompt + response + eos ids, prompt length), truncated to max_len."""
    from mathrl.rollout.chat import prompt_token_ids

    prompt = prompt_token_ids(tokenizer, messages)
    if len(prompt) >= max_len:
        raise DataError(
            f"A prompt of {len(prompt)} tokens leaves no room for the response: raise sft.max_len (now {max_len})"
        )
    answer = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
    return Encoded((prompt + answer)[:max_len], len(prompt))


def train_sft(
    cfg: Config,
    model: Any,
    tokenizer: Any,
    sampler: Callable[[random.Random, int], list[Pair] | list[Encoded]],
    run_dir: Path,
    logger: Any,
    fingerprint: str,
    steps: int | None = None,
    resume_from: Path | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> int:
    """Run SFT for `steps` (default sft.steps); returns the final step."""
    s = cfg.sft
    steps = s.steps if steps is None else steps
    backend = backend_for(cfg)
    optimizer = backend.optimizer(model, s.lr, s.weight_decay)
    step = 0
    if resume_from is not None:
        saved = ckpt_mod.load_trainer_state(resume_from)
        backend.load_optimizer(model, optimizer, resume_from, saved)
        step = int(saved["step"])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    micro = max(1, cfg.train.micro_batch_size)
    model.train()
    ranks = dist.current()
    while step < steps:
        t0 = time.perf_counter()
        dist.at_step(step + 1)
        encoded = sft_batch(cfg, tokenizer, sampler, step)  # the whole batch, on every rank
        n_tokens = sum(len(ids) - p for ids, p in encoded)  # what the loss is divided by
        mine = encoded[ranks.rank :: ranks.world]  # this rank's share, lengths balanced
        backend.seed_updates(cfg, optimizer)
        backend.zero_grad(optimizer)
        total = 0.0
        chunks = [mine[i : i + micro] for i in range(0, len(mine), micro)]
        for i in range(fsdp.padded_count(len(chunks), model)):  # FSDP: equal passes per rank
            if i < len(chunks):
                total += backend.sft_backward(model, chunks[i], n_tokens, pad_id)
            else:  # this rank's share ran out: a pass the others' collectives need
                backend.sft_backward(model, encoded[:1], n_tokens, pad_id, weight=0.0)
        (total,) = dist.all_sum([total])
        grad_norm = backend.clip_gradients(model, cfg.train.grad_clip)  # summed over ranks
        if not math.isfinite(grad_norm):
            raise MathrlError(f"SFT step {step}: non-finite gradient; lower sft.lr")
        backend.optimizer_step(model, optimizer)
        step += 1
        metrics = {
            "sft/loss": total / n_tokens,
            "sft/grad_norm": grad_norm,
            "sft/tokens": n_tokens,
            "time/step_s": time.perf_counter() - t0,
        }
        logger.log(metrics, step)
        if on_step is not None:
            on_step(step, metrics)

        def save(at: int = step) -> Path:
            # every rank calls it; rank 0 writes (under FSDP after the ranks gather the shards)
            payload = {"step": at, "rng": ckpt_mod.rng_state()}
            return backend.write_checkpoint(
                cfg, run_dir, at, model, tokenizer, payload, "sft", fingerprint, optimizer
            )

        every = cfg.checkpoint.every
        committed = save() if (every and step % every == 0) or step == steps else None
        stopping.check(step, save if cfg.checkpoint.on_signal else None, committed)
    model.eval()
    return step


def sft_batch(
    cfg: Config,
    tokenizer: Any,
    sampler: Callable[[random.Random, int], list[Pair] | list[Encoded]],
    step: int,
) -> list[Encoded]:
    """Step `step`'s batch (drawn with its own seed, so a resume sees the same), by length."""
    rng = random.Random(derive_seed(cfg.seed, step))
    encoded = [
        b if isinstance(b, Encoded) else encode_pair(tokenizer, b[0], b[1], cfg.sft.max_len)
        for b in sampler(rng, cfg.sft.batch_size)
    ]
    encoded.sort(key=lambda e: len(e[0]))  # similar lengths share a micro-batch
    if sum(len(ids) - p for ids, p in encoded) == 0:
        raise DataError("SFT batch has no response tokens (sft.max_len too small for the prompts?)")
    return encoded
