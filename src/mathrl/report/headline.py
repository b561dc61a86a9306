"""The top of report.html: held-out accuracy before -> after, what was run, and four small plots.

Every number comes from what the run wrote: summary.json first, then the held-out evals in
metrics.jsonl (for a run stopped before its summary), model/task from manifest.json or
config.toml. What a run did not log is shown as "n/a", never estimated.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from mathrl.report.plots import draw_series, series, style_axes
from mathrl.report.summary import heldout_fields

NA = "n/a"
DPI = 160  # drawn at ~1.6x the size shown, so the small plots stay sharp on dense screens
SIZE_IN = (2.9, 2.3)  # (width, height) inches: four fit side by side in the 1150 px page


def _pct(x: Any) -> str:
    return f"{100 * x:.1f} %" if isinstance(x, int | float) else NA


def _ci(pair: Any) -> str | None:
    """'95% CI [lo, hi]' in percent, or None when the run logged no interval."""
    if isinstance(pair, list | tuple) and len(pair) == 2:
        if all(isinstance(v, int | float) for v in pair):
            return f"95% CI [{100 * pair[0]:.1f}, {100 * pair[1]:.1f}]"
    return None


def wall_text(seconds: Any) -> str:
    """'42.3 s', '5 min 07 s', '2 h 03 min'; n/a when the run recorded no wall time."""
    if not isinstance(seconds, int | float) or seconds < 0:
        return NA
    if round(seconds, 1) < 60:  # 59.96 s reads as 1 min 00 s, not 60.0 s
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def read_toml(path: Path) -> dict[str, Any]:
    """config.toml as a dict; {} when absent or unreadable (its facts then show n/a)."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}


