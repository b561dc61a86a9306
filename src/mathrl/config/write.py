"""Writing a resolved Config: TOML for run directories (tomli-w) and a content hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import tomli_w

from mathrl.config.schema import Config


def _without_none(table: dict[str, Any]) -> dict[str, Any]:
    """The table without None values (TOML has no null; every optional key defaults to None,
    so leaving it out reads back as the same value)."""
    return {
        key: _without_none(value) if isinstance(value, dict) else value
        for key, value in table.items()
        if value is not None
    }


def config_table(cfg: Config) -> dict[str, Any]:
    """The config as nested dicts of plain values, None values left out."""
    return _without_none(dataclasses.asdict(cfg))


def dumps_toml(cfg: Config) -> str:
    """The resolved config as TOML; `load_config` of it gives an equal Config."""
    return tomli_w.dumps(config_table(cfg))


DISPLAY_ONLY = ("log",)
"""Sections that change no result (console output, progress, how often rollouts are
logged, W&B / TensorBoard): left out of config_hash, so a resume may change them."""


def config_hash(cfg: Config) -> str:
    """16 hex digits identifying the config's values that change results (every section but
    DISPLAY_ONLY's), independent of the TOML formatting; resume compares it."""
    table = {k: v for k, v in config_table(cfg).items() if k not in DISPLAY_ONLY}
    canonical = json.dumps(table, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
