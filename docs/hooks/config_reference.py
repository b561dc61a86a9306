"""mkdocs hook: pages built from sources outside docs/, at build time, so they cannot drift.

- `reference/config.md`: every config key with its type, default and meaning, rendered from
  the config dataclasses by `mathrl.config.iter_keys` (the text `mathrl config keys` prints).
- `benchmarks.md`: the repository's BENCHMARKS.md, as it is.
"""

from __future__ import annotations

import html
import typing
from pathlib import Path

from mkdocs.structure.files import File, Files

from mathrl.config import Config, iter_keys, type_name

ROOT = Path(__file__).resolve().parents[2]

INTRO = """# Config reference

Every key of the config tree with its type, default and meaning, generated when the site is
built from the docstrings of the dataclasses in `src/mathrl/config/sections.py`: the same text
as `mathrl config keys`. Set a key in a TOML/YAML file (`[train]` then `lr = 1e-5`), through
`MATHRL_CONFIG`, or on the command line with `--set train.lr=1e-5`; see
[Configs](../configs.md) for the precedence and the presets.
"""


def section_doc(prefix: str) -> str:
    """Docstring of the dataclass that holds the keys under `prefix` ('' = the root)."""
    cls: typing.Any = Config
    for part in filter(None, prefix.split(".")):
        cls = typing.get_type_hints(cls)[part]
    doc = cls.__doc__ or ""
    return "" if doc.startswith(cls.__name__ + "(") else doc.strip()  # dataclass's own repr doc


def config_reference_markdown() -> str:
    """The page: one section per dataclass, one <dt>/<dd> per key (HTML, so no Markdown
    syntax inside a docstring changes what it says)."""
    groups: dict[str, list[tuple[str, typing.Any, typing.Any, str]]] = {}
    for key, tp, default, doc in iter_keys():
        groups.setdefault(key.rpartition(".")[0], []).append((key, tp, default, doc))
    out = [INTRO]
    for prefix, keys in groups.items():
        out.append(f"## {prefix or 'Top level'}\n")
        if doc := section_doc(prefix):
            out.append(html.escape(doc) + "\n")
        out.append("<dl>")
        for key, tp, default, doc in keys:
            head = html.escape(f"({type_name(tp)}, default {default!r})")
            out.append(f'<dt id="{key}"><code>{key}</code> {head}</dt>')
            out.append(f"<dd>{html.escape(doc)}</dd>")
        out.append("</dl>\n")
    return "\n".join(out)


def on_files(files: Files, config: typing.Any) -> Files:
    files.append(File.generated(config, "reference/config.md", content=config_reference_markdown()))
    benchmarks = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "benchmarks.md", content=benchmarks))
    return files
