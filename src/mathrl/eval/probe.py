"""Signal probe: is this model + data worth RL training? Sample n per prompt and look.

GRPO-style estimators learn only from groups whose rewards differ, so the probe measures:
- `accuracy`: mean strict correctness over all samples;
- `reward_variance`: the mean over prompts of the population variance (ddof 0) of the
  prompt's n rewards (with binary rewards and pass rate p this is p(1-p));
- `frac_all_wrong` / `frac_all_right`: prompts whose n samples are all wrong / all right;
- `informative_frac`: the expected fraction of training groups of size G with mixed
  correctness, 1 - p^G - (1-p)^G averaged over prompts, p the prompt's binary pass rate
  (correctness, not reward, so format-only rewards do not count as signal);
- `pass_rate_hist`: prompts per pass-rate bin [0, .1), [.1, .2), ..., [.9, 1.0];
- `accuracy_lenient`: the same samples graded leniently (the answer anywhere, any format);
- with `greedy=True`, `greedy_pass` / `greedy_pass_lenient`: one greedy completion each;
- `informative_per_step`: informative_frac x train.prompts_per_step, the groups of a
  training step expected to carry a gradient.

`suite_verdict` turns these into one word per task (too hard, learnable, solved) and the
reason; `mathrl probe --suite NAME` writes one row per task as probe.json / .md / .png.

`pass_rates.jsonl` lets training keep only prompts in a pass-rate band
(`data.keep_pass_rate`); see `mathrl.data.filter_by_pass_rate`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mathrl import dist
from mathrl.config import Config
from mathrl.errors import ConfigError
from mathrl.eval.evaluate import chosen_examples, eval_engine
from mathrl.eval.metrics import token_entropy
from mathrl.groups import score_examples
from mathrl.io import atomic_write_text, write_jsonl
from mathrl.rewards import RewardPool
from mathrl.rollout.types import RolloutEngine, SamplingParams
from mathrl.run_setup import derive_seed
from mathrl.tasks import Task

TRAIN = "train"
TOO_HARD = "too hard: warm up with SFT first"
TOO_EASY = "too easy: pick harder data"
LEARNABLE, FORMAT_ONLY, SOLVED, HARD = "learnable", "learnable (format)", "solved", "too hard"
"""The suite table's verdicts (suite_verdict)."""


