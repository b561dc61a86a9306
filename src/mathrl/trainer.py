"""Online RL: sample prompts -> n completions each -> rewards -> advantages -> loss -> step.

Simplifications, stated up front:
- One process decides which prompts it handles (`Dist`); with one rank that is all of them.
  Gradients and metrics pass through `Dist.all_reduce_*`, so data parallelism slots in.
- With mu = 1 the update is on-policy: old log-probs are the detached current ones, so no
  extra forward pass. With mu > 1 they come from one no-grad pass before the updates.
- Sequences with zero advantage contribute exactly zero policy gradient; when kl_coef = 0
  they are skipped in the backward pass, but still counted in the loss normaliser, so the
  result equals the full-batch loss.
"""

from __future__ import annotations

import copy
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mathrl import checkpoint as ckpt_mod
from mathrl.algorithms import (
    ADVANTAGES,
    PolicyLossConfig,
    compute_loss,
    update_ema_baseline,
    zero_std_mask,
)
from mathrl.config import Config, dumps_toml
from mathrl.errors import MathrlError
from mathrl.io import append_jsonl, read_jsonl, write_jsonl
from mathrl.loggers import console
from mathrl.models.logprobs import CompletionBatch, completion_batch, completion_logprobs
from mathrl.models.precision import low_precision_weights_warning, pad_multiple
from mathrl.rewards import RewardPool
from mathrl.rollout.chat import prompt_token_ids
from mathrl.rollout.registry import make_engine
from mathrl.rollout.types import Completion, RolloutEngine, SamplingParams
from mathrl.runtime import checkpoint_meta
from mathrl.tasks import Example, Task


@dataclass
class Dist:
    """Which share of the work this process does, and how results are reduced."""

    rank: int = 0
    world_size: int = 1

    def shard(self, items: list[Any]) -> list[Any]:
        return items[self.rank :: self.world_size]

    def all_reduce_grads(self, model: torch.nn.Module) -> None:
        if self.world_size > 1:  # pragma: no cover - lands with torch.distributed support
            raise NotImplementedError("multi-process training lands with the distributed issue")


@dataclass
class TrainState:
    """Everything besides model/optimizer weights that an exact continuation needs."""

    step: int = 0
    epoch: int = 0
    cursor: int = 0
    samples: int = 0
    baseline: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class PromptStream:
    """Deterministic epoch-wise shuffled prompt order with a resumable cursor."""

    def __init__(self, examples: list[Example], seed: int, state: TrainState) -> None:
        if not examples:
            raise MathrlError("The training split is empty")
        self.examples, self.seed, self.state = examples, seed, state

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list[Example]:
        out, order = [], self._order(self.state.epoch)
        while len(out) < n:
            if self.state.cursor >= len(order):
                self.state.epoch, self.state.cursor = self.state.epoch + 1, 0
                order = self._order(self.state.epoch)
            out.append(self.examples[order[self.state.cursor]])
            self.state.cursor += 1
        return out


@dataclass
class Group:
    """One prompt's completions and their scores."""

    example: Example
    prompt_ids: list[int]
    completions: list[Completion]
    results: list[Any]

    @property
    def rewards(self) -> list[float]:
        return [r.reward for r in self.results]


def lr_lambda(cfg: Config) -> Callable[[int], float]:
    t = cfg.train

    def f(step: int) -> float:
        if t.warmup_steps and step < t.warmup_steps:
            return (step + 1) / t.warmup_steps
        if t.schedule == "cosine":
            progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return f


def call_reward(fn: Callable[..., Any], completion: str, *args: Any) -> Any:
    """Top-level (picklable) trampoline run in the reward workers."""
    return fn(completion, *args)


def score_completions(
    pool: RewardPool, task: Task, examples: list[Example], completions: list[Completion]
) -> list[Any]:
    """RewardResults of completions (each continues examples[c.prompt_index]), in order."""
    # Each example names its own reward function, so the function travels with its item.
    items = [(*task.reward_call(examples[c.prompt_index]), c.text) for c in completions]
    return pool.map(call_reward, [(fn, text, *args) for fn, args, text in items]) if items else []


