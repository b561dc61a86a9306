"""One self-contained HTML report per run, headline first, and run-vs-run overlays.

What each page shows is gathered here; the templates and their escaping live in page.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mathrl.errors import DataError, MathrlError
from mathrl.report.headline import accuracy_view, headline_plots, read_toml, run_facts
from mathrl.report.page import fmt, inline_png, render_page
from mathrl.report.plots import (
    EVAL_BOOKKEEPING,
    PLOTS_DIR,
    draw_series,
    load_metrics,
    load_rollouts,
    numeric_keys,
    safe_name,
    series,
    style_axes,
    write_plots,
)

N_SAMPLES = 3  # best and worst completions shown from the last step
MAX_CHARS = 4000  # a longer completion is cut in the report (the JSONL keeps it whole)
HEADLINE = ("reward/mean", "reward/accuracy", "eval/pass@1", "rollout/len_mean", "loss/kl")


def flatten(obj: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as (dotted key, value) pairs; lists are shown as JSON."""
    if not isinstance(obj, dict):
        return [(prefix, json.dumps(obj) if isinstance(obj, list) else obj)]
    out: list[tuple[str, Any]] = []
    for k, v in obj.items():
        out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------- report content


def summary_rows(metrics: list[dict[str, Any]]) -> list[list[Any]]:
    """[key, first, last, change] per numeric key, headline keys first."""
    keys = numeric_keys(metrics)
    keys = [k for k in HEADLINE if k in keys] + [k for k in keys if k not in HEADLINE]
    rows = []
    for key in keys:
        steps, values = series(metrics, key)
        first = f"{fmt(values[0])} @ {int(steps[0])}"
        last = f"{fmt(values[-1])} @ {int(steps[-1])}"
        rows.append([key, first, last, values[-1] - values[0]])
    return rows


def before_after_rows(run_dir: Path, metrics: list[dict[str, Any]]) -> list[list[Any]]:
    """[metric, before, after, change] from summary.json (X_before_rl / X_after_rl) and eval/*."""
    rows = []
    summary = _read_json(run_dir / "summary.json") or {}
    for key, before in summary.items():
        if key.endswith("_before_rl") and key != "step_before_rl":
            name = key.removesuffix("_before_rl")
            after = summary.get(f"{name}_after_rl")
            if isinstance(before, int | float) and isinstance(after, int | float):
                rows.append([f"{name} (summary.json)", before, after, after - before])
    for key in numeric_keys(metrics):
        name = key.removeprefix("eval/")
        # outcomes only: problem counts, seeds, timing and CI bounds are not before/after results
        if not key.startswith("eval/") or name in EVAL_BOOKKEEPING or name.endswith(("_lo", "_hi")):
            continue
        steps, values = series(metrics, key)
        if len(values) >= 2:
            label = f"{key} (step {int(steps[0])} -> {int(steps[-1])})"
            rows.append([label, values[0], values[-1], values[-1] - values[0]])
    return rows


