"""Whether to warm up with SFT before RL, the warm-up itself, and its data file (what it saw).

The decision (`warmup.steps` forces a warm-up; `warmup.min_positive` probes first) is
made once per run and saved to `RUN/warmup_sft/decision.json`, so a resumed run never
re-probes or changes its mind. The probe samples exactly the first RL round (the same
prompts, group size and per-step seed as step 1) from the starting model and measures the
fraction of correct samples, strict and lenient: below `warmup.min_positive`, RL would
mostly see all-wrong groups that carry no signal, so the run warms up with
`warmup.auto_steps` SFT steps. When only the format is missing (strict below the bar,
lenient at or above it), an SFT warm-up on another style of solutions could cost the skill
the model has: the run skips it when the reward credits the format (RL then teaches it),
and shortens it to a quarter otherwise. After a probed warm-up the same round is sampled
from the warmed-up model, so decision.json (and the summary) hold strict and lenient
accuracy before and after.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mathrl import checkpoint as ckpt_mod
from mathrl import dist, fsdp
from mathrl.config import Config
from mathrl.data import StreamPosition, prompt_stream, training_examples
from mathrl.errors import DataError
from mathrl.groups import reward_pool, rollout_sampling, sample_examples, step_seed
from mathrl.io import atomic_write_text, write_jsonl
from mathrl.loggers import make_logger, say
from mathrl.policy import load_policy
from mathrl.run_setup import resume_point
from mathrl.sft import task_pair_sampler, train_sft
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
    first_round_lenient: float | None = None
    after_correct: float | None = None
    """The same round's strict accuracy from the warmed-up model (None: no warm-up)."""
    after_lenient: float | None = None


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


