"""The shipped config presets (mathrl/presets/**/*.toml), found by name as well as by path.

`-c countdown/smoke` works from any directory once mathrl is installed: the presets are
package data. In a checkout `configs/` is a symlink to them, so `configs/...` paths work too.
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

from mathrl.errors import ConfigError

SUFFIX = ".toml"
_extracted = contextlib.ExitStack()  # presets copied out of a zipped install, kept until exit
atexit.register(_extracted.close)


def _root() -> Traversable:
    return resources.files("mathrl") / "presets"


def _walk(node: Traversable, prefix: str) -> list[str]:
    names = []
    for child in node.iterdir():
        if child.is_dir():
            names += _walk(child, f"{prefix}{child.name}/")
        elif child.name.endswith(SUFFIX):
            names.append(prefix + child.name[: -len(SUFFIX)])
    return names


def list_presets() -> list[str]:
    """Names of the shipped presets, e.g. ['countdown/medium', ..., 'quickstart']."""
    return sorted(_walk(_root(), ""))


def preset_path(name: str) -> Path:
    """The file of preset `name` (no suffix); a real path even from a zipped install."""
    node = _root().joinpath(*f"{name}{SUFFIX}".split("/"))
    if isinstance(node, Path):
        return node
    return _extracted.enter_context(resources.as_file(node))


def _preset_name(value: str) -> str:
    """'configs/countdown/smoke.toml', './countdown/smoke' -> 'countdown/smoke'."""
    parts = [p for p in PurePosixPath(value.replace("\\", "/")).parts if p not in (".", "")]
    if parts and parts[0] == "configs":
        parts = parts[1:]
    name = "/".join(parts)
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def resolve_config(value: str | Path) -> Path:
    """An existing file wins; otherwise a preset name (with or without .toml or configs/)."""
    if Path(value).is_file():
        return Path(value)
    names = list_presets()
    name = _preset_name(str(value))
    if name in names:
        return preset_path(name)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(
        f"Config file not found: {value}, nor is it a preset{hint}; "
        f"presets: {', '.join(names)} (`mathrl config presets` describes them)"
    )


def describe(name: str) -> str:
    """The first comment line of a preset's file, without the '#'."""
    for line in preset_path(name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""
