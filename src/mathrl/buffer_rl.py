"""Decoupled RL (the MLX REINFORCE design): rollout -> buffer file -> train from it -> repeat.

    out_dir/buffer/iter_000.jsonl   one record per completion, with token ids and the
                                    sampling log-probs, so training can correct for the
                                    policy having moved since (PPO ratio vs sampler)
    out_dir/checkpoints/            the same format as online RL

Iteration `it` covers the global steps [it * S, it * S + n) (S = steps per iteration, n
this iteration's steps), draws the prompts at stream positions [it * S * P, ...) of the
shuffled training prompts (P = prompts_per_step; the same pass-rate filter as online RL)
and samples with each global step's seed, so a resumed loop continues where it stopped
without keeping any other state.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from mathrl import checkpoint as ckpt_mod
from mathrl import dist, fsdp
from mathrl.backends import backend_for
from mathrl.config import Config
from mathrl.data import PromptStream, training_examples
from mathrl.errors import DataError, MathrlError
from mathrl.groups import (
    Group,
    collect_groups,
    reward_metrics,
    reward_pool,
    rollout_engine,
    rollout_records,
)
from mathrl.io import append_jsonl, read_jsonl
from mathrl.rewards import RewardResult
from mathrl.rl import (
    advantages_for,
    optimizer_state,
    reference_for,
    save_checkpoint,
    step_scheduler,
    train_step,
    truncated_rows,
)
from mathrl.rollout.types import Completion
from mathrl.tasks import Example, Task

BUFFER_DIR = "buffer"


def buffer_path(run_dir: Path, it: int) -> Path:
    return run_dir / BUFFER_DIR / f"iter_{it:03d}.jsonl"


def steps_per_iter(max_steps: int, iters: int) -> int:
    return math.ceil(max_steps / max(1, iters))


def rollout_iteration(
    cfg: Config,
    task: Task,
    model: Any,
    tokenizer: Any,
    run_dir: Path,
    it: int,
    n_steps: int,
    steps_per_iter: int | None = None,
) -> Path:
    """Sample n_steps * prompts_per_step groups with the current policy into the buffer file.

    steps_per_iter (default n_steps) places the iteration: its first global step is
    it * steps_per_iter (the last iteration of a loop may run fewer steps). Under torchrun
    each rank samples its share of every step's prompts and rank 0 writes the whole file,
    in the order one process writes it.
    """
    t = cfg.train
    first_step = it * (steps_per_iter or n_steps)
    examples = training_examples(cfg, task)
    stream = PromptStream.at_position(examples, cfg.seed, first_step * t.prompts_per_step)
    engine = rollout_engine(cfg, model, tokenizer, run_dir=run_dir)
    path = buffer_path(run_dir, it)
    tmp = path.with_name(path.name + ".partial")

    def start() -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)

    dist.on_main(start)
    cache: dict[str, list[int]] = {}
    model.eval()
    with (
        reward_pool(t) as pool,
        fsdp.full_weights(model),  # FSDP: sample from the gathered model
    ):
        for step in range(first_step, first_step + n_steps):
            mine, _ = collect_groups(cfg, stream, engine, pool, task, cache, tokenizer, step)
            groups = [g for part in dist.gather(mine) for g in part]  # rank order
            if not dist.current().is_main:
                continue
            adv = torch.zeros(sum(len(g.completions) for g in groups))
            records = rollout_records(groups, adv, task, step + 1, it)
            comps = [c for g in groups for c in g.completions]
            for rec, c in zip(records, comps, strict=True):
                rec.update(
                    {
                        "prompt_ids": list(c.prompt_ids),
                        "completion_ids": list(c.token_ids),
                        "logprobs": [float(x) for x in c.logprobs],
                    }
                )
                del rec["advantage"]
            append_jsonl(tmp, records)
    dist.on_main(lambda: tmp.replace(path))  # a buffer file exists only once it is complete
    return path


def load_buffer(path: Path, group_size: int) -> list[Group]:
    """Groups of a buffer file, in file order; each group is checked for size."""
    if not path.is_file():
        raise DataError(f"Rollout buffer not found: {path}")
    groups: dict[str, list[dict[str, Any]]] = {}
    for i, r in enumerate(read_jsonl(path), 1):
        for key in ("group_id", "prompt_ids", "completion_ids", "logprobs", "reward"):
            if key not in r:
                raise DataError(
                    f"{path}: record {i} lacks '{key}' (not written by `mathrl rollout`?)"
                )
        groups.setdefault(f"{r['step']}/{r['group_id']}", []).append(r)
    out = []
    for gid, recs in groups.items():
        if len(recs) != group_size:
            raise DataError(
                f"{path}: group {gid} has {len(recs)} completions, train.group_size is {group_size}"
            )
        comps = [
            Completion(
                prompt_index=0,
                sample_index=j,
                prompt_ids=r["prompt_ids"],
                token_ids=r["completion_ids"],
                text=r["completion"],
                finish_reason=r["finish_reason"],
                logprobs=r["logprobs"],
            )
            for j, r in enumerate(recs)
        ]
        results = [
            RewardResult(
                reward=float(r["reward"]),
                components=r.get("reward_components", {}),
                pred=r.get("pred"),
                correct=bool(r.get("correct")),
                # a record without the field reads as not lenient-correct
                correct_lenient=bool(r.get("correct_lenient", False)),
                format_ok=True,
                reason=r.get("reason", "ok"),
            )
            for r in recs
        ]
        ex = Example(id=recs[0]["prompt_id"], question="", gold=str(recs[0].get("gold")))
        out.append(Group(ex, recs[0]["prompt_ids"], comps, results))
    return out


def train_on_buffer(
    cfg: Config,
    task: Task,
    model: Any,
    tokenizer: Any,
    run_dir: Path,
    path: Path,
    logger: Any,
    resume_from: Path | None,
    n_steps: int | None = None,
) -> int:
    """Train from a buffer file: consecutive chunks of prompts_per_step groups, one step each.
    Under torchrun every rank reads the file and trains on its share of each chunk
    (gradients summed over ranks: one process's update)."""
    t = cfg.train
    b = backend_for(cfg)
    optimizer, scheduler, state, _ = optimizer_state(cfg, b, model, resume_from)
    groups = load_buffer(path, t.group_size)
    chunks = [groups[i : i + t.prompts_per_step] for i in range(0, len(groups), t.prompts_per_step)]
    if n_steps is not None:
        chunks = chunks[:n_steps]
    if not chunks:
        raise DataError(f"Rollout buffer {path} is empty")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ref = reference_for(cfg, b, model, state, run_dir, resumed=resume_from is not None)
    for chunk in chunks:
        t0 = time.perf_counter()
        dist.at_step(state.step + 1)
        rewards = torch.tensor([r for g in chunk for r in g.rewards], dtype=torch.float32)
        advantages = advantages_for(cfg, state, rewards, truncated_rows(chunk))  # whole chunk
        first, mine = dist.share(chunk)  # this rank's groups
        first_row = sum(len(g.rewards) for g in chunk[:first])
        my_adv = advantages[first_row : first_row + sum(len(g.rewards) for g in mine)]
        model.train()
        metrics = reward_metrics(chunk)
        metrics.update(
            train_step(
                cfg, model, ref, optimizer, mine, my_adv, pad_id, rollout_logprobs=True, backend=b
            )
        )
        step_scheduler(scheduler)
        state.step += 1
        state.samples += len(rewards)
        metrics.update(
            {"time/train_s": time.perf_counter() - t0, "optim/lr": scheduler.get_last_lr()[0]}
        )
        logger.log(metrics, state.step)
    model.eval()
    save_checkpoint(
        cfg, b, run_dir, model, tokenizer, optimizer, scheduler, state, task.fingerprint
    )
    return state.step


def loop(
    cfg: Config,
    task: Task,
    run_dir: Path,
    iters: int,
    max_steps: int,
    load: Any,
    logger: Any,
    say: Any,
) -> int:
    """Alternate rollout and train-buffer; resumes from the newest checkpoint in run_dir."""
    per_iter = steps_per_iter(max_steps, iters)
    latest = ckpt_mod.latest_checkpoint(run_dir)
    done = ckpt_mod.read_manifest(latest)["step"] if latest else 0
    if done >= max_steps:
        say(f"nothing to do: {run_dir} is already at step {done} of {max_steps}")
        return done
    if done % per_iter and done < max_steps:
        raise MathrlError(
            f"Checkpoint {latest} at step {done} is not at an iteration boundary (steps_per_iter={per_iter})"
        )
    step = done
    for it in range(done // per_iter, iters):
        n = min(per_iter, max_steps - it * per_iter)
        if n <= 0:
            break
        model, tokenizer = load(latest / "model" if latest else None)
        say(
            f"iter {it}: rollout of {n * cfg.train.prompts_per_step} prompts x {cfg.train.group_size}"
        )
        path = buffer_path(run_dir, it)
        if not path.exists():
            path = rollout_iteration(cfg, task, model, tokenizer, run_dir, it, n, per_iter)
        say(f"iter {it}: training {n} steps from {path.name}")
        step = train_on_buffer(cfg, task, model, tokenizer, run_dir, path, logger, latest, n)
        latest = ckpt_mod.latest_checkpoint(run_dir)
    return step
