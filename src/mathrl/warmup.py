"""Whether to warm up with SFT before RL, and the warm-up data written for the record.

The decision (`warmup.steps` forces a warm-up; `warmup.min_positive` probes first) is
made once per run and saved to `RUN/warmup_sft/decision.json`, so a resumed run never
re-probes or changes its mind. The probe samples exactly the first RL round (the same
prompts, group size and per-step seed as step 1) from the starting model and measures the
fraction of correct samples: below `warmup.min_positive`, RL would mostly see all-wrong
groups that carry no signal, so the run warms up with `warmup.auto_steps` SFT steps.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mathrl.config import Config
from mathrl.errors import DataError
from mathrl.io import atomic_write_text
from mathrl.tasks import Task

DECISION = "decision.json"
MAX_SOLUTIONS = 32
"""Most distinct solutions written per prompt into the warm-up data file."""


@dataclass
class Decision:
    warmup: bool
    steps: int
    reason: str
    first_round_correct: float | None = None


def read_decision(wdir: Path) -> Decision | None:
    path = wdir / DECISION
    if not path.is_file():
        return None
    try:
        return Decision(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise DataError(
            f"{path}: not a warm-up decision ({e}); delete it to decide again"
        ) from None


def write_decision(wdir: Path, decision: Decision) -> None:
    wdir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(wdir / DECISION, json.dumps(asdict(decision), indent=2) + "\n")


def decide(cfg: Config, first_round_correct: float | None) -> Decision:
    """The warm-up decision from the config and (when probing) the first round's accuracy."""
    w = cfg.warmup
    if w.steps > 0:
        return Decision(True, w.steps, f"warmup.steps = {w.steps}", first_round_correct)
    if w.min_positive <= 0 or first_round_correct is None:
        return Decision(False, 0, "no warm-up configured", first_round_correct)
    rate = f"{first_round_correct:.3f} of first-round samples correct"
    if first_round_correct < w.min_positive:
        return Decision(
            True,
            w.auto_steps,
            f"{rate} < warmup.min_positive = {w.min_positive}: SFT warm-up first",
            first_round_correct,
        )
    return Decision(
        False,
        0,
        f"{rate} >= warmup.min_positive = {w.min_positive}: no warm-up",
        first_round_correct,
    )


def first_round_correct(cfg: Config, task: Task, model: Any, tokenizer: Any) -> float:
    """Fraction of correct samples in RL step 1's round (same prompts and seed), from `model`."""
    from mathrl.data import PromptStream, StreamPosition, training_examples
    from mathrl.groups import rollout_sampling, sample_examples, step_seed
    from mathrl.rewards.pool import RewardPool

    t = cfg.train
    stream = PromptStream(training_examples(cfg, task), cfg.seed, StreamPosition())
    examples = stream.take(t.prompts_per_step)  # exactly step 1's prompts
    sampling = rollout_sampling(cfg, t.group_size, step_seed(cfg, 0))  # and step 1's seed
    with RewardPool(timeout_s=t.reward_timeout_s, workers=t.reward_workers) as pool:
        scored = sample_examples(cfg, model, tokenizer, task, examples, sampling, pool)
    flat = [s["correct"] for group in scored for s in group]
    return sum(flat) / max(1, len(flat))


def write_warmup_data(task: Task, path: Path, limit: int = 0) -> int:
    """One JSONL row per train prompt: its messages and the distinct solutions among
    MAX_SOLUTIONS draws of the same sampler SFT uses (all of them for most prompts)."""
    import random

    from mathrl.io import write_jsonl

    examples = task.examples("train")
    if limit:
        examples = examples[:limit]
    rows = []
    for ex in examples:
        rng = random.Random(0)
        solutions = sorted({task.response(ex, rng) for _ in range(MAX_SOLUTIONS)})
        rows.append({"prompt_id": ex.id, "messages": task.messages(ex), "responses": solutions})
    write_jsonl(path, rows)
    return len(rows)