def score_groups(
    pool: RewardPool,
    task: Task,
    examples: list[Example],
    completions: list[Completion],
    n: int,
    prompts: list[list[int]],
) -> list[Group]:
    """Score prompt-major completions (n per example) and bundle them into groups."""
    results = score_completions(pool, task, examples, completions)
    return [
        Group(ex, prompts[i], completions[i * n : (i + 1) * n], results[i * n : (i + 1) * n])
        for i, ex in enumerate(examples)
    ]


def step_seed(cfg: Config, step: int, round_no: int = 0) -> int:
    """The sampling seed of a training step's rollout round (step counts from 0)."""
    return cfg.seed * 1_000_003 + step * 101 + round_no


def rollout_sampling(cfg: Config, n: int, seed: int) -> SamplingParams:
    """n samples per prompt at the configured rollout.* settings."""
    r = cfg.rollout
    return SamplingParams(
        n=n,
        max_new_tokens=r.max_new_tokens,
        temperature=r.temperature,
        top_p=r.top_p,
        top_k=r.top_k,
        ignore_eos=r.ignore_eos,
        seed=seed,
    )


def rollout_engine(cfg: Config, model: torch.nn.Module, tokenizer: Any) -> RolloutEngine:
    """The engine `cfg.rollout` names, on the trainer's (shared) model."""
    return make_engine(
        cfg.rollout.engine,
        model,
        tokenizer,
        batch_size=cfg.rollout.batch_size,
        lean_decode=cfg.rollout.lean_decode,
    )


def sample_examples(
    cfg: Config,
    model: Any,
    tokenizer: Any,
    task: Task,
    examples: list[Example],
    sampling: SamplingParams,
    pool: RewardPool,
) -> list[list[dict[str, Any]]]:
    """Scored completions (sampling.n per example) from `model` outside the training loop."""
    from mathrl.evaluate import sample_scored

    engine = rollout_engine(cfg, model, tokenizer)
    prompts = [prompt_token_ids(tokenizer, task.messages(ex)) for ex in examples]
    return sample_scored(engine, pool, task, examples, prompts, sampling)


def collect_groups(
    cfg: Config,
    stream: PromptStream,
    engine: Any,
    pool: RewardPool,
    task: Task,
    prompt_cache: dict[str, list[int]],
    tokenizer: Any,
    step: int,
) -> tuple[list[Group], dict[str, float]]:
    """Rollouts for one step; resamples zero-variance groups / too few positives when asked."""
    t = cfg.train
    want = t.prompts_per_step
    budget = t.max_total_rollouts or 4 * want * t.group_size
    groups: list[Group] = []
    sampled, rounds, dropped = 0, 0, 0
    timing = {"rollout_s": 0.0, "reward_s": 0.0}
    while True:
        examples = stream.take(want if rounds == 0 else max(1, want - len(groups)))
        prompts = []
        for ex in examples:
            if ex.id not in prompt_cache:
                prompt_cache[ex.id] = prompt_token_ids(tokenizer, task.messages(ex))
            prompts.append(prompt_cache[ex.id])
        sampling = rollout_sampling(cfg, t.group_size, step_seed(cfg, step, rounds))
        t0 = time.perf_counter()
        result = engine.generate(prompts, sampling)
        t1 = time.perf_counter()
        new = score_groups(pool, task, examples, result.completions, t.group_size, prompts)
        timing["rollout_s"] += t1 - t0
        timing["reward_s"] += time.perf_counter() - t1
        sampled += len(result.completions)
        rounds += 1
        if t.drop_zero_std:
            kept = [g for g in new if len(set(g.rewards)) > 1]
            dropped += len(new) - len(kept)
            new = kept
        groups += new
        positives = sum(r > 0 for g in groups for r in g.rewards)
        enough = len(groups) >= want and positives >= t.min_positive
        if enough or sampled >= budget:
            break
    if len(groups) > want:
        groups = groups[:want]
    stats = {
        "rollout/rounds": rounds,
        "rollout/sampled": sampled,
        "rollout/dropped_groups": dropped,
        "time/rollout_s": timing["rollout_s"],
        "time/reward_s": timing["reward_s"],
    }
    if rounds > 1 or len(groups) < want:
        stats["rollout/short_batch"] = float(len(groups) < want)
    return groups, stats


