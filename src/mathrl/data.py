"""Which prompts a run sees: the task from the config, splits, pass-rate filtering, and the
resumable prompt stream of the RL loop."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mathrl.config import Config, load_config
from mathrl.curriculum import WeightedStream
from mathrl.errors import ConfigError, DataError, MathrlError
from mathrl.io import atomic_write_text, read_jsonl, write_jsonl
from mathrl.loggers import console
from mathrl.rewards import RewardFn, RewardResult
from mathrl.rewards.functions import preflight, score_with_functions, with_overlong
from mathrl.rollout.types import Completion
from mathrl.run_setup import derive_seed
from mathrl.tasks import Example, Task
from mathrl.tasks.arithmetic import ArithmeticTask
from mathrl.tasks.countdown import CountdownTask
from mathrl.tasks.gsm8k import GSM8KTask, prepared_dir
from mathrl.tasks.mixture import Component, MixtureTask
from mathrl.tasks.qa import QATask


def make_task(cfg: Config) -> Task:
    """Build the configured task (the only place that maps task.name to a class); with
    task.rewards, its reward becomes their weighted sum, checked on a trial batch first;
    with task.mixture, a MixtureTask of each entry's task."""
    if cfg.task.mixture:
        return MixtureTask(
            [Component(m.name, m.weight, make_task(c)) for m, c in mixture_configs(cfg)]
        )
    task = _base_task(cfg)
    if not cfg.task.rewards:
        return task
    overlong = (cfg.rollout.max_new_tokens, cfg.task.overlong_buffer)
    rewarded = WithRewardFns(task, cfg.task.rewards, overlong)
    t = cfg.train
    rewarded.check(t.reward_timeout_s, t.reward_memory_mb, t.reward_cpu_s)
    return rewarded


def mixture_configs(cfg: Config) -> list[tuple[Any, Config]]:
    """(entry, its config) for each task.mixture entry: this config with the entry's `set`
    overrides, and task.name = its name when they do not set one."""
    out = []
    for m in cfg.task.mixture:
        names_task = any(item.partition("=")[0].strip() == "task.name" for item in m.set)
        overrides = ["task.mixture=[]", *([] if names_task else [f"task.name={m.name}"]), *m.set]
        try:
            sub = load_config(base=cfg, overrides=overrides, env=False)
        except ConfigError as e:
            raise ConfigError(f"task.mixture '{m.name}': {e}") from None
        out.append((m, sub))
    return out


def _base_task(cfg: Config) -> Task:
    d = cfg.data
    if cfg.task.name == "gsm8k":
        return GSM8KTask(
            d.path,
            prompt_style=cfg.task.prompt_style,
            reward_scheme=cfg.task.reward_scheme,
            val_size=d.val_size,
            split_seed=d.split_seed,
            revision=d.hub_revision,
            system_prompt=cfg.task.system_prompt,
            use_math_verify=cfg.task.use_math_verify,
        )
    if cfg.task.name == "arithmetic":
        return ArithmeticTask(
            d.arithmetic_kind,
            d.arithmetic_digits,
            prompt_style=cfg.task.prompt_style,
            reward_scheme=cfg.task.reward_scheme,
            train_size=d.arithmetic_train_size,
            test_size=d.arithmetic_test_size,
            seed=d.split_seed,
            system_prompt=cfg.task.system_prompt,
        )
    if cfg.task.name == "qa":
        return QATask(
            d.path,
            question_field=d.question_field,
            answer_field=d.answer_field,
            solution_field=d.solution_field,
            id_field=d.id_field,
            grader=cfg.task.grader,
            prompt_style=cfg.task.prompt_style,
            reward_scheme=cfg.task.reward_scheme,
            val_size=d.val_size,
            split_seed=d.split_seed,
            system_prompt=cfg.task.system_prompt,
            dedupe=d.dedupe,
        )

    source = d.path if d.path.endswith((".jsonl", ".parquet")) else None
    return CountdownTask(
        source,
        prompt_style=cfg.task.prompt_style,
        reward_scheme=cfg.task.reward_scheme,
        sizes=d.countdown_numbers,
        max_number=d.countdown_max_number,
        max_target=d.countdown_max_target,
        train_size=d.countdown_train_size,
        test_size=d.countdown_test_size,
        seed=d.split_seed,
        system_prompt=cfg.task.system_prompt,
    )


