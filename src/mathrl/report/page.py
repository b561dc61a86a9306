"""The pages of mathrl report: jinja2 templates (module-level strings) and how they render.

Templates render with autoescape on: everything from a run directory is untrusted (completions
are model output; config values, metric keys and prompt ids can hold any text), so no value
reaches the page unescaped. Images are inlined as data URIs, so a page is one file that needs
no network.
"""

from __future__ import annotations

import base64
import math
import struct
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2

# ---------------------------------------------------------------- templates

PAGE = """\
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title><style>
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}
h1{font-size:1.5em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em}
th{background:#f4f4f4;text-align:left}td.num{text-align:right;font-family:monospace}
pre{background:#f7f7f7;padding:.6em;overflow:auto;max-height:28em;white-space:pre-wrap}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0}
.sample{border:1px solid #ddd;padding:.5em .8em;margin:.6em 0}.muted{color:#777}
.headline{display:flex;flex-wrap:wrap;justify-content:space-between;gap:1em 3em;
 border:1px solid #ddd;border-radius:6px;padding:.8em 1.2em;background:#fafafa}
.acc .big{font-size:2.2em;font-weight:600;margin:.15em 0}
.gain{font-size:.55em;padding:.1em .45em;border-radius:4px;vertical-align:middle}
.gain.up{background:#e2f3e5;color:#17692b}.gain.down{background:#fbe3e3;color:#a11}
.gain.flat{background:#eee;color:#555}
.facts{display:grid;grid-template-columns:auto auto;gap:.15em 1.2em;margin:0;align-content:center}
.facts dt{color:#666}.facts dd{margin:0;font-weight:600}
.grid4{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:8px;
 margin-top:.8em}
.grid4 img{width:100%;margin:0}
details{margin-top:1.2em}summary{cursor:pointer;font-weight:600;font-size:1.1em}
</style></head><body>
<h1>{{ title }}</h1><p class="muted">generated {{ generated }} by mathrl report</p>
{% block body %}{% endblock %}
</body></html>
"""

# Numbers get class="num" (right-aligned); `fmt` shortens floats; cells sit on one line.
MACROS = """\
{% macro table(headers, rows) -%}
<table><tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr>
{%- for row in rows %}<tr>
{%- for c in row %}<td{% if c is numeric %} class="num"{% endif %}>{{ c | fmt }}</td>{% endfor -%}
</tr>{% endfor %}</table>
{%- endmacro %}
{% macro images(pngs) -%}
{% for png in pngs %}<img alt="{{ png.alt }}" width="{{ png.width }}" height="{{ png.height }}" \
src="data:image/png;base64,{{ png.data }}">{% endfor %}
{%- endmacro %}
{% macro sample(s) -%}
<div class="sample">{{ table(["field", "value"], s.meta) }}
<p><b>prompt</b></p><pre>{{ s.prompt }}</pre>
<p><b>completion</b></p><pre>{{ s.completion }}</pre></div>
{%- endmacro %}
"""

REPORT = """\
{% extends "page.html.j2" %}
{% block body %}
{% from "macros.html.j2" import table, images, sample %}
<section class="headline">
<div class="acc">
<div>Held-out accuracy, greedy pass@1{% if acc.where %} ({{ acc.where }}){% endif %}</div>
<div class="big">{{ acc.before }} &rarr; {{ acc.after }}
<span class="gain {{ acc.sign }}">{{ acc.gain }}</span></div>
{% for note in acc.notes %}<div class="muted">{{ note }}</div>{% endfor %}</div>
<dl class="facts">
{% for label, value in facts %}<dt>{{ label }}</dt><dd>{{ value }}</dd>{% endfor %}
</dl>
</section>
{% if headline_plots %}<div class="grid4">{{ images(headline_plots) }}</div>{% endif %}
<details><summary>All {{ summary | length }} logged metrics (first vs last value)</summary>
{{ table(["metric", "first @ step", "last @ step", "change"], summary) }}
</details>
{% if before_after %}
<h2>Before / after</h2>
{{ table(["metric", "before", "after", "change"], before_after) }}
{% endif %}
{% if suite %}
<h2>Eval suite '{{ suite.name }}' (greedy pass@1, strict [95% CI] / lenient; avg@n and pass@k first where a row samples)</h2>
{{ table(suite.header, suite.rows) }}
{% for line in suite.hints %}<p>n/a {{ line }}</p>{% endfor %}
{{ images(suite.plot) }}
{% endif %}
<h2>All plots</h2>
{{ images(plots) }}
{% if best %}
<h2>Samples (step {{ step }})</h2>
<h3>Highest reward</h3>
{% for s in best %}{{ sample(s) }}{% endfor %}
<h3>Lowest reward</h3>
{% for s in worst %}{{ sample(s) }}{% else %}<p class="muted">(no more samples)</p>{% endfor %}
{% else %}
<h2>Samples</h2><p class="muted">no rollouts.jsonl in this run</p>
{% endif %}
<h2>Manifest</h2>
{{ table(["key", "value"], manifest) }}
<h2>Config</h2>
<pre>{{ config }}</pre>
{% endblock %}
"""

COMPARE = """\
{% extends "page.html.j2" %}
{% block body %}
{% from "macros.html.j2" import table, images %}
<h2>Last logged value</h2>
{{ table(["metric", label_a, label_b], rows) }}
<h2>Curves</h2>
{{ images(plots) }}
{% endblock %}
"""

TEMPLATES = {
    "page.html.j2": PAGE,
    "macros.html.j2": MACROS,
    "report.html.j2": REPORT,
    "compare.html.j2": COMPARE,
}


def fmt(value: Any) -> str:
    """A metric value as short text (4 significant digits for floats)."""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return "" if value is None else str(value)


def _is_numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.DictLoader(TEMPLATES),
        autoescape=True,  # every {{ value }} is HTML-escaped unless it is a macro's output
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.tests["numeric"] = _is_numeric
    return env


ENV = _environment()


def render_page(template: str, path: Path, title: str, **context: Any) -> Path:
    """Render one template of TEMPLATES into the self-contained HTML file at path."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    html = ENV.get_template(template).render(title=title, generated=stamp, **context)
    path.write_text(html, encoding="utf-8")
    return path


def inline_png(path: Path) -> dict[str, Any]:
    """alt text, base64 data and pixel size of a PNG, for an <img> with a data URI.

    The size (from the PNG's IHDR header) goes into width/height, so the page lays out
    before the images decode and nothing below them moves.
    """
    raw = path.read_bytes()
    width, height = struct.unpack(">II", raw[16:24])
    return {
        "alt": path.stem,
        "data": base64.b64encode(raw).decode("ascii"),
        "width": width,
        "height": height,
    }
