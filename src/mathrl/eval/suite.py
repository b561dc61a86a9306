"""Eval suites: named sets of held-out tasks, and the table they produce.

A suite is a list of (row label, config overrides): each row is the run's config with
those overrides on top (task.name, the generator's settings, a benchmark's dataset and
grader), evaluated on its test split (eval.limit problems). `mathrl eval --suite NAME
--model A --model B` fills one table, rows = tasks, columns = models, and writes it as
suite.json, suite.md and suite.png, each row's examples beside it (<task>/eval_examples.jsonl).
Every cell has greedy pass@1 (strict, 95% CI, and lenient); a row that samples (eval.n > 1)
adds avg@n (the summary's mean@n) and pass@k with CIs. A row's `defaults` apply only where
the run's config leaves the key at its schema default (AIME: eval.n = 32 unless eval.n is
set). A row whose data is not available (GSM8K or a benchmark offline) is kept with the
reason and the one line that says how to get it, instead of stopping the suite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mathrl.config import Config
from mathrl.io import atomic_write_text
from mathrl.registry import Registry
from mathrl.tasks.benchmarks import BENCHMARKS


@dataclass(frozen=True)
class SuiteTask:
    """One row of a suite: a label and the config overrides (--set form) that make it;
    `defaults` (--set form) apply where the config leaves the key at its schema default."""

    label: str
    overrides: tuple[str, ...]
    defaults: tuple[str, ...] = ()


def _arith(kind: str, digits: int) -> tuple[str, ...]:
    return (
        "task.name=arithmetic",
        f"data.arithmetic_kind={kind}",
        f"data.arithmetic_digits={digits}",
        "data.arithmetic_train_size=0",  # only the held-out items are needed
    )


def _benchmark(name: str) -> SuiteTask:
    b = BENCHMARKS.get(name)
    defaults = (f"eval.n={b.samples}",) if b.samples > 1 else ()
    return SuiteTask(name, b.overrides(name), defaults)


_COUNTDOWN = ("task.name=countdown", "data.countdown_train_size=0")
MATH_BENCHMARKS = ("gsm8k", "math500", "aime2024", "aime2025", "amc2023")

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
# the benchmarks papers report (mathrl.tasks.benchmarks), together and one by one
SUITES.add("math", tuple(_benchmark(name) for name in MATH_BENCHMARKS))
for _name in MATH_BENCHMARKS[1:]:
    SUITES.add(_name, (_benchmark(_name),))


def row_sets(task: SuiteTask, cfg: Config) -> list[str]:
    """The overrides that make a row from `cfg`: its defaults where cfg leaves the key at
    the schema default, then its overrides."""
    applied = []
    for item in task.defaults:
        section, _, rest = item.partition(".")
        key = rest.split("=", 1)[0]
        current = getattr(cfg, section)
        if getattr(current, key) == getattr(type(current)(), key):
            applied.append(item)
    return [*applied, *task.overrides]


def sample_ks(cfg: Config) -> tuple[int, ...]:
    """The pass@k a suite row reports: eval.k's entries (each <= eval.n) and n itself."""
    n = cfg.eval.n
    return tuple(sorted({k for k in cfg.eval.k if k <= n} | {n}))


def _triple(summary: dict[str, Any], key: str) -> list[float]:
    return [summary[key], summary[f"{key}_lo"], summary[f"{key}_hi"]]


def cell(
    summary: dict[str, Any] | None, error: str | None, hint: str | None = None
) -> dict[str, Any]:
    """One table cell from an eval summary, or the reason it is empty (and how to fill it)."""
    if summary is None:
        return {"error": error, **({"hint": hint} if hint else {})}
    keys = ("pass@1", "pass@1_lo", "pass@1_hi", "pass@1_lenient", "n_problems", "truncated_frac")
    out = {k: summary[k] for k in keys}
    n = summary.get("n", 1)
    if n > 1:  # sampled: avg@n and pass@k, each [value, lo, hi]
        out["samples"] = n
        out[f"avg@{n}"] = _triple(summary, f"mean@{n}")
        for k in summary["ks"]:
            if k > 1:
                out[f"pass@{k}"] = _triple(summary, f"pass@{k}")
    return out


def _pct(triple: list[float]) -> str:
    value, lo, hi = (100 * v for v in triple)
    return f"{value:.1f} % [{lo:.1f}, {hi:.1f}]"


def cell_text(c: dict[str, Any]) -> str:
    """`37.0 % [32.8, 41.2] / 37.4 %` (greedy strict [95% CI] / lenient), with
    `avg@32 ... · pass@32 ... · greedy ...` first where the row samples; or `n/a (why)`."""
    if "error" in c:
        return f"n/a ({c['error']})"
    greedy = (
        f"{_pct([c['pass@1'], c['pass@1_lo'], c['pass@1_hi']])} / {100 * c['pass@1_lenient']:.1f} %"
    )
    if "samples" not in c:
        return greedy
    sampled = [
        f"{key} {_pct(v)}"
        for key, v in c.items()
        if key.startswith(("avg@", "pass@")) and isinstance(v, list)
    ]
    return " · ".join([*sampled, f"greedy {greedy}"])


def _row_label(row: dict[str, Any]) -> str:
    samples = row.get("samples", 1)
    if samples > 1:
        return f"{row['task']} (n={row['n']}, {samples} samples at T={row['temperature']:g})"
    return f"{row['task']} (n={row['n']})"


def table_rows(table: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the suite table as text: task, then one cell per model."""
    labels = [m["label"] for m in table["models"]]
    rows = [[_row_label(r), *(cell_text(r["cells"][lb]) for lb in labels)] for r in table["rows"]]
    return ["task", *labels], rows


def hints(table: dict[str, Any]) -> list[str]:
    """`task: how to get its data`, once per n/a row that has a hint."""
    out = []
    for row in table["rows"]:
        found = {c["hint"] for c in row["cells"].values() if "hint" in c}
        out += [f"{row['task']}: {h}" for h in sorted(found)]
    return out


def markdown(table: dict[str, Any]) -> str:
    """Rows: tasks; columns: models; cells: greedy strict pass@1 [95% CI] / lenient, with
    avg@n and pass@k first where a row samples; then how to get the n/a rows."""
    header, rows = table_rows(table)
    lines = [
        f"suite `{table['suite']}` (greedy pass@1, strict [95% CI] / lenient; rows that "
        "sample n per problem: avg@n and unbiased pass@k [95% CI] first; split test)",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---|" * (len(header) - 1),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    missing = hints(table)
    if missing:
        lines += ["", "n/a rows, how to get them:", *(f"- {h}" for h in missing)]
    return "\n".join(lines) + "\n"


def headline(c: dict[str, Any]) -> tuple[str, list[float]]:
    """The metric a cell is plotted by: avg@n where it samples, else greedy pass@1."""
    if "samples" in c:
        key = f"avg@{c['samples']}"
        return key, c[key]
    return "pass@1", [c["pass@1"], c["pass@1_lo"], c["pass@1_hi"]]


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
            value, low, high = headline(c)[1]
            xs.append(i + (j - (len(models) - 1) / 2) * width)
            ys.append(value)
            lo.append(value - low)
            hi.append(high - value)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=m["label"])
    ticks = [r["task"] + (f"\navg@{r['samples']}" if r.get("samples", 1) > 1 else "") for r in rows]
    ax.set_xticks(range(len(rows)), ticks, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("strict accuracy: greedy pass@1, avg@n where sampled")
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