def reward_columns(ex: Example) -> dict[str, Any]:
    """The columns reward functions receive: a qa row's own, else question, answer and the
    task's fields (Countdown: nums, target)."""
    if "columns" in ex.meta:
        return dict(ex.meta["columns"])
    base = {"question": ex.question, "answer": ex.gold, "solution": ex.solution}
    return {**base, **ex.meta}


class WithRewardFns:
    """A task whose reward is the weighted task.rewards terms (mathrl.rewards.functions);
    everything else is the wrapped task's."""

    def __init__(
        self, task: Task, specs: list[RewardFn], overlong: tuple[int, int] = (0, 0)
    ) -> None:
        self.task, self.specs = task, tuple(specs)
        self.overlong = overlong  # (rollout.max_new_tokens, task.overlong_buffer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def reward_call(self, ex: Example) -> tuple[Any, tuple[Any, ...]]:
        fn, args = self.task.reward_call(ex)
        prompt = self.task.messages(ex)
        return score_with_functions, (fn, args, self.specs, prompt, reward_columns(ex))

    def add_length_terms(
        self,
        results: list[RewardResult],
        completions: list[Completion],
        examples: list[Example] | None = None,
    ) -> list[RewardResult]:
        """The pool's results with the terms that need each completion's token count
        (`overlong`) added (`examples`, each completion's, are for a mixture's dispatch)."""
        if not any(spec.fn == "overlong" for spec in self.specs):
            return results
        max_tokens, buffer = self.overlong
        return [
            with_overlong(r, len(c.token_ids), self.specs, max_tokens, buffer)
            for r, c in zip(results, completions, strict=True)
        ]

    def check(self, timeout_s: float, memory_mb: int, cpu_s: int) -> None:
        """Each function imports, takes our arguments, and returns one value per completion
        on a trial batch (a correct response and an empty one to the first train example),
        in a reward worker under the run's limits."""
        examples = self.task.examples("train") or self.task.examples("test")
        if not examples:
            raise DataError("The dataset has no examples to check task.rewards on")
        ex = examples[0]
        preflight(
            self.specs,
            [self.task.response(ex), ""],
            [self.task.messages(ex)] * 2,
            [reward_columns(ex)] * 2,
            timeout_s=2 * timeout_s,
            memory_mb=memory_mb,
            cpu_s=cpu_s,
        )


def prepare_dataset(cfg: Config, out: Path | None) -> tuple[Path, dict[str, int], str]:
    """Write the configured task's data as files that data.path reads back as the same task.

    GSM8K and qa: the whole train split and test (val is split off train on load); GSM8K by
    default into mathrl's cache, where data.path = 'auto' finds it. Countdown: the
    generated train/val/test splits into `out`. Returns (dir, rows per split, task fingerprint).
    """

    task = _base_task(cfg)
    if out is None and cfg.task.name != "gsm8k":
        raise ConfigError(f"data prepare {cfg.task.name} needs --out (only GSM8K has a cache)")
    out = out or prepared_dir()
    export = getattr(task, "export", None)
    if export is not None:
        files = export()
    else:
        files = {split: task.rows(split) for split in ("train", "val", "test")}
    counts = {split: len(task.examples(split)) for split in ("train", "val", "test")}
    manifest = {"task": cfg.task.name, "fingerprint": task.fingerprint, "counts": counts}
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").unlink(missing_ok=True)
    atomic_write_text(out / "fingerprint.json", json.dumps(manifest, indent=2) + "\n")
    # train.jsonl last: its presence marks a prepared copy as complete (a kill before it
    # leaves a dir that data.path = 'auto' ignores).
    for split in sorted(files, key=lambda name: name == "train"):
        path = out / f"{split}.jsonl"
        if files[split]:
            write_jsonl(path, files[split])
        else:
            path.unlink(missing_ok=True)
    return out, counts, task.fingerprint


def heldout_split(cfg: Config, task: Task) -> str:
    """eval.split, with auto = val when the task has one, else test (never training prompts)."""
    if cfg.eval.split != "auto":
        return cfg.eval.split
    return "val" if task.examples("val") else "test"


def training_examples(cfg: Config, task: Task) -> list[Example]:
    """The train split, filtered by probed pass rate when data.keep_pass_rate is set."""
    examples = task.examples("train")
    if cfg.data.keep_pass_rate is None or cfg.data.pass_rates is None:
        return examples
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


