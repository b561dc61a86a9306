"""Training curves of a run directory as PNGs in RUN/plots/ (matplotlib, no display).

Figures are built with `matplotlib.figure.Figure` directly (not pyplot), so nothing here
touches the global backend or needs a display; savefig renders with Agg.
A plot whose metric keys are absent from metrics.jsonl is skipped, not an error.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mathrl.errors import DataError
from mathrl.io import read_jsonl

PLOTS_DIR = "plots"
# reward/* keys that are statistics or counts, not reward components.
REWARD_STATS = {
    "reward/mean",
    "reward/std",
    "reward/accuracy",
    "reward/accuracy_lenient",
    "reward/frac_zero_std",
    "reward/failed",
    "reward/unscored",
}
TIME_KEYS = ("time/rollout_s", "time/reward_s", "time/train_s")
# name -> panels (one subplot each) -> metric keys drawn in that panel.
LINE_PLOTS: dict[str, tuple[str, list[list[str]]]] = {
    "accuracy": ("Accuracy (training rollouts)", [["reward/accuracy", "reward/accuracy_lenient"]]),
    "entropy": ("Policy entropy", [["policy/entropy"]]),
    "length": (
        "Completion length",
        [["rollout/len_mean", "rollout/len_max"], ["rollout/clipped_frac"]],
    ),
    "kl": (
        "KL (loss/kl: to reference; approx_kl: to the sampling policy)",
        [["loss/kl", "loss/approx_kl"]],
    ),
    "clip_frac": ("PPO clip fraction", [["loss/clip_frac"]]),
    "frac_zero_std": ("Groups with zero reward std (no signal)", [["reward/frac_zero_std"]]),
    "loss": (
        "Loss and optimiser",
        [["loss/policy", "loss/total"], ["optim/grad_norm"], ["optim/lr"]],
    ),
    "sft_loss": ("SFT loss", [["sft/loss"]]),
}


# ---------------------------------------------------------------- reading


def load_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a missing or empty file is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: no such metrics file (is this a run directory?)")
    records = read_jsonl(path)
    if not records:
        raise DataError(f"{path}: empty metrics file, no step was logged")
    return records


def load_rollouts(run_dir: Path) -> list[dict[str, Any]]:
    """Records of RUN/rollouts.jsonl, or [] when the run wrote none."""
    path = Path(run_dir) / "rollouts.jsonl"
    return read_jsonl(path) if path.is_file() else []


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def series(metrics: Iterable[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one key over the records that hold a finite number for it."""
    steps, values = [], []
    for r in metrics:
        if _is_number(r.get(key)) and _is_number(r.get("step")):
            steps.append(float(r["step"]))
            values.append(float(r[key]))
    return steps, values


def numeric_keys(metrics: Iterable[dict[str, Any]]) -> list[str]:
    """Sorted metric keys (not 'step') that hold a finite number in at least one record."""
    keys = {k for r in metrics for k, v in r.items() if k != "step" and _is_number(v)}
    return sorted(keys)


def reward_component_keys(metrics: Sequence[dict[str, Any]]) -> list[str]:
    """reward/<component> keys such as reward/correct and reward/format."""
    return [k for k in numeric_keys(metrics) if k.startswith("reward/") and k not in REWARD_STATS]


# ---------------------------------------------------------------- per-prompt accuracy


def prompt_accuracy_matrix(
    rollouts: Iterable[dict[str, Any]], max_prompts: int = 50, min_steps: int = 2
) -> tuple[list[str], list[int], np.ndarray]:
    """(prompt_ids, steps, matrix): accuracy of each prompt's completions at each step.

    matrix[i, j] is the fraction of `correct` completions of prompt_ids[i] at steps[j], NaN
    where the prompt was not sampled. Only prompts seen at >= min_steps distinct steps are
    kept, the max_prompts most-seen first (ties by prompt id). Example: prompt "a" with
    correct [1, 0] at step 1 and [1, 1] at step 3 gives the row [0.5, 1.0].
    """
    hits: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in rollouts:
        cell = hits[str(r.get("prompt_id"))][int(r["step"])]
        cell[0] += bool(r.get("correct"))
        cell[1] += 1
    seen = [(len(by_step), pid) for pid, by_step in hits.items() if len(by_step) >= min_steps]
    seen.sort(key=lambda t: (-t[0], t[1]))
    prompt_ids = [pid for _, pid in seen[:max_prompts]]
    steps = sorted({s for pid in prompt_ids for s in hits[pid]})
    col = {s: j for j, s in enumerate(steps)}
    matrix = np.full((len(prompt_ids), len(steps)), np.nan)
    for i, pid in enumerate(prompt_ids):
        for s, (n_correct, n) in hits[pid].items():
            matrix[i, col[s]] = n_correct / n
    return prompt_ids, steps, matrix