def reward_metrics(groups: list[Group]) -> dict[str, float]:
    results = [r for g in groups for r in g.results]
    comps = [c for g in groups for c in g.completions]
    if not results:
        return {}
    rewards = torch.tensor([r.reward for r in results], dtype=torch.float64)
    lens = [len(c.token_ids) for c in comps]
    m = {
        "reward/mean": rewards.mean().item(),
        "reward/std": rewards.std(unbiased=False).item(),
        "reward/accuracy": sum(r.correct for r in results) / len(results),
        "reward/accuracy_lenient": sum(r.correct_lenient for r in results) / len(results),
        "reward/frac_zero_std": sum(len(set(g.rewards)) <= 1 for g in groups) / len(groups),
        "reward/failed": sum(
            r.reason in ("timeout", "invalid_reward") or r.reason.startswith("error")
            for r in results
        ),
        "rollout/len_mean": sum(lens) / len(lens),
        "rollout/len_max": max(lens),
        "rollout/clipped_frac": sum(c.finish_reason == "length" for c in comps) / len(comps),
    }
    for key in results[0].components:
        m[f"reward/{key}"] = sum(r.components.get(key, 0.0) for r in results) / len(results)
    return m


def policy_update(
    cfg: Config,
    model: Any,
    ref_model: Any,
    optimizer: Any,
    groups: list[Group],
    advantages: torch.Tensor,
    pad_id: int,
    dist: Dist,
    rollout_logprobs: bool = False,
) -> dict[str, float]:
    """mu passes of micro-batched loss + backward, one optimizer step each.

    rollout_logprobs: use the sampler's log-probs as old log-probs (off-policy buffers).
    """
    t = cfg.train
    device = next(model.parameters()).device
    comps = [c for g in groups for c in g.completions]
    row_group = [gi for gi, g in enumerate(groups) for _ in g.completions]
    total_tokens = max(1, sum(len(c.token_ids) for c in comps))
    total_seqs = max(1, len(comps))
    # Zero-advantage sequences give exactly zero policy gradient; skip them unless KL needs them.
    keep = [i for i in range(len(comps)) if t.kl_coef > 0 or advantages[i].item() != 0.0]
    loss_cfg = PolicyLossConfig(
        clip_eps=t.clip_eps,
        clip_eps_high=t.clip_eps_high,
        agg_mode=t.loss_agg,
        max_len=cfg.rollout.max_new_tokens,
    )
    micro = [keep[i : i + t.micro_batch_size] for i in range(0, len(keep), t.micro_batch_size)]
    multiple = pad_multiple(model)
    batches = [micro_batch(groups, comps, row_group, mb, pad_id, device, multiple) for mb in micro]
    share = t.share_prompts
    old_lp: list[torch.Tensor | None] = [None] * len(micro)
    ref_lp: list[torch.Tensor | None] = [None] * len(micro)
    with torch.no_grad():
        for j, batch in enumerate(batches):
            if rollout_logprobs:
                old_lp[j] = sampler_logprobs([comps[i] for i in micro[j]], batch)
            elif t.mu > 1:
                old_lp[j] = completion_logprobs(model, batch, share_prompts=share)
            if ref_model is not None:
                ref_lp[j] = ref_logprobs(ref_model, model, batch, share)
    sums: dict[str, float] = {}
    grad_norm = torch.tensor(0.0)
    skipped = 0
    for _epoch in range(t.mu):
        optimizer.zero_grad(set_to_none=True)
        for j, mb in enumerate(micro):
            cmask = batches[j].completion_mask
            logprobs, entropy = completion_logprobs(
                model, batches[j], return_entropy=True, share_prompts=share
            )
            old = old_lp[j] if old_lp[j] is not None else logprobs.detach()
            out = compute_loss(
                logprobs,
                old,
                ref_lp[j],
                advantages[mb].to(device),
                cmask,
                loss_cfg,
                t.policy_loss,
                t.kl_coef,
                t.kl_estimator,
            )
            n_tok = cmask.sum().item()
            weight = n_tok / total_tokens if t.loss_agg == "token-mean" else len(mb) / total_seqs
            (out.loss * weight).backward()
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0.0) + v * n_tok
            sums["entropy"] = sums.get("entropy", 0.0) + (entropy * cmask).sum().item()
            sums["_tokens"] = sums.get("_tokens", 0.0) + n_tok
        dist.all_reduce_grads(model)
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, t.grad_clip if t.grad_clip > 0 else float("inf")
        )
        if not torch.isfinite(grad_norm):
            if t.nonfinite == "stop":
                raise MathrlError("Non-finite gradient norm; stopping (train.nonfinite = 'stop')")
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            continue
        optimizer.step()
    n = max(1.0, sums.pop("_tokens", 0.0))
    rename = {"policy_loss": "policy", "loss": "total"}
    metrics = {f"loss/{rename.get(k, k)}": v / n for k, v in sums.items() if k != "entropy"}
    for k in (
        "policy",
        "total",
        "clip_frac",
        "approx_kl",
    ):  # nothing trained: the loss is exactly 0
        metrics.setdefault(f"loss/{k}", 0.0)
    if micro:  # entropy of the trained sequences; absent when none carried a gradient
        metrics["rollout/entropy"] = sums.get("entropy", 0.0) / n
    metrics["optim/grad_norm"] = float(grad_norm)
    metrics["optim/skipped"] = skipped
    metrics["train/trained_seqs"] = len(keep)
    return metrics