def pick_samples(
    rollouts: list[dict[str, Any]], n: int = N_SAMPLES
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(best, worst): the n highest- and n lowest-reward completions of the last step."""
    if not rollouts:
        return [], []
    last = max(int(r.get("step", 0)) for r in rollouts)
    rows = [r for r in rollouts if int(r.get("step", 0)) == last]

    def reward(r: dict[str, Any]) -> float:
        v = r.get("reward")
        return float(v) if isinstance(v, int | float) else -math.inf

    rows.sort(key=reward, reverse=True)
    best = rows[:n]
    worst = [r for r in reversed(rows[n:])][:n]
    return best, worst


def _prompt_text(record: dict[str, Any]) -> str:
    messages = record.get("messages") or []
    users = [
        m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"
    ]
    return str(users[-1]) if users else str(record.get("prompt", ""))


def sample_view(record: dict[str, Any]) -> dict[str, Any]:
    """One completion with its prompt and score, as the `sample` macro shows it."""
    text = str(record.get("completion", ""))
    cut = f"\n[... {len(text) - MAX_CHARS} more characters]" if len(text) > MAX_CHARS else ""
    components = record.get("reward_components")
    meta = [
        ["prompt_id", record.get("prompt_id")],
        ["reward", record.get("reward")],
        ["correct", record.get("correct")],
        ["pred", record.get("pred")],
        ["gold", record.get("gold")],
        ["components", None if components is None else json.dumps(components, sort_keys=True)],
        ["finish_reason", record.get("finish_reason")],
    ]
    return {
        "meta": [row for row in meta if row[1] is not None],
        "prompt": _prompt_text(record),
        "completion": text[:MAX_CHARS] + cut,
    }


def _manifest_rows(run_dir: Path) -> list[list[Any]]:
    manifest = _read_json(run_dir / "manifest.json")
    return [[k, v] for k, v in flatten(manifest)] if manifest else [["(no manifest.json)", ""]]


def write_report(run_dir: str | Path, prompt_id: str | None = None) -> Path:
    """Write plots and RUN/report.html (self-contained: images inlined); returns its path."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir / "metrics.jsonl")
    plots = write_plots(run_dir, prompt_id=prompt_id)
    best, worst = pick_samples(load_rollouts(run_dir))
    cfg = run_dir / "config.toml"
    summary = _read_json(run_dir / "summary.json") or {}
    manifest = _read_json(run_dir / "manifest.json") or {}
    return render_page(
        "report.html.j2",
        run_dir / "report.html",
        title=f"mathrl run {run_dir.resolve().name}",
        acc=accuracy_view(summary, metrics),
        facts=run_facts(summary, manifest, read_toml(cfg), metrics),
        headline_plots=[inline_png(p) for p in headline_plots(metrics, run_dir / PLOTS_DIR)],
        summary=summary_rows(metrics),
        before_after=before_after_rows(run_dir, metrics),
        plots=[inline_png(p) for p in plots],
        step=best[0].get("step") if best else None,
        best=[sample_view(r) for r in best],
        worst=[sample_view(r) for r in worst],
        manifest=_manifest_rows(run_dir),
        config=cfg.read_text() if cfg.is_file() else "(no config.toml)",
        suite=_suite_view(run_dir / "suite"),
    )


def _suite_view(suite_dir: Path) -> dict[str, Any] | None:
    """The eval suite a run ended with (eval.suite), as a table and its plot."""
    from mathrl.eval.suite import hints, table_rows

    table = _read_json(suite_dir / "suite.json")
    if table is None:
        return None
    header, rows = table_rows(table)
    png = suite_dir / "suite.png"
    return {
        "name": table["suite"],
        "header": header,
        "rows": rows,
        "hints": hints(table),
        "plot": [inline_png(png)] if png.is_file() else [],
    }


# ---------------------------------------------------------------- comparing two runs


def _run_labels(run_a: Path, run_b: Path) -> tuple[str, str]:
    a, b = run_a.resolve().name, run_b.resolve().name
    return (f"A: {a}", f"B: {b}") if a == b else (a, b)


def overlay_plot(
    runs: list[tuple[str, list[dict[str, Any]]]], keys: list[str], title: str, path: Path
) -> Path:
    """One subplot per key, one curve per run."""
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(4.8 * ncols, 3.3 * nrows))
    for n, key in enumerate(keys, start=1):
        ax = fig.add_subplot(nrows, ncols, n)
        for label, metrics in runs:
            draw_series(ax, *series(metrics, key), label=label)
        ax.set_title(key, fontsize=9)
        style_axes(ax)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def compare_runs(run_a: str | Path, run_b: str | Path, out_dir: str | Path) -> list[Path]:
    """Overlay the curves both runs logged (one PNG per key prefix) plus out_dir/compare.html."""
    run_a, run_b, out_dir = Path(run_a), Path(run_b), Path(out_dir)
    ma, mb = load_metrics(run_a / "metrics.jsonl"), load_metrics(run_b / "metrics.jsonl")
    common = sorted(set(numeric_keys(ma)) & set(numeric_keys(mb)))
    if not common:
        raise MathrlError(f"{run_a} and {run_b} have no metric key in common to compare")
    label_a, label_b = _run_labels(run_a, run_b)
    groups: dict[str, list[str]] = {}
    for key in common:
        groups.setdefault(key.split("/")[0], []).append(key)
    runs = [(label_a, ma), (label_b, mb)]
    paths = [
        overlay_plot(runs, keys, f"{prefix}/*", out_dir / f"compare_{safe_name(prefix)}.png")
        for prefix, keys in groups.items()
    ]
    rows = [[k, series(ma, k)[1][-1], series(mb, k)[1][-1]] for k in common]
    html = render_page(
        "compare.html.j2",
        out_dir / "compare.html",
        title=f"mathrl compare: {label_a} vs {label_b}",
        label_a=label_a,
        label_b=label_b,
        rows=rows,
        plots=[inline_png(p) for p in paths],
    )
    return [*paths, html]