def prompt_curve(
    rollouts: Iterable[dict[str, Any]], prompt_id: str
) -> tuple[list[int], list[float], list[float]]:
    """(steps, accuracy, mean reward) of one prompt's completions at each step it was sampled."""
    by_step: dict[int, list[tuple[bool, float]]] = defaultdict(list)
    for r in rollouts:
        if str(r.get("prompt_id")) == str(prompt_id):
            reward = r.get("reward")
            by_step[int(r["step"])].append((bool(r.get("correct")), float(reward or 0.0)))
    steps = sorted(by_step)
    acc = [sum(c for c, _ in by_step[s]) / len(by_step[s]) for s in steps]
    mean_reward = [sum(x for _, x in by_step[s]) / len(by_step[s]) for s in steps]
    return steps, acc, mean_reward


# ---------------------------------------------------------------- drawing


def smooth(values: list[float], window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    x = np.asarray(values, dtype=float)
    csum = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (csum[idx] - csum[lo]) / (idx - lo)


def draw_series(
    ax: Any, steps: list[float], values: list[float], label: str, color: str | None = None
) -> None:
    """One curve; long noisy curves get a faint raw line under a moving average."""
    if len(values) >= 30:
        (raw,) = ax.plot(steps, values, alpha=0.3, linewidth=0.8, color=color)
        ax.plot(
            steps, smooth(values, max(2, len(values) // 20)), color=raw.get_color(), label=label
        )
    else:
        marker = "o" if len(values) < 15 else None
        ax.plot(steps, values, marker=marker, markersize=3, label=label, color=color)


def style_axes(ax: Any, legend: bool = True) -> None:
    """Integer steps on x, a light grid, a small legend."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def line_plot(
    metrics: Sequence[dict[str, Any]], panels: list[list[str]], title: str, path: Path
) -> Path | None:
    """One figure, one subplot per panel of keys; None (nothing written) if no key is present."""
    present = [[k for k in keys if series(metrics, k)[0]] for keys in panels]
    present = [keys for keys in present if keys]
    if not present:
        return None
    fig = Figure(figsize=(5.5 * len(present), 3.6))
    for n, keys in enumerate(present, start=1):
        ax = fig.add_subplot(1, len(present), n)
        for key in keys:
            draw_series(ax, *series(metrics, key), label=key)
        style_axes(ax)
    fig.suptitle(title)
    return _save(fig, path)


EVAL_BOOKKEEPING = {"n", "n_problems", "seed", "temperature", "time_s", "problems_per_s"}


def eval_plot(metrics: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Held-out scores in [0, 1] (pass@1 with its 95 % CI band, pass@k, maj@k, ...) and length.

    Bookkeeping keys (problem count, seed, timing) are left out: they are not outcomes.
    """
    keys = [k for k in numeric_keys(metrics) if k.startswith("eval/")]
    names = {k: k.removeprefix("eval/") for k in keys}
    scores = [
        k
        for k in keys
        if names[k] not in EVAL_BOOKKEEPING
        and names[k] != "len_mean"
        and not names[k].endswith(("_lo", "_hi"))
    ]
    if not scores:
        return None
    has_len = "eval/len_mean" in keys
    fig = Figure(figsize=(5.5 * (1 + has_len), 3.6))
    ax = fig.add_subplot(1, 1 + has_len, 1)
    for key in scores:
        steps, values = series(metrics, key)
        (line,) = ax.plot(steps, values, marker="o", markersize=3, label=key)
        lo, hi = series(metrics, f"{key}_lo"), series(metrics, f"{key}_hi")
        if lo[0] and lo[0] == hi[0] == steps:
            ax.fill_between(steps, lo[1], hi[1], color=line.get_color(), alpha=0.15)
    ax.set_ylim(0, 1)
    style_axes(ax)
    ax.set_title("held-out scores (band: 95% CI)", fontsize=10)
    if has_len:
        ax2 = fig.add_subplot(1, 2, 2)
        draw_series(ax2, *series(metrics, "eval/len_mean"), label="eval/len_mean")
        style_axes(ax2)
    fig.suptitle("Evaluation")
    return _save(fig, path)


def time_plot(metrics: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Stacked rollout / reward / train seconds per step (steps missing a key count it as 0)."""
    keys = [k for k in TIME_KEYS if series(metrics, k)[0]]
    rows = [r for r in metrics if any(_is_number(r.get(k)) for k in keys)]
    if not keys or not rows:
        return None
    steps = [r["step"] for r in rows]
    stacks = [[float(r[k]) if _is_number(r.get(k)) else 0.0 for r in rows] for k in keys]
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.add_subplot()
    ax.stackplot(steps, stacks, labels=[k.removeprefix("time/") for k in keys], alpha=0.8)
    style_axes(ax)
    ax.set_ylabel("seconds")
    ax.set_title("Time per step")
    return _save(fig, path)


def heatmap_plot(rollouts: list[dict[str, Any]], path: Path, max_prompts: int = 50) -> Path | None:
    """Prompts x steps accuracy heatmap (prompts sampled at several steps only)."""
    prompt_ids, steps, matrix = prompt_accuracy_matrix(rollouts, max_prompts)
    if not prompt_ids:
        return None
    width = min(14.0, 6 + 0.25 * len(steps))
    fig = Figure(figsize=(width, min(14.0, 2.5 + 0.22 * len(prompt_ids))))
    ax = fig.add_subplot()
    # grey = the prompt was not sampled at that step
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap=cmap, vmin=0, vmax=1)
    ytick_size = 8 if len(prompt_ids) <= 20 else 6
    ax.set_yticks(range(len(prompt_ids)), [pid[:24] for pid in prompt_ids], fontsize=ytick_size)
    stride = max(1, len(steps) // 20)
    ax.set_xticks(range(0, len(steps), stride), [str(s) for s in steps[::stride]], fontsize=7)
    ax.set_xlabel("step (grey: prompt not sampled)")
    ax.set_title(f"Per-prompt accuracy, {len(prompt_ids)} most-sampled prompts", fontsize=10)
    fig.colorbar(im, ax=ax, label="accuracy")
    return _save(fig, path)


def prompt_plot(rollouts: list[dict[str, Any]], prompt_id: str, path: Path) -> Path:
    """Accuracy and mean reward of one prompt over training; an unknown id is a DataError."""
    steps, acc, mean_reward = prompt_curve(rollouts, prompt_id)
    if not steps:
        known = sorted({str(r.get("prompt_id")) for r in rollouts})[:5]
        raise DataError(f"prompt id {prompt_id!r} is not in rollouts.jsonl (some ids: {known})")
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.add_subplot()
    ax.plot(steps, acc, marker="o", label="accuracy")
    ax.plot(steps, mean_reward, marker="s", label="mean reward")
    style_axes(ax)
    ax.set_title(f"Prompt {prompt_id}"[:80])
    return _save(fig, path)


def safe_name(text: str) -> str:
    """A file-name-safe version of a metric key or prompt id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:80] or "x"


# ---------------------------------------------------------------- the run directory


def write_plots(
    run_dir: str | Path, prompt_id: str | None = None, max_prompts: int = 50
) -> list[Path]:
    """Write every plot the run's logs support into RUN/plots/; returns the written paths."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir / "metrics.jsonl")
    out = run_dir / PLOTS_DIR
    rollouts = load_rollouts(run_dir)
    # drawn first so that an unknown prompt id fails before the other plots are made
    prompt_png = (
        prompt_plot(rollouts, prompt_id, out / f"prompt_{safe_name(prompt_id)}.png")
        if prompt_id is not None
        else None
    )
    reward_keys = ["reward/mean", *reward_component_keys(metrics)]
    specs = {"reward": ("Reward", [reward_keys]), **LINE_PLOTS}
    written = [
        line_plot(metrics, panels, title, out / f"{name}.png")
        for name, (title, panels) in specs.items()
    ]
    written.append(eval_plot(metrics, out / "eval.png"))
    written.append(time_plot(metrics, out / "time.png"))
    warmup = run_dir / "warmup_sft" / "metrics.jsonl"
    if warmup.is_file() and warmup.stat().st_size:
        written.append(
            line_plot(
                read_jsonl(warmup), [["sft/loss"]], "SFT warm-up loss", out / "warmup_sft_loss.png"
            )
        )
    written += [heatmap_plot(rollouts, out / "prompt_heatmap.png", max_prompts), prompt_png]
    return [p for p in written if p is not None]