@dataclass
class ProbeThresholds:
    """When the probe says "train": accuracy in [min_accuracy, max_accuracy], variance above min."""

    min_accuracy: float = 0.10
    """Below this accuracy most groups are all-wrong: warm up with SFT first."""
    max_accuracy: float = 0.80
    """Above this accuracy most groups are all-right: pick harder data."""
    min_variance: float = 0.05
    """Mean per-prompt reward variance must exceed this for a useful signal."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_accuracy <= self.max_accuracy <= 1 or self.min_variance < 0:
            raise ConfigError(
                "probe thresholds need 0 <= min_accuracy <= max_accuracy <= 1 and "
                f"min_variance >= 0, got {self.min_accuracy}, {self.max_accuracy}, {self.min_variance}"
            )


def _pass_hist(rates: Sequence[float], bins: int) -> list[int]:
    """Counts per bin of width 1/bins; the last bin includes 1.0."""
    counts = [0] * bins
    for p in rates:
        counts[min(bins - 1, math.floor(p * bins + 1e-9))] += 1
    return counts


def probe_stats(
    outcomes: list[list[float]],
    correct: list[list[bool]],
    group_size: int,
    thresholds: ProbeThresholds | None = None,
    bins: int = 10,
) -> dict[str, Any]:
    """Signal statistics of per-prompt rewards and correctness, plus the verdict."""
    if not outcomes or len(outcomes) != len(correct) or any(not o for o in outcomes):
        raise ValueError("probe_stats needs one non-empty reward list per prompt")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    rates = [sum(c) / len(c) for c in correct]
    variances = [sum((r - sum(o) / len(o)) ** 2 for r in o) / len(o) for o in outcomes]
    n_samples = sum(len(c) for c in correct)
    g = group_size
    stats: dict[str, Any] = {
        "n_prompts": len(outcomes),
        "n_samples": n_samples,
        "group_size": g,
        "accuracy": sum(sum(c) for c in correct) / n_samples,
        "mean_reward": sum(sum(o) for o in outcomes) / n_samples,
        "reward_variance": sum(variances) / len(variances),
        "frac_all_wrong": sum(p == 0 for p in rates) / len(rates),
        "frac_all_right": sum(p == 1 for p in rates) / len(rates),
        "informative_frac": sum(1 - p**g - (1 - p) ** g for p in rates) / len(rates),
        "pass_rate_hist": _pass_hist(rates, bins),
    }
    label, reason = verdict(stats, thresholds or ProbeThresholds())
    stats.update(verdict=label, verdict_reason=reason)
    return stats


def verdict(stats: dict[str, Any], thresholds: ProbeThresholds) -> tuple[str, str]:
    """("train" | TOO_HARD | TOO_EASY, a sentence quoting the numbers behind it)."""
    t = thresholds
    acc, var = stats["accuracy"], stats["reward_variance"]
    wrong, right = stats["frac_all_wrong"], stats["frac_all_right"]
    dead = f"{wrong:.0%} of prompts are all-wrong and {right:.0%} all-right"
    if acc < t.min_accuracy:
        return TOO_HARD, f"accuracy {acc:.3f} < {t.min_accuracy:.2f}: {dead}."
    if acc > t.max_accuracy:
        return TOO_EASY, f"accuracy {acc:.3f} > {t.max_accuracy:.2f}: {dead}."
    if var <= t.min_variance:
        side = TOO_HARD if wrong >= right else TOO_EASY
        return side, (
            f"accuracy {acc:.3f} is in range but reward variance {var:.3f} <= "
            f"{t.min_variance:.2f}: {dead}, so few groups carry a learning signal."
        )
    return TRAIN, (
        f"accuracy {acc:.3f} in [{t.min_accuracy:.2f}, {t.max_accuracy:.2f}] and reward "
        f"variance {var:.3f} > {t.min_variance:.2f}: {stats['informative_frac']:.0%} of "
        f"groups of {stats['group_size']} are expected to carry a learning signal."
    )


def suite_verdict(stats: dict[str, Any], thresholds: ProbeThresholds) -> tuple[str, str]:
    """One word for a probed task and the numbers behind it.

    From the sampled accuracy (strict) and the probe's verdict: "train" is learnable,
    "too easy" is solved. When strict answers are too rare but lenient ones are not
    (accuracy_lenient >= min_accuracy), the model can do the task in another format:
    "learnable (format)", trained by RL with a reward that credits the format
    (task.reward_scheme = format) and no SFT warm-up. Otherwise too hard: an SFT
    warm-up on the task's solutions first, or easier data.
    """
    label, reason = stats["verdict"], stats["verdict_reason"]
    if label == TRAIN:
        return LEARNABLE, reason
    if label == TOO_EASY:
        return SOLVED, reason
    lenient = stats.get("accuracy_lenient", 0.0)
    if lenient >= thresholds.min_accuracy and stats["accuracy"] < thresholds.min_accuracy:
        return FORMAT_ONLY, (
            f"strict accuracy {stats['accuracy']:.3f} < {thresholds.min_accuracy:.2f} but "
            f"lenient {lenient:.3f}: the answers are there in another format; train with a "
            "format reward (task.reward_scheme = format), no SFT warm-up needed."
        )
    return HARD, reason


@dataclass
class ProbeResult:
    """Probe statistics and one pass-rate row per prompt."""

    stats: dict[str, Any]
    rates: list[dict[str, Any]] = field(default_factory=list)


def probe(
    model: Any,
    tokenizer: Any,
    task: Task,
    split: str = "train",
    limit: int = 256,
    n: int = 16,
    group_size: int | None = None,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 64,
    seed: int = 0,
    reward_timeout_s: float = 5.0,
    thresholds: ProbeThresholds | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    engine: RolloutEngine | None = None,
    cfg: Config | None = None,
    greedy: bool = False,
    prompts_per_step: int | None = None,
) -> ProbeResult:
    """Sample n completions for each of `limit` seeded prompts, score, and judge the signal;
    the engine is `engine`, else built from `cfg`. greedy: one greedy completion per
    prompt too (greedy_pass); prompts_per_step: for informative_per_step."""
    if n < 2:
        raise ConfigError(f"probe needs n >= 2 samples per prompt, got {n}")
    examples = chosen_examples(task, split, limit, seed, "probe")
    engine = eval_engine(engine, cfg, model, tokenizer, batch_size)
    # A prompt's samples are seeded by its index: the same on any number of ranks, which
    # split the prompts (torchrun) and then all hold every prompt's samples.
    params = [
        SamplingParams(
            n=n, max_new_tokens=max_new_tokens, temperature=temperature, seed=derive_seed(seed, 0)
        )
    ]
    if greedy:
        params.append(SamplingParams(n=1, max_new_tokens=max_new_tokens, greedy=True, seed=seed))
    t0 = time.perf_counter()
    with RewardPool(timeout_s=reward_timeout_s, workers=1) as pool:
        scored = score_examples(
            engine,
            pool,
            task,
            tokenizer,
            examples,
            params,
            per_call=max(1, batch_size // n),
            label=f"probe {split}" if progress else "",
        )
    samples = [rows[0] for rows in scored]
    elapsed = time.perf_counter() - t0
    stats = probe_stats(
        [[s["reward"] for s in row] for row in samples],
        [[s["correct"] for s in row] for row in samples],
        group_size or n,
        thresholds,
    )
    flat = [s for row in samples for s in row]
    stats.update(sample_stats(flat))
    stats["accuracy_lenient"] = sum(s["correct_lenient"] for s in flat) / len(flat)
    if greedy:
        firsts = [rows[1][0] for rows in scored]
        stats["greedy_pass"] = sum(s["correct"] for s in firsts) / len(firsts)
        stats["greedy_pass_lenient"] = sum(s["correct_lenient"] for s in firsts) / len(firsts)
    if prompts_per_step:
        stats["prompts_per_step"] = prompts_per_step
        stats["informative_per_step"] = stats["informative_frac"] * prompts_per_step
    stats.update(split=split, n=n, temperature=temperature, seed=seed, time_s=elapsed)
    stats["thresholds"] = asdict(thresholds or ProbeThresholds())
    rates = [
        {"prompt_id": ex.id, "pass_rate": sum(s["correct"] for s in row) / len(row), "n": len(row)}
        for ex, row in zip(examples, samples, strict=True)
    ]
    result = ProbeResult(stats, rates)
    if out_dir is not None:
        dist.on_main(lambda: write_probe(result, out_dir))  # rank 0 writes
    return result


def sample_stats(flat: list[dict[str, Any]]) -> dict[str, float]:
    """Entropy estimate, mean length and truncated fraction of scored samples."""
    return {
        "entropy": token_entropy([s["logprob_sum"] for s in flat], [s["n_tokens"] for s in flat]),
        "len_mean": sum(s["n_tokens"] for s in flat) / len(flat),
        "truncated_frac": sum(s["finish_reason"] == "length" for s in flat) / len(flat),
    }


def write_probe(result: ProbeResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Write probe_summary.json and pass_rates.jsonl (each atomically) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary, rates = out / "probe_summary.json", out / "pass_rates.jsonl"
    atomic_write_text(summary, json.dumps(result.stats, indent=2, allow_nan=False) + "\n")
    write_jsonl(rates, result.rates)
    return summary, rates


TABLE_COLUMNS = (
    ("greedy_pass", "greedy"),
    ("greedy_pass_lenient", "greedy lenient"),
    ("accuracy", "sampled"),
    ("accuracy_lenient", "sampled lenient"),
    ("informative_frac", "informative groups"),
    ("informative_per_step", "informative / step"),
    ("len_mean", "mean tokens"),
    ("truncated_frac", "truncated"),
)
"""probe.md's columns after the task: (stats key, header)."""


