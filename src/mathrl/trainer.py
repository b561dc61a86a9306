"""Online RL: sample prompts -> n completions each -> rewards -> advantages -> loss -> step.

The loop below is the whole algorithm; each line calls one layer:
`data` hands out prompts, `sampling` generates and scores groups, `rl` turns them into an
update (advantages, micro-batched loss, clip, optimizer step), `eval` measures held-out
accuracy, `checkpoint` saves. Simplifications, stated up front:
- Several ranks (torchrun) split each step's prompts; every rank sees the whole step's
  groups (`dist.gather`), so rewards, advantages, metrics and logs are the whole batch's,
  and trains on its share with the loss normalised and gradients summed over ranks
  (mathrl.dist). Rank 0 writes; the others compute the same and write nothing.
- A signal (Ctrl-C, SIGTERM) stops the loop at the next step boundary, after a
  checkpoint (mathrl.stopping).
- Rollouts and updates alternate on the same weights: step k's samples come from the
  policy after step k - 1 (on-policy; mu > 1 reuses them PPO-style). With a rollout
  server and rollout.off_policy_steps = 1, step k + 1's samples are drawn (from the
  weights before step k) while step k trains; the loss then takes the sampler's log-probs
  as the old ones, and the new weights are published once both are done.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from mathrl import checkpoint as ckpt_mod
from mathrl import dist, fsdp, stopping
from mathrl.algorithms import zero_std_mask
from mathrl.backends import backend_for
from mathrl.config import Config
from mathrl.data import heldout_split, prompt_stream, training_examples
from mathrl.errors import MathrlError
from mathrl.eval.evaluate import heldout_metrics
from mathrl.groups import (
    Group,
    collect_groups,
    reward_metrics,
    reward_pool,
    rollout_engine,
    rollout_records,
)
from mathrl.io import append_jsonl
from mathrl.loggers import warn
from mathrl.rl import (
    TrainState,
    advantages_for,
    optimizer_state,
    reference_for,
    save_checkpoint,
    step_scheduler,
    train_step,
    truncated_rows,
)
from mathrl.rollout.registry import SERVER_ENGINES
from mathrl.tasks import Task


def train(
    cfg: Config,
    task: Task,
    model: Any,
    tokenizer: Any,
    run_dir: Path,
    logger: Any,
    resume_from: Path | None = None,
    on_step: Callable[[int, Any], None] | None = None,
) -> TrainState:
    """The RL loop. Returns the final TrainState; checkpoints land in run_dir/checkpoints."""
    t = cfg.train
    ranks = dist.current()
    check_parallel(cfg, ranks.world)
    b = backend_for(cfg)  # everything framework-specific: reference, step, checkpoint
    optimizer, scheduler, state, saved = optimizer_state(cfg, b, model, resume_from)
    if resume_from is not None and ranks.is_main:
        ckpt_mod.truncate_logs(run_dir, state.step)
    ref = reference_for(cfg, b, model, state, run_dir, resumed=resume_from is not None)
    engine = rollout_engine(cfg, model, tokenizer, run_dir=run_dir)
    stream = prompt_stream(cfg, task, training_examples(cfg, task), state)
    eval_split = heldout_split(cfg, task)
    prompt_cache: dict[str, list[int]] = {}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # The sampler's weights lag the trainer's: its log-probs are the old ones in the loss.
    frozen_server = cfg.rollout.engine in SERVER_ENGINES and cfg.rollout.weight_sync == "none"
    pending: Future[Any] | None = None  # the next step's rollouts (off_policy_steps = 1)
    if saved is not None:
        ckpt_mod.set_rng_state(saved["rng"])  # restored last, after everything that draws
    with (
        reward_pool(t) as pool,
        ThreadPoolExecutor(1, thread_name_prefix="mathrl-rollout") as background,
    ):

        def rollouts(step: int) -> tuple[list[Any], dict[str, float]]:
            with fsdp.full_weights(model):  # FSDP: decode on the gathered model
                return collect_groups(
                    cfg, stream, engine, pool, task, prompt_cache, tokenizer, step
                )

        def heldout() -> dict[str, float]:
            with fsdp.full_weights(model):
                return heldout_metrics(cfg, model, tokenizer, task, eval_split, pool)

        if cfg.eval.every and state.step == 0:
            logger.log(heldout(), 0)
        while state.step < t.steps:
            t_step, comm_before = time.perf_counter(), dist.comm_seconds()
            dist.at_step(state.step + 1)
            model.eval()
            staleness = 0 if pending is None else 1  # optimizer steps between sampler and now
            mine, metrics = rollouts(state.step) if pending is None else pending.result()
            groups, metrics, first_row = whole_step(mine, metrics, ranks.rank)
            metrics.update(stream.observe(groups))  # before the next step's prompts are drawn
            consumed = (state.epoch, state.cursor)  # prompts this step and earlier ones used
            if cfg.rollout.off_policy_steps and state.step + 1 < t.steps:
                pending = background.submit(rollouts, state.step + 1)  # on the server
            else:
                pending = None
            metrics["rollout/staleness"] = float(staleness)
            rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float32)
            advantages = advantages_for(cfg, state, rewards, truncated_rows(groups))  # (B,)
            metrics.update(reward_metrics(groups))
            if groups and bool(zero_std_mask(rewards, t.group_size).all()):
                warn(
                    f"step {state.step + 1}: every group has identical rewards, so there is no learning signal",
                    step=state.step + 1,
                )
            model.train()
            t_train = time.perf_counter()
            my_advantages = advantages[first_row : first_row + sum(len(g.rewards) for g in mine)]
            metrics.update(
                train_step(
                    cfg,
                    model,
                    ref,
                    optimizer,
                    mine,
                    my_advantages,
                    pad_id,
                    rollout_logprobs=staleness > 0 or frozen_server,
                    backend=b,
                )
            )
            step_scheduler(scheduler)
            model.eval()
            if pending is not None:
                wait([pending])  # never swap the server's weights during a rollout
            engine.update_weights(model)
            now = time.perf_counter()
            n_tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
            metrics.update(
                {
                    "time/train_s": now - t_train,
                    "time/step_s": now - t_step,
                    "time/comm_s": dist.comm_seconds() - comm_before,
                    "optim/lr": scheduler.get_last_lr()[0],
                    "perf/rollout_tokens_per_s": n_tokens / max(1e-9, metrics["time/rollout_s"]),
                }
            )
            state.step += 1
            state.samples += len(rewards)
            every_r = cfg.log.rollouts_every
            if every_r and (state.step % every_r == 0 or state.step == t.steps) and ranks.is_main:
                append_jsonl(
                    run_dir / "rollouts.jsonl",
                    rollout_records(groups, advantages, task, state.step, 0),
                )
            logger.log(metrics, state.step)
            if cfg.eval.every and (state.step % cfg.eval.every == 0 or state.step == t.steps):
                logger.log(heldout(), state.step)
            if on_step is not None:
                on_step(state.step, metrics)

            def save(used: tuple[int, int] = consumed) -> Path:
                # Saved at the prompts this step used: a resume samples the pending step's
                # prompts again (same seeds, from the checkpoint's weights). Rank 0 writes.
                with rewound(state, used):
                    return save_checkpoint(
                        cfg,
                        b,
                        run_dir,
                        model,
                        tokenizer,
                        optimizer,
                        scheduler,
                        state,
                        task.fingerprint,
                    )

            every = cfg.checkpoint.every
            due = (every and state.step % every == 0) or state.step == t.steps
            committed = save() if due else None
            stopping.check(state.step, save if cfg.checkpoint.on_signal else None, committed)
    return state


def check_parallel(cfg: Config, world: int) -> None:
    """What data-parallel RL does not do (yet), refused before the first step."""
    if world == 1:
        return
    fsdp.check(cfg)
    t = cfg.train
    if t.prompts_per_step % world:
        raise MathrlError(
            f"train.prompts_per_step ({t.prompts_per_step}) must be a multiple of the number "
            f"of ranks ({world}): a group never splits across ranks"
        )
    if cfg.rollout.engine in SERVER_ENGINES:
        raise MathrlError(
            f"rollout.engine = {cfg.rollout.engine!r} runs on one rank: with several, every "
            "rank would publish weights to the server"
        )


def whole_step(
    mine: list[Group], metrics: dict[str, float], rank: int
) -> tuple[list[Group], dict[str, float], int]:
    """Every rank's groups of the step (rank order), the step's rollout metrics (counts
    summed, times and rounds the slowest rank's) and the first row of this rank's share."""
    parts = dist.gather((mine, metrics))
    groups = [g for part, _ in parts for g in part]
    merged: dict[str, float] = {}
    for _, m in parts:
        for k, v in m.items():
            summed = k in ("rollout/sampled", "rollout/dropped_groups")
            merged[k] = merged.get(k, 0.0) + v if summed else max(merged.get(k, v), v)
    first_row = sum(len(g.rewards) for part, _ in parts[:rank] for g in part)
    return groups, merged, first_row


@contextmanager
def rewound(state: TrainState, position: tuple[int, int]) -> Iterator[None]:
    """The prompt stream's (epoch, cursor) set to `position` for the duration (a save)."""
    ahead = (state.epoch, state.cursor)
    state.epoch, state.cursor = position
    try:
        yield
    finally:
        state.epoch, state.cursor = ahead
