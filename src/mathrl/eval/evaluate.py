"""Held-out evaluation of a model: sample, score, summarise (definitions in eval.metrics).

The engine that decodes is built from the config (`groups.rollout_engine`, so backend,
rollout.engine and rollout.lean_decode reach eval too) unless the caller passes its own.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mathrl.config import Config
from mathrl.errors import ConfigError, DataError
from mathrl.eval.metrics import eval_metrics, select_examples, summarize
from mathrl.groups import rollout_engine, score_examples
from mathrl.io import atomic_write_text, write_jsonl
from mathrl.rewards import RewardPool
from mathrl.rollout.types import RolloutEngine, SamplingParams
from mathrl.run_setup import derive_seed
from mathrl.tasks import Example, Task


@dataclass
class EvalResult:
    """Summary metrics and one record per problem (greedy + sampled completions)."""

    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)


def eval_engine(
    engine: RolloutEngine | None, cfg: Config | None, model: Any, tokenizer: Any, batch_size: int
) -> RolloutEngine:
    """`engine`, else the one `cfg` names on `model` (decoding the model's own weights)."""
    if engine is not None:
        return engine
    if cfg is None:
        raise ConfigError("evaluation needs an engine or the config to build one from")
    return rollout_engine(cfg, model, tokenizer, batch_size=batch_size, evaluation=True)


def chosen_examples(task: Task, split: str, limit: int, seed: int, verb: str) -> list[Example]:
    """The seeded sample of `limit` examples of `split` (0: all); an empty split is an error."""
    examples = select_examples(task.examples(split), limit, seed)
    if not examples:
        raise DataError(f"The {split} split of {task.name} is empty: nothing to {verb}")
    return examples


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
    cfg: Config | None = None,
) -> EvalResult:
    """Greedy + (n > 1) sampled evaluation of `model` on a seeded sample of `split`; the
    engine is `engine`, else built from `cfg`. Under torchrun the ranks split the problems."""
    if n < 1 or any(not 1 <= k <= n for k in ks):
        raise ConfigError(f"eval needs n >= 1 and every k in [1, n={n}], got ks={list(ks)}")
    examples = chosen_examples(task, split, limit, seed, "evaluate")
    engine = eval_engine(engine, cfg, model, tokenizer, batch_size)
    # An explicit seed even for greedy: seed=None would draw from (and so shift) torch's
    # global RNG, and a periodic eval must not change the training run's random stream.
    samplings = [SamplingParams(n=1, max_new_tokens=max_new_tokens, greedy=True, seed=seed)]
    if n > 1:  # sampled completions too
        samplings.append(
            SamplingParams(
                n=n,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                seed=derive_seed(seed, 1),
            )
        )
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if pool is None:
            pool = stack.enter_context(RewardPool(timeout_s=reward_timeout_s, workers=1))
        scored = score_examples(
            engine,
            pool,
            task,
            tokenizer,
            examples,
            samplings,
            per_call=max(1, batch_size // n),
            label=f"eval {split}" if progress else "",
        )
    records = [
        _record(ex, rows[0][0], rows[1] if n > 1 else [])
        for ex, rows in zip(examples, scored, strict=True)
    ]
    elapsed = time.perf_counter() - t0
    summary: dict[str, Any] = {"split": split, **summarize(records, ks)}
    summary.update(n=n, ks=sorted(set(ks)), temperature=temperature, seed=seed)
    summary.update(time_s=elapsed, problems_per_s=len(records) / max(elapsed, 1e-9))
    return EvalResult(summary, records)


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
    result = evaluate(
        model, tokenizer, task, split=split, progress=False, pool=pool, cfg=cfg, **kwargs
    )
    model.train(was_training)
    return eval_metrics(result.summary)
