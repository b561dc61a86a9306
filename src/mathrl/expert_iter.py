"""Expert iteration: sample -> keep correct completions -> SFT on them -> eval, in rounds.

Round r (1-based) samples `expert_iter.samples` completions for each of
`expert_iter.prompts` training prompts (a seeded draw per round) from the current model,
keeps the correct ones (deduplicated, at most `max_per_prompt` per prompt), writes them to
RUN/expert_iter/round_XXX/data.jsonl, fine-tunes on them for `expert_iter.sft_steps`
steps (the [sft] learning rate, batch size and length) and commits the result as
RUN/checkpoints/step_XXXXXXXX with step = r, the same format as RL checkpoints.

Resuming: finished rounds are skipped (the newest valid checkpoint says how many); an
interrupted round reuses its data file and continues its SFT from the round's own
checkpoints, so no sampling is redone.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mathrl import checkpoint as ckpt_mod
from mathrl import dist, fsdp
from mathrl.backends import backend_for
from mathrl.config import Config
from mathrl.data import heldout_split, training_examples
from mathrl.errors import MathrlError
from mathrl.eval.evaluate import heldout_metrics
from mathrl.groups import reward_pool, rollout_sampling, sample_examples
from mathrl.io import atomic_write_text, read_jsonl, write_jsonl
from mathrl.run_setup import derive_seed
from mathrl.sft import file_pair_sampler, train_sft
from mathrl.tasks import Example, Task


def select_correct(
    examples: list[Example], scored: list[list[dict[str, Any]]], max_per_prompt: int
) -> list[dict[str, Any]]:
    """Correct completions per prompt, first occurrence of each text, at most max_per_prompt."""
    rows = []
    for ex, samples in zip(examples, scored, strict=True):
        seen: set[str] = set()
        for s in samples:
            text = s["completion"]
            if s["correct"] and text not in seen and len(seen) < max_per_prompt:
                seen.add(text)
                rows.append({"prompt_id": ex.id, "response": text})
    return rows


def round_seed(seed: int, round_no: int) -> int:
    """The seed of one round's prompt draw and sampling."""
    return derive_seed(seed, 7919 * round_no)  # 7919 keeps rounds off the epoch-shuffle seeds


def round_prompts(examples: list[Example], n: int, seed: int, round_no: int) -> list[Example]:
    """A seeded draw of n distinct prompts for one round (all of them if n >= len)."""
    return random.Random(round_seed(seed, round_no)).sample(examples, min(n, len(examples)))


def run_expert_iter(
    cfg: Config,
    task: Task,
    run_dir: Path,
    load: Callable[[Path | None], tuple[Any, Any]],
    logger: Any,
    round_logger: Callable[[Path, int], Any],
    say: Callable[[str], None],
) -> int:
    """Run the remaining rounds; returns the number of finished rounds."""

    ei = cfg.expert_iter
    backend = backend_for(cfg)
    latest = ckpt_mod.latest_checkpoint(run_dir)
    done = ckpt_mod.read_manifest(latest)["step"] if latest else 0
    if dist.current().is_main:
        ckpt_mod.truncate_logs(run_dir, done)
    train_examples = training_examples(cfg, task)
    by_id = {ex.id: ex for ex in train_examples}
    eval_split = heldout_split(cfg, task)

    def heldout(model: Any, tokenizer: Any) -> dict[str, float]:
        with fsdp.full_weights(model):  # the ranks split the problems
            return heldout_metrics(cfg, model, tokenizer, task, eval_split, pool)

    with reward_pool(cfg.train) as pool:
        model, tokenizer = load(latest / "model" if latest else None)
        if done == 0 and cfg.eval.every:
            logger.log(heldout(model, tokenizer), 0)
        for round_no in range(done + 1, ei.rounds + 1):
            rdir = run_dir / "expert_iter" / f"round_{round_no:03d}"
            data_path = rdir / "data.jsonl"
            metrics: dict[str, float]
            if not data_path.is_file():
                examples = round_prompts(train_examples, ei.prompts, cfg.seed, round_no)
                say(f"round {round_no}: sampling {len(examples)} prompts x {ei.samples}")
                metrics = sample_round(cfg, task, model, tokenizer, examples, pool, rdir, round_no)
            else:
                metrics = json.loads((rdir / "sampling.json").read_text())
            kept = read_jsonl(data_path)
            pairs = [(task.messages(by_id[r["prompt_id"]]), r["response"]) for r in kept]
            prev = ckpt_mod.latest_checkpoint(rdir)
            if prev is not None:
                model, tokenizer = load(prev / "model")
            say(f"round {round_no}: SFT {ei.sft_steps} steps on {len(pairs)} correct completions")
            with round_logger(rdir, ei.sft_steps) as sft_logger:
                train_sft(
                    cfg,
                    model,
                    tokenizer,
                    file_pair_sampler(pairs),
                    rdir,
                    sft_logger,
                    task.fingerprint,
                    steps=ei.sft_steps,
                    resume_from=prev,
                )
            if cfg.eval.every:
                metrics.update(heldout(model, tokenizer))
            logger.log(metrics, round_no)  # step = round; a resume truncates a repeated row
            # every rank calls it; rank 0 writes (under FSDP the ranks gather the shards)
            backend.write_checkpoint(
                cfg, run_dir, round_no, model, tokenizer, {"round": round_no},
                "expert_iter", task.fingerprint,
            )  # fmt: skip
            # the round is committed: its own SFT checkpoints are no longer needed
            dist.on_main(functools.partial(shutil.rmtree, rdir / ckpt_mod.CKPT_DIR, True))
    return ei.rounds


def sample_round(
    cfg: Config,
    task: Task,
    model: Any,
    tokenizer: Any,
    examples: list[Example],
    pool: Any,
    rdir: Path,
    round_no: int,
) -> dict[str, float]:
    """Sample a round, keep the correct completions into rdir/data.jsonl; its ei/* metrics.

    Both files are written whole before SFT starts, so a resumed round reuses them. Under
    torchrun the ranks sample their share of the prompts and rank 0 writes the files.
    """

    ei = cfg.expert_iter
    sampling = rollout_sampling(cfg, ei.samples, round_seed(cfg.seed, round_no))
    with fsdp.full_weights(model):
        scored = sample_examples(cfg, model, tokenizer, task, examples, sampling, pool, split=True)
    kept = select_correct(examples, scored, ei.max_per_prompt)
    flat = [s["correct"] for group in scored for s in group]
    if not kept:
        err = MathrlError(
            f"expert-iter round {round_no}: no correct completion among "
            f"{len(flat)} samples; warm up with SFT first (warmup.steps) or use easier data"
        )
        err.shared = True  # type: ignore[attr-defined]  # every rank finds it: rank 0 says it
        raise err
    metrics = {
        "ei/sample_accuracy": sum(flat) / max(1, len(flat)),
        "ei/prompts_solved": sum(any(s["correct"] for s in g) for g in scored)
        / max(1, len(scored)),
        "ei/kept": len(kept),
    }

    def write() -> None:
        rdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(rdir / "sampling.json", json.dumps(metrics) + "\n")
        write_jsonl(rdir / "data.jsonl", kept)

    dist.on_main(write)
    return metrics
