"""Eval suites: named sets of held-out tasks, and the table they produce.

A suite is a list of (row label, config overrides): each row is the run's config with
those overrides on top (task.name, the generator's settings), evaluated greedy on its test
split (eval.limit problems). `mathrl eval --suite NAME --model A --model B` fills one
table, rows = tasks, columns = models, with strict and lenient pass@1 and 95% CIs, and
writes it as suite.json, suite.md and suite.png. A row whose data is not available (GSM8K
offline) is kept with the reason instead of stopping the suite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathrl.io import atomic_write_text
from mathrl.registry import Registry


@dataclass(frozen=True)
class SuiteTask:
    """One row of a suite: a label and the config overrides (--set form) that make it."""

    label: str
    overrides: tuple[str, ...]


def _arith(kind: str, digits: int) -> tuple[str, ...]:
    return (
        "task.name=arithmetic",
        f"data.arithmetic_kind={kind}",
        f"data.arithmetic_digits={digits}",
        "data.arithmetic_train_size=0",  # only the held-out items are needed
    )


_COUNTDOWN = ("task.name=countdown", "data.countdown_train_size=0")

SUITES: Registry[tuple[SuiteTask, ...]] = Registry("eval suite")
SUITES.add(
    "default",
    (
        SuiteTask("gsm8k", ("task.name=gsm8k",)),
        SuiteTask("countdown-3", (*_COUNTDOWN, "data.countdown_numbers=[3]")),
        SuiteTask("countdown-4", (*_COUNTDOWN, "data.countdown_numbers=[4]")),
        SuiteTask("add-2digit", _arith("add", 2)),
        SuiteTask("add-4digit", _arith("add", 4)),
        SuiteTask("mul-2digit", _arith("mul", 2)),
        SuiteTask("mixed-1digit", _arith("mixed", 1)),
        SuiteTask("word-2digit", _arith("word", 2)),
    ),
)
SUITES.add(
    "synthetic",  # the default without GSM8K: runs anywhere, offline
    tuple(t for t in SUITES.get("default") if t.label != "gsm8k"),
)
SUITES.add(
    "skills",  # the skills/cpu recipe's tasks, and GSM8K for transfer (its own token budget)
    (
        SuiteTask("add-2digit", _arith("add", 2)),
        SuiteTask("word-2digit", _arith("word", 2)),
        SuiteTask("gsm8k", ("task.name=gsm8k", "rollout.max_new_tokens=256")),
    ),
)


def cell(summary: dict[str, Any] | None, error: str | None) -> dict[str, Any]:
    """One table cell from an eval summary (or the reason it is empty)."""
    if summary is None:
        return {"error": error}
    keys = ("pass@1", "pass@1_lo", "pass@1_hi", "pass@1_lenient", "n_problems")
    return {k: summary[k] for k in keys}


def cell_text(c: dict[str, Any]) -> str:
    """`37.0 % [32.8, 41.2] / 37.4 %` (strict [95% CI] / lenient), or `n/a (why)`."""
    if "error" in c:
        return f"n/a ({c['error']})"
    return (
        f"{100 * c['pass@1']:.1f} % [{100 * c['pass@1_lo']:.1f}, "
        f"{100 * c['pass@1_hi']:.1f}] / {100 * c['pass@1_lenient']:.1f} %"
    )


def table_rows(table: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the suite table as text: task, then one cell per model."""
    labels = [m["label"] for m in table["models"]]
    rows = [
        [f"{r['task']} (n={r['n']})", *(cell_text(r["cells"][lb]) for lb in labels)]
        for r in table["rows"]
    ]
    return ["task", *labels], rows


def markdown(table: dict[str, Any]) -> str:
    """Rows: tasks; columns: models; cells: strict pass@1 [95% CI] / lenient."""
    models = table["models"]
    lines = [
        f"suite `{table['suite']}` (greedy pass@1, strict [95% CI] / lenient; split test)",
        "",
        "| task | " + " | ".join(m["label"] for m in models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for row in table["rows"]:
        cells = [cell_text(row["cells"][m["label"]]) for m in models]
        lines.append(f"| {row['task']} (n={row['n']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], path: Path) -> None:
    """Grouped bars: strict pass@1 per task and model, with 95% CI whiskers."""
    # local: matplotlib.pyplot takes ~0.6 s to import (measured), paid only when a suite runs
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, models = table["rows"], table["models"]
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) + 2), 3.6))
    for j, m in enumerate(models):
        xs, ys, lo, hi = [], [], [], []
        for i, row in enumerate(rows):
            c = row["cells"][m["label"]]
            if "error" in c:
                continue
            xs.append(i + (j - (len(models) - 1) / 2) * width)
            ys.append(c["pass@1"])
            lo.append(c["pass@1"] - c["pass@1_lo"])
            hi.append(c["pass@1_hi"] - c["pass@1"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=m["label"])
    ax.set_xticks(range(len(rows)), [r["task"] for r in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("greedy pass@1 (strict)")
    ax.set_title(f"eval suite '{table['suite']}'")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_suite(table: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """suite.json, suite.md and suite.png into out_dir (each written whole)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out_dir / "suite.json",
        "md": out_dir / "suite.md",
        "png": out_dir / "suite.png",
    }
    atomic_write_text(paths["json"], json.dumps(table, indent=2, allow_nan=False) + "\n")
    atomic_write_text(paths["md"], markdown(table))
    plot(table, paths["png"])
    return paths