def decide(
    cfg: Config, first_round_correct: float | None, first_round_lenient: float | None = None
) -> Decision:
    """The warm-up decision from the config and (when probing) the first round's strict and
    lenient accuracy."""
    w = cfg.warmup
    rates = (first_round_correct, first_round_lenient)
    if w.steps > 0:
        return Decision(True, w.steps, f"warmup.steps = {w.steps}", *rates)
    if w.min_positive <= 0 or first_round_correct is None:
        return Decision(False, 0, "no warm-up configured", *rates)
    rate = f"{first_round_correct:.3f} of first-round samples correct"
    if first_round_correct >= w.min_positive:
        return Decision(
            False, 0, f"{rate} >= warmup.min_positive = {w.min_positive}: no warm-up", *rates
        )
    if first_round_lenient is not None and first_round_lenient >= w.min_positive:
        format_only = (
            f"{rate} < warmup.min_positive = {w.min_positive} but {first_round_lenient:.3f} "
            "leniently: only the format is missing"
        )
        if cfg.task.reward_scheme != "binary" or cfg.task.rewards:
            return Decision(
                False, 0, f"{format_only}; RL's format reward teaches it, no warm-up", *rates
            )
        short = max(1, w.auto_steps // 4)
        return Decision(
            True,
            short,
            f"{format_only}; the reward gives no format credit, so a short warm-up ({short} steps)",
            *rates,
        )
    return Decision(
        True,
        w.auto_steps,
        f"{rate} < warmup.min_positive = {w.min_positive}: SFT warm-up first",
        *rates,
    )


def first_round_correct(cfg: Config, task: Task, model: Any, tokenizer: Any) -> tuple[float, float]:
    """Fractions of correct samples, strict and lenient, in RL step 1's round (same prompts
    and seed), from `model`."""
    t = cfg.train
    stream = prompt_stream(cfg, task, training_examples(cfg, task), StreamPosition())
    examples = stream.take(t.prompts_per_step)  # exactly step 1's prompts
    sampling = rollout_sampling(cfg, t.group_size, step_seed(cfg, 0))  # and step 1's seed
    with reward_pool(t) as pool:
        scored = sample_examples(cfg, model, tokenizer, task, examples, sampling, pool)
    flat = [s for group in scored for s in group]
    n = max(1, len(flat))
    return sum(s["correct"] for s in flat) / n, sum(s["correct_lenient"] for s in flat) / n


def write_warmup_data(task: Task, path: Path, limit: int = 0) -> int:
    """One JSONL row per train prompt: its messages and the distinct solutions among
    MAX_SOLUTIONS draws of the same sampler SFT uses (all of them for most prompts)."""
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


def maybe_warmup(
    cfg: Config, task: Task, run_dir: Path, resume: bool, allow_change: bool
) -> Path | None:
    """Decide once per run whether to warm up with SFT, then do it.

    Returns the warmed-up model dir, or None to start RL from the configured model.
    """
    wdir = run_dir / "warmup_sft"
    # Read on rank 0 and handed to all: a rank reading the file itself could find the one
    # rank 0 writes below, skip that write's collective, and pair every later one wrongly.
    decision = dist.on_main(lambda: read_decision(wdir)) if resume else None
    if decision is None:
        rates: tuple[float | None, float | None] = (None, None)
        if cfg.warmup.steps == 0 and cfg.warmup.min_positive > 0:
            say("warm-up probe: sampling RL's first round from the starting model")
            rates = round_accuracy(cfg, task, run_dir, None)
        decision = decide(cfg, *rates)
        if decision.warmup or rates[0] is not None:
            dist.on_main(lambda: write_decision(wdir, decision))
    if decision.warmup or decision.first_round_correct is not None:
        say(f"warm-up decision: {decision.reason}")
    if not decision.warmup:
        return None
    warmed = run_warmup(cfg, task, run_dir, resume, allow_change, decision.steps)
    if decision.first_round_correct is not None and decision.after_correct is None:
        say("warm-up check: sampling the same round from the warmed-up model")
        decision.after_correct, decision.after_lenient = round_accuracy(cfg, task, run_dir, warmed)
        dist.on_main(lambda: write_decision(wdir, decision))
        say(
            f"warm-up: first-round accuracy {decision.first_round_correct:.3f} -> "
            f"{decision.after_correct:.3f} strict, {decision.first_round_lenient:.3f} -> "
            f"{decision.after_lenient:.3f} lenient"
        )
    return warmed


def round_accuracy(
    cfg: Config, task: Task, run_dir: Path, model_dir: Path | None
) -> tuple[float, float]:
    """(strict, lenient) accuracy of RL's first round from the starting model, or from
    `model_dir`; rank 0 samples and every rank takes the result: one decision per job."""
    model, tokenizer = load_policy(cfg, task, run_dir, model_dir)
    with fsdp.full_weights(model):
        return dist.on_main(lambda: first_round_correct(cfg, task, model, tokenizer))


def run_warmup(
    cfg: Config, task: Task, run_dir: Path, resume: bool, allow_change: bool, steps: int
) -> Path:
    """SFT warm-up on the task's own solutions into run_dir/warmup_sft; returns its model dir."""
    wdir = run_dir / "warmup_sft"

    def prepare() -> None:
        wdir.mkdir(exist_ok=True)
        ckpt_mod.clean_orphans(wdir)
        if not (wdir / "data.jsonl").is_file():
            n = write_warmup_data(task, wdir / "data.jsonl")
            say(f"warm-up data: {n} prompts with their solutions -> {wdir / 'data.jsonl'}")

    dist.on_main(prepare)
    prev = (
        resume_point(wdir, cfg, task.fingerprint, allow_change)
        if resume and ckpt_mod.list_checkpoints(wdir)
        else None
    )
    if prev is not None and ckpt_mod.read_manifest(prev)["step"] >= steps:
        return prev / "model"
    model, tokenizer = load_policy(cfg, task, run_dir, prev / "model" if prev else None)
    say(f"SFT warm-up: {steps} steps on the task's own solutions")
    with make_logger(cfg, wdir, steps) as logger:
        train_sft(
            cfg,
            model,
            tokenizer,
            task_pair_sampler(task),
            wdir,
            logger,
            task.fingerprint,
            steps=steps,
            resume_from=prev,
        )
    latest = ckpt_mod.latest_checkpoint(wdir)
    assert latest is not None
    return latest / "model"


def warmup_summary(run_dir: Path) -> dict[str, Any] | None:
    """The run's warm-up decision as a dict for summary.json (None: no decision was made)."""
    decision = read_decision(run_dir / "warmup_sft")
    return asdict(decision) if decision else None
