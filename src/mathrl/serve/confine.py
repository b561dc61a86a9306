"""Every file `load_weights` may open must lie under the weights root.

A model dir is walked whole (subdirectories and symlinked ones too, each real directory
once) and every entry resolved (symlinks and `..`); a shard index (`*.index.json`) names
the files the loader will open, so each of those is resolved as well. Anything outside the
root is a 403, anything malformed a 400: a request never reaches the loader with a path
that leads out, and never gets a 500.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mathrl.serve.schemas import ApiError

MAX_FILES = 10_000
"""Entries a model dir may hold (a checkpoint has tens); more is refused, not walked."""
MAX_INDEX_BYTES = 16 << 20
"""A shard index is a few KiB to a few MiB of JSON."""


def outside_root() -> ApiError:
    return ApiError(
        403,
        "path is outside the weights root named at start-up",
        param="path",
        code="path_outside_root",
        type="permission_error",
    )


def not_a_model(message: str) -> ApiError:
    return ApiError(400, message, param="path", code="not_a_model")


def check_confined(source: Path, root: Path) -> None:
    """ApiError unless `source` and everything the loader may read from it lie under root."""
    if not source.resolve().is_relative_to(root):
        raise outside_root()
    if not source.is_dir():
        return
    for entry in _walk(source, root):
        if entry.name.endswith(".index.json") and entry.is_file():
            for name in _index_files(entry):
                if not (entry.parent / name).resolve().is_relative_to(root):
                    raise outside_root()


def _walk(top: Path, root: Path) -> list[Path]:
    """Every entry under `top`, each checked to resolve under root; symlinked directories
    are followed (they hold files the loader may read), each real directory once."""
    entries: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if not path.resolve().is_relative_to(root):
                raise outside_root()
            entries.append(path)
            if len(entries) > MAX_FILES:
                raise not_a_model(f"the model dir holds more than {MAX_FILES} files")
    return entries


def _index_files(index: Path) -> list[str]:
    """The shard files a `*.index.json` names (its weight_map's values)."""
    if index.stat().st_size > MAX_INDEX_BYTES:
        raise not_a_model(f"{index.name} is larger than {MAX_INDEX_BYTES} bytes")
    try:
        weight_map = json.loads(index.read_bytes()).get("weight_map", {})
    except (ValueError, RecursionError, AttributeError):
        raise not_a_model(f"{index.name} is not a JSON object") from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) and v and "\x00" not in v for v in weight_map.values()
    ):
        raise not_a_model(f"{index.name}: weight_map must map names to file names")
    return sorted(set(weight_map.values()))
