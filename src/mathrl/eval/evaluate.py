"""Held-out evaluation of a model: sample, score, summarise (definitions in eval.metrics).

`evaluate` takes the rollout engine to decode with; callers that hold a config build it
with `groups.rollout_engine(cfg, ...)`, so rollout.engine and rollout.lean_decode reach
eval too.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathrl import dist
from mathrl.config import Config
from mathrl.errors import ConfigError, DataError
from mathrl.eval.metrics import eval_metrics, select_examples, summarize
from mathrl.groups import rollout_engine, sample_scored
from mathrl.rewards import RewardPool
from mathrl.rollout.chat import prompt_token_ids
from mathrl.rollout.registry import make_engine
from mathrl.rollout.sampler import prompt_chunks, prompt_seed
from mathrl.rollout.types import RolloutEngine, SamplingParams
from mathrl.run_setup import derive_seed
from mathrl.tasks import Example, Task


@dataclass
class EvalResult:
    """Summary metrics and one record per problem (greedy + sampled completions)."""

    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields `advance(n)` (a no-op when disabled)."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from mathrl.loggers import console

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tid = bar.add_task(label, total=total)
        yield lambda n: bar.advance(tid, n)


def evaluate(
    model: Any,
    tokenizer: Any,
    task: Task,
    split: str = "test",
    limit: int = 0,
    n: int = 1,
    ks: Sequence[int] = (1,),
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    seed: int = 0,
    reward_timeout_s: float = 5.0,
    progress: bool = True,
    pool: RewardPool | None = None,
    engine: RolloutEngine | None = None,
) -> EvalResult:
    """Greedy + (n > 1) sampled evaluation of `model` on a seeded sample of `split`."""
    if n < 1 or any(not 1 <= k <= n for k in ks):
        raise ConfigError(f"eval needs n >= 1 and every k in [1, n={n}], got ks={list(ks)}")
    examples = select_examples(task.examples(split), limit, seed)
    if not examples:
        raise DataError(f"The {split} split of {task.name} is empty: nothing to evaluate")
    prompts = [prompt_token_ids(tokenizer, task.messages(ex)) for ex in examples]
    if engine is None:
        engine = make_engine("hf", model, tokenizer, batch_size=batch_size)
    # An explicit seed even for greedy: seed=None would draw from (and so shift) torch's
    # global RNG, and a periodic eval must not change the training run's random stream.
    greedy = SamplingParams(n=1, max_new_tokens=max_new_tokens, greedy=True, seed=seed)
    # Sampled completions: problem j's seed comes from its index, whatever the batching.
    sampled = SamplingParams(
        n=n, max_new_tokens=max_new_tokens, temperature=temperature, seed=derive_seed(seed, 1)
    )
    ranks = dist.current()
    mine = dist.my_indices(len(examples))  # ranks split the problems
    t0 = time.perf_counter()
    records: list[tuple[int, dict[str, Any]]] = []
    with contextlib.ExitStack() as stack:
        if pool is None:
            pool = stack.enter_context(RewardPool(timeout_s=reward_timeout_s, workers=1))
        shown = progress and ranks.is_main
        advance = stack.enter_context(progress_bar(shown, len(mine), f"eval {split}"))
        # engine calls of similar prompt lengths (less padding); records keep problem order
        for idx in prompt_chunks([len(prompts[j]) for j in mine], max(1, batch_size // n)):
            js = [mine[i] for i in idx]
            exs, ps = [examples[j] for j in js], [prompts[j] for j in js]
            g = sample_scored(engine, pool, task, exs, ps, greedy)
            s: list[list[dict[str, Any]]] = [[] for _ in exs]
            if n > 1:
                seeds = [prompt_seed(sampled.seed or 0, j) for j in js]
                s = sample_scored(engine, pool, task, exs, ps, sampled, seeds)
            records += [
                (j, _record(ex, gi[0], si)) for j, ex, gi, si in zip(js, exs, g, s, strict=True)
            ]
            advance(len(exs))
    records_all = dist.gather_in_order(records)
    elapsed = time.perf_counter() - t0
    summary: dict[str, Any] = {"split": split, **summarize(records_all, ks)}
    summary.update(n=n, ks=sorted(set(ks)), temperature=temperature, seed=seed)
    summary.update(time_s=elapsed, problems_per_s=len(records_all) / max(elapsed, 1e-9))
    return EvalResult(summary, records_all)


def _record(ex: Example, greedy: dict[str, Any], samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One problem's record: gold, the greedy completion and the sampled ones."""
    rate = sum(s["correct"] for s in samples) / len(samples) if samples else None
    return {
        "prompt_id": ex.id,
        "question": ex.question,
        "gold": ex.gold,
        "greedy": greedy,
        "samples": samples,
        "pass_rate": rate,
    }


def eval_kwargs(cfg: Config) -> dict[str, Any]:
    """evaluate() keyword arguments from a Config (eval.*, rollout.*, seed, train timeout)."""
    return {
        "limit": cfg.eval.limit,
        "n": cfg.eval.n,
        "ks": tuple(cfg.eval.k),
        "temperature": cfg.eval.temperature,
        "max_new_tokens": cfg.rollout.max_new_tokens,
        "batch_size": cfg.eval.batch_size or max(cfg.rollout.batch_size, 64),
        "seed": cfg.seed,
        "reward_timeout_s": cfg.train.reward_timeout_s,
    }


def write_eval(result: EvalResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write eval_examples.jsonl and eval_summary.json (each atomically) into out_dir."""
    from mathrl.io import atomic_write_text, write_jsonl

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples, summary = out / "eval_examples.jsonl", out / "eval_summary.json"
    write_jsonl(examples, result.records)
    atomic_write_text(summary, json.dumps(result.summary, indent=2, allow_nan=False) + "\n")
    return examples, summary


def heldout_metrics(
    cfg: Config, model: Any, tokenizer: Any, task: Task, split: str, pool: RewardPool
) -> dict[str, float]:
    """Held-out metrics under eval/ (seeded, so it never moves the training RNG streams)."""
    was_training = model.training
    model.eval()
    kwargs = eval_kwargs(cfg)
    engine = rollout_engine(cfg, model, tokenizer, batch_size=kwargs["batch_size"], evaluation=True)
    result = evaluate(
        model, tokenizer, task, split=split, progress=False, pool=pool, engine=engine, **kwargs
    )
    model.train(was_training)
    return eval_metrics(result.summary)
