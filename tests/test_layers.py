"""The package's layers: imports go one way, downward, and no two modules import each other.

The table below is the architecture (README "Layout"): a module may import from its own
layer or any layer below, never above. Parsed with ast, so nothing is imported; function-
local and TYPE_CHECKING imports count like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "mathrl"

LAYERS: list[set[str]] = [
    {"__init__", "errors", "io", "registry", "mlx_blas"},  # no torch; imported by everything
    {"algorithms", "rewards", "tasks"},  # pure: tensors in/out; text in, reward out
    {"models", "rollout"},  # load models, log-probs; sampling engines
    {"config"},  # the typed config; its choices come from the registries below
    {
        "loggers",
        "trackers",
        "checkpoint",
        "policy",
        "model_source",
        "run_setup",
        "shards",
        "stopping",
        "dist",
        "fsdp",
    },  # plumbing
    {
        "data",
        "curriculum",
        "groups",
    },  # prompts, splits, the curriculum; groups scored through the reward pool
    {
        "rl",
        "backends",
        "eval",
        "report",
    },  # one train step; metrics, evaluate, probe; plots, summary
    {"trainer", "sft", "warmup", "expert_iter", "buffer_rl", "distill"},  # the loops
    {"runs"},  # start / resume / finish a run
    {"serve"},  # the OpenAI-compatible HTTP server on the rollout engine
    {"cli", "__main__", "api"},  # thin commands; the same as Python functions
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = ["mathrl", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    """mathrl modules `path` imports (`from mathrl.x import y` counts y when it is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("mathrl")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "mathrl" or base.startswith("mathrl."):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    return {m for m in found if m in MODULES}


MODULES = {module_name(p): p for p in SRC.rglob("*.py")}
GRAPH = {name: imports_of(path, name) - {name} for name, path in MODULES.items()}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    missing = sorted({unit(m) for m in MODULES} - LAYER.keys())
    assert not missing, f"add these to LAYERS in tests/test_layers.py: {missing}"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{a} (layer {LAYER[unit(a)]}) imports {b} (layer {LAYER[unit(b)]})"
        for a, deps in sorted(graph.items())
        for b in sorted(deps)
        if LAYER.get(unit(b), -1) > LAYER.get(unit(a), 99)
    ]


def test_imports_point_downward():
    upward = upward_imports(GRAPH)
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 on the DFS stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle or [])
    units: dict[str, set[str]] = {}
    for a, deps in GRAPH.items():
        units.setdefault(unit(a), set()).update(unit(b) for b in deps if unit(b) != unit(a))
    cycle = find_cycle(units)
    assert cycle is None, "between packages: " + " -> ".join(cycle or [])


def test_the_checker_catches_what_it_should(tmp_path):
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert upward_imports({"mathrl.rewards.x": {"mathrl.config"}}) == [
        "mathrl.rewards.x (layer 1) imports mathrl.config (layer 3)"
    ]
    assert upward_imports({"mathrl.trainer": {"mathrl.rl.step", "mathrl.trainer"}}) == []
    fake = tmp_path / "fake.py"
    fake.write_text(
        "import os\nimport mathrl.io\nfrom mathrl.rl import state\nfrom . import step\n"
        "def f():\n    from mathrl.cli import main\n"
    )
    assert imports_of(fake, "mathrl.rl.fake") == {
        "mathrl.io",
        "mathrl.rl",
        "mathrl.rl.state",
        "mathrl.rl.step",
        "mathrl.cli",
    }
