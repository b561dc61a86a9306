"""Groups of completions: sampled by the rollout engine, scored by the reward pool.

Everything that samples (the RL loop, eval, probe, warm-up probe, expert iteration, the
buffer rollout) builds its engine, sampling parameters and seeds here, and scores
through `score_completions`, so a reward fault is handled the same way everywhere. Eval,
probe and expert iteration score a list of examples through one loop, `score_examples`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from mathrl import dist
from mathrl.config import Config, TrainConfig
from mathrl.data import PromptStream
from mathrl.errors import MathrlError
from mathrl.loggers import console
from mathrl.rewards import RewardPool
from mathrl.rollout.chat import prompt_token_ids
from mathrl.rollout.openai_engine import ServerClient
from mathrl.rollout.registry import SERVER_ENGINES, make_engine
from mathrl.rollout.sampler import prompt_chunks, prompt_seed
from mathrl.rollout.types import Completion, RolloutEngine, SamplingParams
from mathrl.run_setup import derive_seed
from mathrl.tasks import Example, Task


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


def reward_pool(t: TrainConfig) -> RewardPool:
    """The reward pool train.* configures: workers, the time limit, memory and CPU limits."""
    return RewardPool(
        t.reward_timeout_s, t.reward_workers, memory_mb=t.reward_memory_mb, cpu_s=t.reward_cpu_s
    )


def call_reward(fn: Callable[..., Any], completion: str, *args: Any) -> Any:
    """Top-level (picklable) trampoline run in the reward workers."""
    return fn(completion, *args)


def score_completions(
    pool: RewardPool, task: Task, examples: list[Example], completions: list[Completion]
) -> list[Any]:
    """RewardResults of completions (each continues examples[c.prompt_index]), in order."""
    # Each example names its own reward function, so the function travels with its item.
    items = [(*task.reward_call(examples[c.prompt_index]), c.text) for c in completions]
    if not items:
        return []
    results = pool.map(call_reward, [(fn, text, *args) for fn, args, text in items])
    # terms of the token count (task.rewards' overlong) are added outside the text pool
    add_length_terms = getattr(task, "add_length_terms", None)
    if add_length_terms is None:
        return results
    return add_length_terms(results, completions, [examples[c.prompt_index] for c in completions])


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
    return derive_seed(cfg.seed, step, round_no)


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


def rollout_engine(
    cfg: Config,
    model: torch.nn.Module,
    tokenizer: Any,
    batch_size: int | None = None,
    run_dir: Path | None = None,
    evaluation: bool = False,
) -> RolloutEngine:
    """The engine `cfg.rollout` names, on the trainer's (shared) model.

    A server engine (rollout.engine = "openai") samples the training loop's rollouts only
    (run_dir given): evaluation, probes and `mathrl serve` sample in-process, from the
    model in hand, with "hf". `evaluation` (eval, probes, held-out metrics) samples from
    the model's own weights whatever rollout.weights says: accuracy is the checkpoint's.
    """
    r = cfg.rollout
    name = "mlx" if cfg.backend == "mlx" else r.engine  # MLX samples in-process, always
    options: dict[str, Any] = {
        "batch_size": batch_size or r.batch_size,
        "lean_decode": r.lean_decode,
        "static_decode": r.static_decode,
        "compile": r.compile,
        "autocast": r.autocast,
        # evaluation measures the model's own weights, never a reduced copy
        "weights": "model" if evaluation else r.weights,
        "keep_copy": run_dir is None,  # the training loop re-makes it every step anyway
    }
    if name in SERVER_ENGINES:
        if run_dir is None:
            name = "hf"
        else:
            options.update(
                base_url=r.server_url,
                served_model=r.server_model,
                api_key=api_key(r.api_key_env),
                weight_sync=r.weight_sync,
                weights_dir=Path(r.weights_dir) if r.weights_dir else run_dir / "served_weights",
                verify_weights=r.verify_weights,
                check_tokenizer=r.check_tokenizer,
                concurrency=r.concurrency,
                timeout_s=r.request_timeout_s,
            )
    return make_engine(name, model, tokenizer, **options)


def check_rollout_server(cfg: Config) -> None:
    """A server engine's server answers (/v1/models), checked before a long warm-up; the
    tokenizer and weights are checked when the loop builds the engine."""
    r = cfg.rollout
    if r.engine in SERVER_ENGINES:
        ServerClient(r.server_url, api_key(r.api_key_env), r.request_timeout_s).first_model()


def api_key(var: str) -> str | None:
    """The key in $var ('' names none); naming an unset variable is an error."""
    if not var:
        return None
    key = os.environ.get(var, "")
    if not key:
        raise MathrlError(f"rollout.api_key_env = {var!r}: the variable is not set or empty")
    return key


def sample_scored(
    engine: Any,
    pool: RewardPool,
    task: Task,
    examples: list[Example],
    prompts: list[list[int]],
    sampling: SamplingParams,
    seeds: list[int] | None = None,
) -> list[list[dict[str, Any]]]:
    """Generate `sampling.n` completions per prompt and score them: one list per example.
    seeds: each prompt's seed (default: prompt_seed(sampling.seed, i))."""
    result = engine.generate(prompts, sampling, seeds=seeds)
    scores = score_completions(pool, task, examples, result.completions)
    out: list[list[dict[str, Any]]] = [[] for _ in examples]
    for c, s in zip(result.completions, scores, strict=True):
        out[c.prompt_index].append(
            {
                "completion": c.text,
                "pred": s.pred,
                "correct": bool(s.correct),
                "correct_lenient": bool(s.correct_lenient),
                "format_ok": bool(s.format_ok),
                "reward": float(s.reward),
                "reason": s.reason,
                "n_tokens": len(c.token_ids),
                "finish_reason": c.finish_reason,
                "logprob_sum": float(sum(c.logprobs)),
            }
        )
    return out


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields `advance(n)` (a no-op when disabled)."""
    if not enabled:
        yield lambda n: None
        return
    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tid = bar.add_task(label, total=total)
        yield lambda n: bar.advance(tid, n)


def score_examples(
    engine: RolloutEngine,
    pool: RewardPool,
    task: Task,
    tokenizer: Any,
    examples: list[Example],
    samplings: Sequence[SamplingParams],
    split: bool = True,
    per_call: int = 0,
    label: str = "",
) -> list[list[list[dict[str, Any]]]]:
    """Scored completions of every example under every sampling: out[i][k] holds example
    i's samplings[k].n rows (sample_scored's), in example order.

    Example i is seeded prompt_seed(sampling.seed, i) whatever the chunking or the number
    of ranks. split: under torchrun the ranks sample their share (strided) and all get
    every example's. per_call: at most this many prompts per engine call, taken by length
    (less padding in each prefill); 0 = one call, in order. label: rank 0's progress bar.
    """
    mine = dist.my_indices(len(examples)) if split else list(range(len(examples)))
    if split and dist.current().world > 1 and any(s.seed is None for s in samplings):
        err = MathrlError("sampling split over ranks needs a seed (each example's comes from it)")
        err.shared = True  # type: ignore[attr-defined]  # every rank finds it: rank 0 says it
        raise err
    prompts = {j: prompt_token_ids(tokenizer, task.messages(examples[j])) for j in mine}
    chunks = prompt_chunks([len(prompts[j]) for j in mine], per_call or max(1, len(mine)))
    scored: list[tuple[int, list[list[dict[str, Any]]]]] = []
    with progress_bar(bool(label) and dist.current().is_main, len(mine), label) as advance:
        for chunk in chunks:
            js = [mine[i] for i in chunk]
            exs, ps = [examples[j] for j in js], [prompts[j] for j in js]
            rows = [sample_scored(engine, pool, task, exs, ps, s, _seeds(s, js)) for s in samplings]
            scored += [(j, list(per_sampling)) for j, *per_sampling in zip(js, *rows, strict=True)]
            advance(len(js))
    if split:
        return dist.gather_in_order(scored)
    return [row for _, row in sorted(scored, key=lambda pair: pair[0])]


def _seeds(sampling: SamplingParams, indices: list[int]) -> list[int] | None:
    """Each example's seed from its index (None: the engine draws from torch's RNG)."""
    if sampling.seed is None:
        return None
    return [prompt_seed(sampling.seed, j) for j in indices]


def sample_examples(
    cfg: Config,
    model: Any,
    tokenizer: Any,
    task: Task,
    examples: list[Example],
    sampling: SamplingParams,
    pool: RewardPool,
    split: bool = False,
) -> list[list[dict[str, Any]]]:
    """Scored completions (sampling.n per example) from `model` outside the training loop.
    split: under torchrun the ranks sample their share of the examples (each seeded by its
    index, so the samples are one process's) and all get every example's."""
    engine = rollout_engine(cfg, model, tokenizer)
    scored = score_examples(engine, pool, task, tokenizer, examples, [sampling], split=split)
    return [rows[0] for rows in scored]


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
    """This rank's share of one step's groups; resamples zero-variance groups / too few
    positives when asked (DAPO's dynamic sampling).

    The choice is made on the whole step's groups, the same on every rank and whatever
    the number of ranks: each round's prompts are split over the ranks (a prompt's seed
    comes from its index in the round), every rank gathers the round's scored groups in
    order, and filters and fills the batch as one process would; then each rank takes
    its contiguous share. Without drop_zero_std or min_positive there is one round and
    each rank keeps its own share. Counts in the stats are this rank's (the trainer sums
    them).
    """
    t = cfg.train
    want = t.prompts_per_step
    budget = t.max_total_rollouts or 4 * want * t.group_size
    resample = t.drop_zero_std or t.min_positive > 0
    groups: list[Group] = []
    sampled, mine_sampled, rounds, dropped, positives = 0, 0, 0, 0, 0
    timing = {"rollout_s": 0.0, "reward_s": 0.0, "compile_s": 0.0}
    while True:
        examples = stream.take(want if rounds == 0 else max(1, want - len(groups)))
        first, my_examples = dist.share_uneven(examples)
        new, seconds = _sample_round(
            cfg, engine, pool, task, prompt_cache, tokenizer, my_examples, first, step, rounds
        )
        timing["rollout_s"] += seconds[0]
        timing["reward_s"] += seconds[1]
        timing["compile_s"] += seconds[2]  # rollout.compile
        mine_sampled += len(my_examples) * t.group_size
        rounds += 1
        if not resample:  # one round, nothing to choose: each rank keeps what it sampled
            groups = new
            break
        if dist.current().world > 1:
            new = dist.gather_in_order([(first + i, g) for i, g in enumerate(new)])
        sampled += len(examples) * t.group_size
        if t.drop_zero_std:
            kept = [g for g in new if len(set(g.rewards)) > 1]
            dropped += len(new) - len(kept)
            new = kept
        groups += new
        if len(groups) > want:  # resampled for min_positive: groups with a positive go first
            groups = sorted(groups, key=lambda g: not any(r > 0 for r in g.rewards))[:want]
        positives = sum(r > 0 for g in groups for r in g.rewards)
        if (len(groups) >= want and positives >= t.min_positive) or sampled >= budget:
            break
    stats = {
        "rollout/rounds": rounds,
        "rollout/sampled": mine_sampled,
        "rollout/dropped_groups": dropped if dist.current().is_main else 0,
        "time/rollout_s": timing["rollout_s"],
        "time/reward_s": timing["reward_s"],
    }
    if timing["compile_s"]:
        stats["time/rollout_compile_s"] = timing["compile_s"]
    short = resample and (len(groups) < want or positives < t.min_positive)
    if rounds > 1 or short:
        # the budget ran out before the batch was what drop_zero_std / min_positive ask for
        stats["rollout/short_batch"] = float(short)
    return dist.share_uneven(groups)[1] if resample else groups, stats


def _sample_round(
    cfg: Config,
    engine: Any,
    pool: RewardPool,
    task: Task,
    prompt_cache: dict[str, list[int]],
    tokenizer: Any,
    examples: list[Example],
    first: int,
    step: int,
    round_no: int,
) -> tuple[list[Group], tuple[float, float, float]]:
    """Groups of `examples` (global indices first, first + 1, ... in the round, which
    seed them) and the (rollout, reward, rollout compile) seconds."""
    prompts = []
    for ex in examples:
        if ex.id not in prompt_cache:
            prompt_cache[ex.id] = prompt_token_ids(tokenizer, task.messages(ex))
        prompts.append(prompt_cache[ex.id])
    if not prompts:
        return [], (0.0, 0.0, 0.0)
    sampling = rollout_sampling(cfg, cfg.train.group_size, step_seed(cfg, step, round_no))
    seeds = [prompt_seed(sampling.seed or 0, first + i) for i in range(len(prompts))]
    t0 = time.perf_counter()
    result = engine.generate(prompts, sampling, seeds=seeds)
    t1 = time.perf_counter()
    new = score_groups(pool, task, examples, result.completions, cfg.train.group_size, prompts)
    return new, (t1 - t0, time.perf_counter() - t1, result.timing.get("compile_s", 0.0))


def reward_metrics(groups: list[Group]) -> dict[str, float]:
    """reward/* and rollout/* metrics of a step's scored groups."""
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
    # A reward function's None ("cannot be scored") leaves its key out of that sample: the
    # mean is over the samples it scored, and reward/unscored counts the others.
    keys = dict.fromkeys(k for r in results for k in r.components)
    for key in keys:
        values = [r.components[key] for r in results if key in r.components]
        m[f"reward/{key}"] = sum(values) / len(values)
    unscored = sum("unscored: " in r.reason for r in results)
    if unscored:
        m["reward/unscored"] = unscored
    return m


def rollout_records(
    groups: list[Group], advantages: torch.Tensor, task: Task, step: int, it: int
) -> list[dict[str, Any]]:
    """One rollouts.jsonl row per completion of a step."""
    records, i = [], 0
    label_of = getattr(task, "label_of", None)  # a mixture names each row's own task
    for gi, g in enumerate(groups):
        messages = task.messages(g.example)
        for c, r in zip(g.completions, g.results, strict=True):
            records.append(
                {
                    "iter": it,
                    "step": step,
                    "prompt_id": g.example.id,
                    "task": label_of(g.example) if label_of else task.name,
                    "messages": messages,
                    "completion": c.text,
                    "completion_tokens": len(c.token_ids),
                    "finish_reason": c.finish_reason,
                    "reward": r.reward,
                    "reward_components": r.components,
                    "pred": r.pred,
                    "gold": g.example.gold,
                    "correct": r.correct,
                    "correct_lenient": r.correct_lenient,
                    "reason": r.reason,
                    "group_id": f"{step}:{gi}",
                    "advantage": float(advantages[i]),
                }
            )
            i += 1
    return records
