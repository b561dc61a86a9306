"""summary.json: a run's headline numbers, read back from its own metrics log.

`accuracy_before_rl` is the held-out greedy pass@1 logged at step 0 (after any SFT
warm-up, before the first RL update); `accuracy_after_rl` is the last held-out eval.
Both are fractions in [0, 1] with 95 % normal-approximation intervals (clipped to [0, 1]);
`heldout_n` is the number of held-out problems. Keys are absent (not guessed) when the run
logged no such eval.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mathrl.io import atomic_write_text

EVAL_KEY = "eval/pass@1"


def run_summary(
    metrics: list[dict[str, Any]], wall_s: float, heldout_split: str, **extra: Any
) -> dict[str, Any]:
    """The summary dict of a finished run from its metrics rows (in log order)."""
    train_rows = [m for m in metrics if "reward/mean" in m]
    out: dict[str, Any] = {
        "steps": max((int(m.get("step", 0)) for m in metrics), default=0),
        "wall_s": round(wall_s, 1),
        "heldout_split": heldout_split,
        **heldout_fields(metrics),
    }
    if train_rows:
        out["train_reward_first"] = train_rows[0]["reward/mean"]
        out["train_reward_last"] = train_rows[-1]["reward/mean"]
    out.update(extra)
    return out


def heldout_fields(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """accuracy_{before,after}_rl (with _ci95 and step_), heldout_n, accuracy_gain: those logged."""
    evals = [m for m in metrics if m.get(EVAL_KEY) is not None]
    out: dict[str, Any] = {}
    if evals and evals[0]["step"] == 0:
        out.update(_eval_fields(evals[0], "before_rl"))
    if evals and evals[-1]["step"] > 0:
        out.update(_eval_fields(evals[-1], "after_rl"))
        if evals[-1].get("eval/n_problems") is not None:
            out["heldout_n"] = int(evals[-1]["eval/n_problems"])
    if "accuracy_before_rl" in out and "accuracy_after_rl" in out:
        out["accuracy_gain"] = out["accuracy_after_rl"] - out["accuracy_before_rl"]
    return out


def _eval_fields(row: dict[str, Any], when: str) -> dict[str, Any]:
    return {
        f"accuracy_{when}": row[EVAL_KEY],
        f"accuracy_{when}_ci95": [row.get(f"{EVAL_KEY}_lo"), row.get(f"{EVAL_KEY}_hi")],
        f"step_{when}": int(row["step"]),
    }


def before_after_text(summary: dict[str, Any]) -> str:
    """The console table: held-out greedy pass@1 before and after RL, and the change."""
    if "accuracy_after_rl" not in summary:
        return "no held-out eval logged (set eval.every > 0 to measure before/after RL)"
    n, split = summary.get("heldout_n", "?"), summary["heldout_split"]
    lines = [f"held-out greedy pass@1 ({n} problems, split '{split}')"]
    for when, label in (("before_rl", "before RL (step 0)"), ("after_rl", "after RL")):
        if f"accuracy_{when}" in summary:
            lo, hi = summary[f"accuracy_{when}_ci95"]
            label = label if when == "before_rl" else f"after RL (step {summary['step_after_rl']})"
            lines.append(
                f"  {label:<22} {100 * summary[f'accuracy_{when}']:5.1f} %"
                f"   95% CI [{100 * lo:.1f}, {100 * hi:.1f}]"
            )
    if "accuracy_gain" in summary:
        lines.append(f"  {'change':<22} {100 * summary['accuracy_gain']:+5.1f} points")
    return "\n".join(lines)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    """RUN/summary.json, written atomically."""
    path = run_dir / "summary.json"
    atomic_write_text(path, json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return path
