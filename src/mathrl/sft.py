"""Supervised fine-tuning: response-only cross-entropy on (messages, response) pairs.

Pairs come from a prompt/response (or chat `messages`) JSONL file, or from the task's own
solutions (GSM8K worked solutions, Countdown solver solutions; a random valid solution
each time). Each step draws its batch with an RNG seeded by (seed, step), so a resumed
run sees the same batches. Batches are sorted by length so padding stays small.
"""

from __future__ import annotations

import functools
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mathrl import checkpoint as ckpt_mod
from mathrl import dist, fsdp, stopping
from mathrl.config import Config, dumps_toml
from mathrl.errors import DataError, MathrlError
from mathrl.io import read_jsonl
from mathrl.models.precision import forward_autocast, pad_multiple
from mathrl.rl import clip_gradients, make_optimizer
from mathrl.run_setup import checkpoint_meta, derive_seed
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


def sft_loss(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed response-token cross-entropy and the number of response tokens."""
    with forward_autocast(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    targets = input_ids[:, 1:]
    mask = loss_mask[:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.float().transpose(1, 2), targets, reduction="none"
    )  # (B, L-1)
    return (nll * mask).sum(), mask.sum()


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
    learner = sft_learner(cfg, model, resume_from)  # the backend's optimizer and update
    step = learner.step
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
        learner.zero_grad()
        total = 0.0
        chunks = [mine[i : i + micro] for i in range(0, len(mine), micro)]
        for i in range(fsdp.padded_count(len(chunks), model)):  # FSDP: equal passes per rank
            if i < len(chunks):
                total += learner.accumulate(chunks[i], n_tokens, pad_id)
            else:  # this rank's share ran out: a pass the others' collectives need
                learner.accumulate(encoded[:1], n_tokens, pad_id, weight=0.0)
        (total,) = dist.all_sum([total])
        grad_norm = learner.update(cfg.train.grad_clip)  # gradients summed over ranks
        if not math.isfinite(grad_norm):
            raise MathrlError(f"SFT step {step}: non-finite gradient; lower sft.lr")
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

        # every rank calls it; rank 0 writes (under FSDP after the ranks gather the shards)
        save = functools.partial(learner.save, cfg, run_dir, model, tokenizer, step, fingerprint)

        every = cfg.checkpoint.every
        saved = save() if (every and step % every == 0) or step == steps else None
        stopping.check(step, save if cfg.checkpoint.on_signal else None, saved)
    model.eval()
    return step


def sft_learner(cfg: Config, model: Any, resume_from: Path | None) -> Any:
    """The backend's SFT optimizer and update: TorchSFT here, rl/mlx_step.py's MlxSFT."""
    if cfg.backend == "mlx":
        from mathrl.rl.mlx_step import MlxSFT

        return MlxSFT(cfg, model, resume_from)
    return TorchSFT(cfg, model, resume_from)


class TorchSFT:
    """AdamW on the trainable parameters; response-token cross-entropy, micro-batched."""

    def __init__(self, cfg: Config, model: Any, resume_from: Path | None) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.multiple = pad_multiple(model)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, cfg.sft.lr, cfg.sft.weight_decay)
        self.step = 0
        if resume_from is not None:
            saved = ckpt_mod.load_trainer_state(resume_from)
            fsdp.load_optimizer(model, self.optimizer, saved["optimizer"])
            self.step = int(saved["step"])

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def accumulate(
        self, chunk: list[Encoded], n_tokens: int, pad_id: int, weight: float = 1.0
    ) -> float:
        """Backward of weight x the chunk's summed loss / n_tokens; returns the summed loss."""
        from mathrl.models.logprobs import pad_batch

        ids, attn, mask = pad_batch(
            [c[0] for c in chunk], [c[1] for c in chunk], pad_id, self.device, self.multiple
        )
        loss_sum, _ = sft_loss(self.model, ids, attn, mask)
        (loss_sum * (weight / n_tokens)).backward()
        return float(loss_sum.item())

    def update(self, grad_clip: float) -> float:
        """Sum gradients over ranks, clip, step (not on a non-finite norm); the norm."""
        dist.all_reduce_grads(self.model)  # nothing to do with one rank
        grad_norm = float(clip_gradients(self.model, grad_clip))
        if math.isfinite(grad_norm):
            self.optimizer.step()
        return grad_norm

    def save(
        self, cfg: Config, run_dir: Path, model: Any, tokenizer: Any, step: int, fp: str
    ) -> Path:
        return save_sft_checkpoint(cfg, run_dir, model, tokenizer, self.optimizer, step, fp)


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


def save_sft_checkpoint(
    cfg: Config, run_dir: Path, model: Any, tokenizer: Any, optimizer: Any, step: int, fp: str
) -> Path:
    """Commit an SFT checkpoint (same layout as RL's; trainer_state holds optimizer and step).
    Every rank calls it; rank 0 writes (under FSDP the ranks first gather the shards)."""
    weights, optim = fsdp.full_state(model, optimizer)
    return dist.on_main(
        lambda: _write_sft_checkpoint(cfg, run_dir, model, tokenizer, weights, optim, step, fp)
    )


def _write_sft_checkpoint(
    cfg: Config,
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    weights: dict[str, Any] | None,
    optim: dict[str, Any],
    step: int,
    fp: str,
) -> Path:
    payload = {"optimizer": optim, "step": step, "rng": ckpt_mod.rng_state()}
    return ckpt_mod.save_training_checkpoint(
        run_dir,
        step,
        model,
        tokenizer,
        payload,
        dumps_toml(cfg),
        checkpoint_meta(cfg, fp, {"kind": "sft"}),
        cfg.checkpoint.keep_last,
        weights=weights,
    )