def micro_batch(
    groups: list[Group],
    comps: list[Completion],
    row_group: list[int],
    rows: list[int],
    pad_id: int,
    device: torch.device,
    multiple: int = 1,
) -> CompletionBatch:
    """The CompletionBatch of `rows` (indices into comps): each distinct prompt once."""
    local: dict[int, int] = {}
    for i in rows:
        local.setdefault(row_group[i], len(local))
    prompts = [list(groups[g].prompt_ids) for g in local]
    return completion_batch(
        prompts,
        [local[row_group[i]] for i in rows],
        [list(comps[i].token_ids) for i in rows],
        pad_id,
        device,
        multiple,
    )


def sampler_logprobs(comps: list[Completion], batch: CompletionBatch) -> torch.Tensor:
    """(B, T) sampler log-probs laid out like the batch's completion tokens."""
    out = torch.zeros(batch.completion_mask.shape, dtype=torch.float32)
    for i, c in enumerate(comps):
        out[i, : len(c.logprobs)] = torch.tensor(c.logprobs, dtype=torch.float32)
    return out.to(batch.completion_mask.device)


def ref_logprobs(ref_model: Any, model: Any, batch: CompletionBatch, share: bool) -> torch.Tensor:
    if ref_model == "adapters_off":  # LoRA: the base weights are the reference
        with model.disable_adapter():
            return completion_logprobs(model, batch, share_prompts=share)
    return completion_logprobs(ref_model, batch, share_prompts=share)


def rollout_records(
    groups: list[Group], advantages: torch.Tensor, task: Task, step: int, it: int
) -> list[dict[str, Any]]:
    records, i = [], 0
    for gi, g in enumerate(groups):
        messages = task.messages(g.example)
        for c, r in zip(g.completions, g.results, strict=True):
            records.append(
                {
                    "iter": it,
                    "step": step,
                    "prompt_id": g.example.id,
                    "task": task.name,
                    "messages": messages,
                    "completion": c.text,
                    "completion_tokens": len(c.token_ids),
                    "finish_reason": c.finish_reason,
                    "reward": r.reward,
                    "reward_components": r.components,
                    "pred": r.pred,
                    "gold": g.example.gold,
                    "correct": r.correct,
                    "reason": r.reason,
                    "group_id": f"{step}:{gi}",
                    "advantage": float(advantages[i]),
                }
            )
            i += 1
    return records


