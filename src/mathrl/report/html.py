"""One self-contained HTML report per run (plots inlined as data URIs), and run-vs-run overlays.

Everything that comes from the run directory is HTML-escaped: completions are untrusted
model output, and config values or prompt ids can hold any text.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from mathrl.errors import DataError, MathrlError
from mathrl.report.plots import (
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
CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-family:monospace}
pre{background:#f7f7f7;padding:.6em;overflow:auto;max-height:28em;white-space:pre-wrap}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}
.sample{border:1px solid #ddd;padding:.5em .8em;margin:.6em 0}.muted{color:#777}
"""


# ---------------------------------------------------------------- small HTML helpers


def fmt(value: Any) -> str:
    """A metric value as short text (4 significant digits for floats)."""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def html_table(headers: list[str], rows: list[list[Any]]) -> str:
    """An HTML table; every cell is escaped, numbers are right-aligned."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(fmt(c))}</td>'
            if isinstance(c, int | float) and not isinstance(c, bool)
            else f"<td>{escape(fmt(c))}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def img_tag(path: Path) -> str:
    """A PNG inlined as a base64 data URI."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{escape(path.stem)}" src="data:image/png;base64,{data}">'


def page(title: str, sections: list[str]) -> str:
    """A complete HTML page with inline CSS and no external resources."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
        f'<h1>{escape(title)}</h1><p class="muted">generated {stamp} by mathrl report</p>'
        + "\n".join(sections)
        + "</body></html>\n"
    )


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
        if key.endswith("_before_rl"):
            name = key.removesuffix("_before_rl")
            after = summary.get(f"{name}_after_rl")
            if isinstance(before, int | float) and isinstance(after, int | float):
                rows.append([f"{name} (summary.json)", before, after, after - before])
    for key in numeric_keys(metrics):
        if key.startswith("eval/"):
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


def sample_html(record: dict[str, Any]) -> str:
    """One completion with its prompt and score; every field escaped."""
    text = str(record.get("completion", ""))
    cut = f"\n[... {len(text) - MAX_CHARS} more characters]" if len(text) > MAX_CHARS else ""
    meta = [
        ["prompt_id", record.get("prompt_id")],
        ["reward", record.get("reward")],
        ["correct", record.get("correct")],
        ["pred", record.get("pred")],
        ["gold", record.get("gold")],
        ["components", json.dumps(record["reward_components"], sort_keys=True)]
        if record.get("reward_components") is not None
        else ["components", None],
        ["finish_reason", record.get("finish_reason")],
    ]
    meta = [row for row in meta if row[1] is not None]
    return (
        f'<div class="sample">{html_table(["field", "value"], meta)}'
        f"<p><b>prompt</b></p><pre>{escape(_prompt_text(record))}</pre>"
        f"<p><b>completion</b></p><pre>{escape(text[:MAX_CHARS] + cut)}</pre></div>"
    )


def _samples_section(rollouts: list[dict[str, Any]]) -> str:
    best, worst = pick_samples(rollouts)
    if not best:
        return '<h2>Samples</h2><p class="muted">no rollouts.jsonl in this run</p>'
    step = best[0].get("step")
    parts = [f"<h2>Samples (step {escape(str(step))})</h2><h3>Highest reward</h3>"]
    parts += [sample_html(r) for r in best]
    parts.append("<h3>Lowest reward</h3>")
    parts += [sample_html(r) for r in worst] or ['<p class="muted">(no more samples)</p>']
    return "".join(parts)


def _config_sections(run_dir: Path) -> list[str]:
    cfg = run_dir / "config.toml"
    text = cfg.read_text() if cfg.is_file() else "(no config.toml)"
    manifest = _read_json(run_dir / "manifest.json")
    rows = [[k, v] for k, v in flatten(manifest)] if manifest else [["(no manifest.json)", ""]]
    return [
        "<h2>Manifest</h2>" + html_table(["key", "value"], rows),
        f"<h2>Config</h2><pre>{escape(text)}</pre>",
    ]


def write_report(run_dir: str | Path, prompt_id: str | None = None) -> Path:
    """Write plots and RUN/report.html (self-contained: images inlined); returns its path."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir / "metrics.jsonl")
    plots = write_plots(run_dir, prompt_id=prompt_id)
    rollouts = load_rollouts(run_dir)
    sections = [
        "<h2>Summary (first vs last logged value)</h2>"
        + html_table(["metric", "first @ step", "last @ step", "change"], summary_rows(metrics))
    ]
    before_after = before_after_rows(run_dir, metrics)
    if before_after:
        sections.append(
            "<h2>Before / after</h2>"
            + html_table(["metric", "before", "after", "change"], before_after)
        )
    sections.append("<h2>Plots</h2>" + "".join(img_tag(p) for p in plots))
    sections.append(_samples_section(rollouts))
    sections += _config_sections(run_dir)
    out = run_dir / "report.html"
    out.write_text(page(f"mathrl run {run_dir.resolve().name}", sections), encoding="utf-8")
    return out


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
    sections = [
        "<h2>Last logged value</h2>" + html_table(["metric", label_a, label_b], rows),
        "<h2>Curves</h2>" + "".join(img_tag(p) for p in paths),
    ]
    html = out_dir / "compare.html"
    html.write_text(page(f"mathrl compare: {label_a} vs {label_b}", sections), encoding="utf-8")
    return [*paths, html]