def _get(table: dict[str, Any], *keys: str) -> Any:
    value: Any = table
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def accuracy_view(summary: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Held-out greedy pass@1 before and after RL as text, with CIs, gain and the eval set."""
    acc = {**heldout_fields(metrics), **summary}  # summary.json wins where it has a value
    before, after = acc.get("accuracy_before_rl"), acc.get("accuracy_after_rl")
    gain = acc.get("accuracy_gain")
    if not isinstance(gain, int | float) and isinstance(before, int | float):
        gain = after - before if isinstance(after, int | float) else None
    n, split = acc.get("heldout_n"), acc.get("heldout_split")
    where = ", ".join(
        x for x in (f"{n} problems" if n else "", f"split '{split}'" if split else "") if x
    )
    return {
        "before": _pct(before),
        "after": _pct(after),
        "gain": f"{100 * gain:+.1f} points" if isinstance(gain, int | float) else NA,
        "sign": "up" if (gain or 0) > 0 else "down" if (gain or 0) < 0 else "flat",
        "where": where,
        "notes": [_note(acc, "before_rl", "before RL"), _note(acc, "after_rl", "after RL")],
    }


def _note(acc: dict[str, Any], when: str, label: str) -> str:
    """'before RL (step 0): 95% CI [20.0, 30.0]', or why there is no number."""
    if not isinstance(acc.get(f"accuracy_{when}"), int | float):
        missing = "no held-out eval at step 0" if when == "before_rl" else "no held-out eval"
        return f"{label}: {NA} ({missing})"
    step = acc.get(f"step_{when}")
    at = f" (step {step})" if step is not None else ""
    return f"{label}{at}: {_ci(acc.get(f'accuracy_{when}_ci95')) or 'no CI logged'}"


def run_facts(
    summary: dict[str, Any],
    manifest: dict[str, Any],
    config: dict[str, Any],
    metrics: list[dict[str, Any]],
) -> list[tuple[str, str]]:
    """(label, value) pairs: model, task, algorithm, RL steps, warm-up, wall time."""
    model = manifest.get("model") or _get(config, "model", "path")
    task = manifest.get("task") or _get(config, "task", "name")
    algorithm = _get(config, "train", "algorithm")
    loss = _get(config, "train", "policy_loss")
    steps = summary.get("steps", max((int(m.get("step", 0)) for m in metrics), default=0))
    facts = [
        ("model", str(model) if model else NA),
        ("task", str(task) if task else NA),
        ("algorithm", f"{algorithm} ({loss} loss)" if algorithm and loss else algorithm or NA),
        ("RL steps", str(steps)),
    ]
    warmup = summary.get("warmup")
    if isinstance(warmup, dict) and warmup.get("warmup"):
        facts.append(("SFT warm-up", f"{warmup.get('steps', NA)} steps"))
    if isinstance(warmup, dict) and warmup.get("first_round_correct") is not None:
        facts.append(("first-round accuracy (warm-up probe)", warmup_text(warmup)))
    facts.append(("wall time", wall_text(summary.get("wall_s"))))
    return facts


def warmup_text(warmup: dict[str, Any]) -> str:
    """`strict 0.0 % -> 28.1 %, lenient 0.0 % -> 28.1 %` (no arrow without a warm-up)."""

    def pct(v: Any) -> str:
        return f"{100 * v:.1f} %" if isinstance(v, int | float) else NA

    parts = []
    for kind, before, after in (
        ("strict", "first_round_correct", "after_correct"),
        ("lenient", "first_round_lenient", "after_lenient"),
    ):
        text = f"{kind} {pct(warmup.get(before))}"
        if warmup.get(after) is not None:
            text += f" -> {pct(warmup[after])}"
        parts.append(text)
    return ", ".join(parts)


# ---------------------------------------------------------------- the four small plots


def _accuracy_panel(ax: Any, metrics: list[dict[str, Any]]) -> bool:
    """Held-out pass@1 with its CI band, and the training rollouts' accuracy."""
    drawn = False
    steps, values = series(metrics, "eval/pass@1")
    if steps:
        (line,) = ax.plot(steps, values, marker="o", markersize=3, label="held-out pass@1")
        lo, hi = series(metrics, "eval/pass@1_lo"), series(metrics, "eval/pass@1_hi")
        if lo[0] == hi[0] == steps:
            ax.fill_between(steps, lo[1], hi[1], color=line.get_color(), alpha=0.15)
        drawn = True
    train = series(metrics, "reward/accuracy")
    if train[0]:
        draw_series(ax, *train, label="train rollouts")
        drawn = True
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title("Accuracy (band: 95% CI)")
    return drawn


def _one_key_panel(ax: Any, metrics: list[dict[str, Any]], key: str, title: str) -> bool:
    steps, values = series(metrics, key)
    if steps:
        draw_series(ax, steps, values, label=key)
        ax.set_title(title)
    return bool(steps)


def _entropy_kl_panel(ax: Any, metrics: list[dict[str, Any]]) -> bool:
    """Entropy on the left axis; KL to the reference (or, without one, to the sampler) right.

    Each axis is labelled in its curve's colour, in place of a legend that would cover them.
    """
    entropy = series(metrics, "policy/entropy")
    kl_key = "loss/kl" if series(metrics, "loss/kl")[0] else "loss/approx_kl"
    kl = series(metrics, kl_key)
    if not entropy[0] and not kl[0]:
        return False
    if entropy[0]:
        draw_series(ax, *entropy, label="entropy", color="C0")
        _colour_axis(ax, "entropy", "C0")
    if kl[0]:
        right = ax.twinx() if entropy[0] else ax
        draw_series(right, *kl, label=kl_key, color="C3")
        _colour_axis(right, kl_key, "C3")
    ax.set_title("Entropy / KL")
    return True


def _colour_axis(ax: Any, label: str, color: str) -> None:
    ax.set_ylabel(label, color=color, fontsize=8)
    ax.tick_params(axis="y", labelcolor=color, labelsize=7)


def headline_plots(metrics: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """plots/headline_{accuracy,reward,length,entropy_kl}.png, each skipped when not logged."""
    panels = {
        "accuracy": _accuracy_panel,
        "reward": lambda ax, m: _one_key_panel(ax, m, "reward/mean", "Reward (train mean)"),
        "length": lambda ax, m: _one_key_panel(
            ax, m, "rollout/len_mean", "Completion length (tokens)"
        ),
        "entropy_kl": _entropy_kl_panel,
    }
    paths = []
    for name, draw in panels.items():
        fig = Figure(figsize=SIZE_IN)
        ax = fig.add_subplot()
        if not draw(ax, metrics):
            continue
        style_axes(ax, legend=False)
        ax.title.set_fontsize(10)
        ax.tick_params(labelsize=7)
        ax.xaxis.label.set_fontsize(8)
        # one curve needs no legend (the title names it); entropy_kl labels its two axes
        if name != "entropy_kl" and len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(fontsize=7)
        fig.tight_layout(pad=0.4)
        path = out_dir / f"headline_{name}.png"
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)
        paths.append(path)
    return paths
