"""The docs stay true: the layout tables name the layer test's units, README's links resolve,
README stays short, and the config reference page is `mathrl config keys`.

Broken links inside docs/ are `mkdocs build --strict`'s job (`make lint`).
"""

from __future__ import annotations

import ast
import html
import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
LAYOUT_PAGES = [REPO / "docs" / "layout.md", README]
HOOK = REPO / "docs" / "hooks" / "config_reference.py"


def layers_of_the_layer_test() -> list[set[str]]:
    """`LAYERS` of tests/test_layers.py, read with ast (a literal list of set literals)."""
    tree = ast.parse((REPO / "tests" / "test_layers.py").read_text(encoding="utf-8"))
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == "LAYERS" and node.value is not None:
            return ast.literal_eval(node.value)
    raise AssertionError("tests/test_layers.py defines no LAYERS literal")


def layout_table(text: str) -> list[set[str]]:
    """The units of each row of the first `| layer | units | ... |` table, in layer order."""
    rows: list[set[str]] = []
    in_table = False
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_table:
            in_table = line.startswith("|") and cells[:2] == ["layer", "units"]
            continue
        if not line.startswith("|"):
            break
        if set(cells[0]) <= set("-: "):  # the |---| line
            continue
        assert cells[0] == str(len(rows)), f"layer rows out of order at {line!r}"
        rows.append({name.rstrip("/") for name in re.findall(r"`([^`]+)`", cells[1])})
    return rows


def differences(table: list[set[str]], layers: list[set[str]]) -> list[str]:
    out = []
    for i in range(max(len(table), len(layers))):
        have = table[i] if i < len(table) else set()
        want = layers[i] if i < len(layers) else set()
        if have != want:
            out.append(
                f"layer {i}: missing {sorted(want - have)}, not in LAYERS {sorted(have - want)}"
            )
    return out


@pytest.mark.parametrize("page", LAYOUT_PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_layout_table_names_the_layer_tests_units(page: Path):
    table = layout_table(page.read_text(encoding="utf-8"))
    assert table, f"{page.name} has no '| layer | units | ... |' table"
    diff = differences(table, layers_of_the_layer_test())
    where = page.relative_to(REPO)
    assert not diff, f"make {where}'s layout table name LAYERS' units:\n" + "\n".join(diff)


def test_the_layout_check_catches_a_difference():
    text = "| layer | units | what |\n|---|---|---|\n| 0 | `io` `rl/` | x |\n| 1 | `cli/` | y |\n"
    assert layout_table(text) == [{"io", "rl"}, {"cli"}]
    assert differences(layout_table(text), [{"io", "rl"}, {"cli"}]) == []
    assert differences(layout_table(text), [{"io"}, {"cli", "backends"}]) == [
        "layer 0: missing [], not in LAYERS ['rl']",
        "layer 1: missing ['backends'], not in LAYERS []",
    ]
    assert differences(layout_table(text), [{"io", "rl"}, {"cli"}, {"serve"}]) == [
        "layer 2: missing ['serve'], not in LAYERS []"
    ]


def relative_links(markdown: str) -> list[str]:
    """Targets of [text](target) and ![alt](target) that point into the repository."""
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", markdown)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


def test_every_relative_link_in_readme_exists():
    links = relative_links(README.read_text(encoding="utf-8"))
    assert len(links) > 10
    missing = [t for t in links if not (REPO / t.split("#")[0]).exists()]
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_relative_links_parser():
    text = "[a](docs/x.md) ![p](docs/p.png) [b](https://e.org) [c](#top) [d](docs/y.md#sec)"
    assert relative_links(text) == ["docs/x.md", "docs/p.png", "docs/y.md#sec"]


def test_readme_is_a_short_page_that_says_how_to_test():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 260
    assert "make quickstart" in text and "make test" in text


def test_config_reference_page_is_the_text_of_mathrl_config_keys(run_cli):
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("config_reference", HOOK)
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    page = html.unescape(re.sub(r"<[^>]+>", "", hook.config_reference_markdown()))
    res = run_cli("config", "keys")
    assert res.code == 0
    lines = [line.strip() for line in res.out.splitlines() if line.strip()]
    assert len(lines) > 100
    missing = [line for line in lines if line not in page]
    assert not missing, f"not on the generated page: {missing[:5]}"