def truncate_logs(run_dir: Path, step: int) -> None:
    """Drop log lines newer than the resumed checkpoint so the continued run re-logs them once."""
    for name in ("metrics.jsonl", "rollouts.jsonl"):
        path = run_dir / name
        if not path.exists():
            continue
        write_jsonl(path, [r for r in read_jsonl(path) if r.get("step", 0) <= step])


def train(
    cfg: Config,
    task: Task,
    model: Any,
    tokenizer: Any,
    run_dir: Path,
    logger: Any,
    resume_from: Path | None = None,
    dist: Dist | None = None,
    on_step: Callable[[int, Any], None] | None = None,
) -> TrainState:
    """The RL loop. Returns the final TrainState; checkpoints land in run_dir/checkpoints."""
    dist = dist or Dist()
    t = cfg.train
    optimizer, scheduler, state, saved = optimizer_state(cfg, model, resume_from)
    if resume_from is not None:
        truncate_logs(run_dir, state.step)
    ref_model = reference_model(cfg, model)
    engine = rollout_engine(cfg, model, tokenizer)
    stream = PromptStream(dist.shard(training_examples(cfg, task)), cfg.seed, state)
    eval_split = heldout_split(cfg, task)
    prompt_cache: dict[str, list[int]] = {}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if saved is not None:
        ckpt_mod.set_rng_state(saved["rng"])  # restored last, after everything that draws
    with RewardPool(timeout_s=t.reward_timeout_s, workers=t.reward_workers) as pool:
        if cfg.eval.every and state.step == 0:
            logger.log(run_eval(cfg, model, tokenizer, task, eval_split, pool), 0)
        while state.step < t.steps:
            t_step = time.perf_counter()
            model.eval()
            groups, metrics = collect_groups(
                cfg, stream, engine, pool, task, prompt_cache, tokenizer, state.step
            )
            rewards = torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float32)
            advantages = advantages_for(cfg, state, rewards)  # (B,)
            metrics.update(reward_metrics(groups))
            if groups and bool(zero_std_mask(rewards, t.group_size).all()):
                console.print(
                    f"[yellow]warning:[/] step {state.step + 1}: every group has identical rewards, so there is no learning signal",
                    soft_wrap=True,
                )
            model.train()
            t_train = time.perf_counter()
            metrics.update(
                policy_update(cfg, model, ref_model, optimizer, groups, advantages, pad_id, dist)
            )
            step_scheduler(scheduler)
            model.eval()
            engine.update_weights(model)
            now = time.perf_counter()
            n_tokens = sum(len(c.token_ids) for g in groups for c in g.completions)
            metrics.update(
                {
                    "time/train_s": now - t_train,
                    "time/step_s": now - t_step,
                    "optim/lr": scheduler.get_last_lr()[0],
                    "perf/rollout_tokens_per_s": n_tokens / max(1e-9, metrics["time/rollout_s"]),
                }
            )
            state.step += 1
            state.samples += len(rewards)
            if dist.rank == 0:
                every_r = cfg.log.rollouts_every
                if every_r and (state.step % every_r == 0 or state.step == t.steps):
                    append_jsonl(
                        run_dir / "rollouts.jsonl",
                        rollout_records(groups, advantages, task, state.step, 0),
                    )
                logger.log(metrics, state.step)
            if cfg.eval.every and (state.step % cfg.eval.every == 0 or state.step == t.steps):
                logger.log(run_eval(cfg, model, tokenizer, task, eval_split, pool), state.step)
            if on_step is not None:
                on_step(state.step, metrics)
            every = cfg.checkpoint.every
            if (every and state.step % every == 0) or state.step == t.steps:
                save(cfg, run_dir, model, tokenizer, optimizer, scheduler, state, task.fingerprint)
    return state