def load_pass_rates(path: str | Path) -> dict[str, float]:
    """prompt_id -> pass rate from pass_rates.jsonl; duplicate ids are pooled, weighted by n."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"Pass-rate file not found: {p}")
    hits: dict[str, float] = {}
    totals: dict[str, int] = {}
    for i, row in enumerate(read_jsonl(p), 1):
        pid, rate, n = row.get("prompt_id"), row.get("pass_rate"), row.get("n", 1)
        ok_rate = isinstance(rate, int | float) and not isinstance(rate, bool) and 0 <= rate <= 1
        if not isinstance(pid, str) or not ok_rate or not isinstance(n, int) or n < 1:
            raise DataError(
                f"{p}: row {i} needs a string 'prompt_id', 'pass_rate' in [0, 1] and int 'n' >= 1"
            )
        hits[pid] = hits.get(pid, 0.0) + rate * n
        totals[pid] = totals.get(pid, 0) + n
    if not hits:
        raise DataError(f"Pass-rate file is empty: {p}")
    return {pid: hits[pid] / totals[pid] for pid in hits}


def filter_by_pass_rate(
    examples: list[Example],
    rates: dict[str, float],
    lo: float,
    hi: float,
    counts: dict[str, int] | None = None,
) -> list[Example]:
    """Examples whose probed pass rate is in [lo, hi].

    Examples missing from `rates` are DROPPED (we cannot vouch for their signal) and
    counted: `counts`, if given, receives kept / out_of_range / missing. Keeping nothing
    is a DataError naming those counts (usually a pass-rate file from another task).
    """
    if not 0 <= lo <= hi <= 1:
        raise ConfigError(f"pass-rate band must satisfy 0 <= lo <= hi <= 1, got [{lo}, {hi}]")
    kept = [ex for ex in examples if ex.id in rates and lo <= rates[ex.id] <= hi]
    missing = sum(ex.id not in rates for ex in examples)
    tally = {"kept": len(kept), "out_of_range": len(examples) - len(kept) - missing}
    tally["missing"] = missing
    if counts is not None:
        counts.update(tally)
    if not kept:
        raise DataError(
            f"No example has a probed pass rate in [{lo}, {hi}]: "
            f"{tally['out_of_range']} out of range, {missing} missing from the pass-rate file"
        )
    return kept


def prompt_stream(cfg: Config, task: Task, examples: list[Example], state: Any) -> Any:
    """The RL loop's prompt stream under data.curriculum: shuffled epochs (PromptStream) or
    the learnability curriculum (mathrl.curriculum); `state` is the TrainState it advances."""
    learnability = cfg.data.curriculum == "learnability"
    if not learnability and not isinstance(task, MixtureTask):
        return PromptStream(examples, cfg.seed, state)
    return WeightedStream(
        examples,
        cfg.seed,
        state,
        cfg.data.curriculum_floor,
        learnability=learnability,
        task_of=getattr(task, "label_of", None),
        task_weight=getattr(task, "weight_of", None),
    )


class Cursor(Protocol):
    """Where a prompt stream stands (the trainer's TrainState carries these two fields)."""

    epoch: int
    cursor: int


class PromptStream:
    """Deterministic epoch-wise shuffled prompt order with a resumable cursor.

    The position lives in `state` (epoch, cursor), which the trainer checkpoints, so a
    resumed stream continues with exactly the prompts an uninterrupted one would take.
    """

    def __init__(self, examples: list[Example], seed: int, state: Cursor) -> None:
        if not examples:
            raise MathrlError("The training split is empty")
        self.examples, self.seed, self.state = examples, seed, state

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(derive_seed(self.seed, epoch)).shuffle(order)
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

    def observe(self, groups: list[Any]) -> dict[str, float]:
        """Shuffled epochs take no notice of results (mathrl.curriculum's streams do)."""
        return {}

    @classmethod
    def at_position(cls, examples: list[Example], seed: int, position: int) -> PromptStream:
        """A stream that has already handed out `position` prompts."""
        epoch, cursor = divmod(position, max(1, len(examples)))
        return cls(examples, seed, StreamPosition(epoch, cursor))


@dataclass
class StreamPosition:
    """A Cursor of its own, for streams whose position is not checkpointed."""

    epoch: int = 0
    cursor: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