def table_row(task: str, stats: dict[str, Any], thresholds: ProbeThresholds) -> dict[str, Any]:
    """One row of the probe table: the task, its statistics, verdict word and reason."""
    word, reason = suite_verdict(stats, thresholds)
    return {"task": task, "verdict": word, "reason": reason, "stats": stats}


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in ("len_mean", "informative_per_step"):
        return f"{value:.1f}"
    return f"{100 * value:.1f} %"


def table_markdown(table: dict[str, Any]) -> str:
    """The probe table: one row per task, then each verdict's reason."""
    head = f"probe of `{table['model']}` ({table['note']})"
    lines = [head, "", "| task | " + " | ".join(h for _, h in TABLE_COLUMNS) + " | verdict |"]
    lines.append("|---|" + "---|" * (len(TABLE_COLUMNS) + 1))
    for row in table["rows"]:
        if "error" in row:
            lines.append(
                f"| {row['task']} | " + "- | " * len(TABLE_COLUMNS) + f"n/a ({row['error']}) |"
            )
            continue
        cells = [_fmt(k, row["stats"].get(k)) for k, _ in TABLE_COLUMNS]
        lines.append(f"| {row['task']} | " + " | ".join(cells) + f" | **{row['verdict']}** |")
    lines.append("")
    lines += [f"- {r['task']}: {r['reason']}" for r in table["rows"] if "error" not in r]
    return "\n".join(lines) + "\n"


def plot_table(table: dict[str, Any], path: Path) -> None:
    """Bars per task: greedy and sampled accuracy, strict and lenient, and the informative
    share of groups."""
    # local: matplotlib.pyplot takes ~0.6 s to import, paid only when a probe table is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in table["rows"] if "error" not in r]
    keys = [
        "greedy_pass",
        "greedy_pass_lenient",
        "accuracy",
        "accuracy_lenient",
        "informative_frac",
    ]
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows) + 2), 3.6))
    for j, key in enumerate(keys):
        xs = [i + (j - (len(keys) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(
            xs, [r["stats"].get(key) or 0.0 for r in rows], width, label=dict(TABLE_COLUMNS)[key]
        )
    ax.set_xticks(range(len(rows)), [f"{r['task']}\n{r['verdict']}" for r in rows], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share")
    ax.set_title(f"probe of {table['model']}")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_table(table: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """probe.json, probe.md and probe.png into out_dir (each written whole)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "probe.json", "md": out / "probe.md", "png": out / "probe.png"}
    atomic_write_text(paths["json"], json.dumps(table, indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["md"], table_markdown(table))
    plot_table(table, paths["png"])
    return paths