def step_scheduler(scheduler: Any) -> None:
    """Advance the LR schedule; quiet about a skipped (non-finite) optimizer step.

    The schedule follows training steps, taken or skipped, so that a resumed run and an
    uninterrupted one agree; torch warns when no optimizer.step() came first.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
        scheduler.step()


def optimizer_state(
    cfg: Config, model: Any, resume_from: Path | None
) -> tuple[Any, Any, TrainState, dict[str, Any] | None]:
    """AdamW + LR schedule + TrainState, restored from a checkpoint when resuming.

    Also returns the loaded payload (None when fresh): its RNG states must be restored by
    the caller last, after everything else that draws random numbers.
    """
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    if (warning := low_precision_weights_warning(params, t.lr)) is not None:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    if resume_from is None:
        return optimizer, scheduler, TrainState(), None
    saved = ckpt_mod.load_trainer_state(resume_from)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return optimizer, scheduler, TrainState(**saved["train_state"]), saved


def reference_model(cfg: Config, model: Any) -> Any:
    """The frozen KL reference: None at kl_coef 0; the adapter-free base under LoRA."""
    if cfg.train.kl_coef <= 0:
        return None
    if cfg.model.lora.r > 0:
        return "adapters_off"
    return copy.deepcopy(model).eval().requires_grad_(False)


def advantages_for(cfg: Config, state: TrainState, rewards: torch.Tensor) -> torch.Tensor:
    """Per-sample advantages (B,) of the configured algorithm; moves REINFORCE's baseline."""
    t = cfg.train
    kw: dict[str, Any] = {"baseline": state.baseline} if t.algorithm == "reinforce" else {}
    advantages = ADVANTAGES.get(t.algorithm)(rewards, t.group_size, **kw)
    if t.algorithm == "reinforce" and t.baseline_momentum > 0:
        state.baseline = update_ema_baseline(state.baseline, rewards, t.baseline_momentum)
    return advantages


def training_examples(cfg: Config, task: Task) -> list[Example]:
    """The train split, filtered by probed pass rate when data.keep_pass_rate is set."""
    examples = task.examples("train")
    if cfg.data.keep_pass_rate is None or cfg.data.pass_rates is None:
        return examples
    from mathrl.probe import filter_by_pass_rate, load_pass_rates

    lo, hi = cfg.data.keep_pass_rate
    counts: dict[str, int] = {}
    kept = filter_by_pass_rate(
        examples, load_pass_rates(Path(cfg.data.pass_rates)), lo, hi, counts=counts
    )
    console.print(
        f"pass-rate filter [{lo}, {hi}]: kept {len(kept)} of {len(examples)} training prompts {counts}",
        soft_wrap=True,
    )
    return kept


def heldout_split(cfg: Config, task: Task) -> str:
    """eval.split, with auto = val when the task has one, else test (never training prompts)."""
    if cfg.eval.split != "auto":
        return cfg.eval.split
    return "val" if task.examples("val") else "test"


def run_eval(
    cfg: Config, model: Any, tokenizer: Any, task: Task, split: str, pool: RewardPool
) -> dict[str, float]:
    """Held-out metrics under eval/ (seeded, so it never moves the training RNG streams)."""
    from mathrl.evaluate import eval_kwargs, eval_metrics, evaluate

    was_training = model.training
    model.eval()
    result = evaluate(
        model, tokenizer, task, split=split, progress=False, pool=pool, **eval_kwargs(cfg)
    )
    model.train(was_training)
    return eval_metrics(result.summary)


def save(
    cfg: Config,
    run_dir: Path,
    model: Any,
    tokenizer: Any,
    optimizer: Any,
    scheduler: Any,
    state: TrainState,
    fingerprint: str,
) -> Path:
    for p in model.parameters():
        if not torch.isfinite(p).all():
            raise MathrlError(
                f"Refusing to checkpoint step {state.step}: model weights are not finite"
            )
    payload = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "train_state": state.__dict__.copy(),
        "rng": ckpt_mod.rng_state(),
    }
    return ckpt_mod.save_training_checkpoint(
        run_dir,
        state.step,
        model,
        tokenizer,
        payload,
        dumps_toml(cfg),
        checkpoint_meta(cfg, fingerprint, {"kind": "rl"}),
        cfg.checkpoint.keep_last,
    )
