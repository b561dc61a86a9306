"""Resolving a Config: defaults < config file < MATHRL_CONFIG file < --set a.b=value.

Files (TOML or YAML) and --set strings become a flat {dotted key: value} dict; each
value is coerced to its field's type, then `build` makes the (validated) Config.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from mathrl.config.presets import resolve_config
from mathrl.config.schema import Config, field_docs
from mathrl.config.validate import REGISTRY_CHOICES
from mathrl.errors import ConfigError

ENV_CONFIG = "MATHRL_CONFIG"
"""Environment variable naming a config file applied after --config, before --set."""


# ---------------------------------------------------------------- introspection


def iter_keys(cls: type = Config, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """Every leaf key as (dotted name, type, default, doc); registry keys list their names."""
    out = []
    hints = typing.get_type_hints(cls)
    default_obj = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = prefix + f.name
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += iter_keys(tp, name + ".")
            continue
        doc = field_docs(cls).get(f.name, "")
        if name in REGISTRY_CHOICES:
            doc += f" One of: {', '.join(REGISTRY_CHOICES[name].names())}."
        out.append((name, tp, getattr(default_obj, f.name), doc))
    return out


def type_name(tp: Any) -> str:
    """Readable type name for messages: int, float, list[int], str | None ..."""
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


# ---------------------------------------------------------------- coercion


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Coerce a TOML/YAML value or a --set string to the field's type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            if type(None) in args:
                return None
            raise _coerce_error(value, tp, key)
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if dataclasses.is_dataclass(item_tp):
            return [_to_record(v, item_tp, key) for v in _table_items(value, key)]
        return [_coerce(v, item_tp, key) for v in _list_items(value)]
    result = _SCALARS[tp](value) if tp in _SCALARS else None
    if result is None:
        raise _coerce_error(value, tp, key)
    return result


def _coerce_error(value: Any, tp: Any, key: str) -> ConfigError:
    return ConfigError(f"Failed to coerce {value!r} for {key} ({type_name(tp)})")


def _table_items(value: Any, key: str) -> list[Any]:
    """Tables from a TOML/YAML list of tables, one table, or a TOML inline value string
    (`--set 'task.rewards=[{fn = "pkg.mod:f", weight = 0.5}]'`)."""
    if isinstance(value, str):
        try:
            value = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"{key} expects a TOML array of inline tables, e.g. "
                f'[{{fn = "pkg.module:name", weight = 0.5}}] ({str(exc).splitlines()[0]})'
            ) from None
    return list(value) if isinstance(value, list | tuple) else [value]


def _to_record(value: Any, tp: Any, key: str) -> Any:
    """One table -> the dataclass `tp`, each field coerced; unknown or missing keys name it."""
    if dataclasses.is_dataclass(value) and isinstance(value, tp):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{key} entries must be tables like {{fn = ...}}, got {value!r}")
    hints = typing.get_type_hints(tp)
    fields = {f.name: f for f in dataclasses.fields(tp)}
    for name in value:
        if name not in fields:
            hint = difflib.get_close_matches(str(name), list(fields), n=1, cutoff=0.6)
            tip = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"Unknown key '{name}' in {key}{tip}; keys: {', '.join(fields)}")
    for name, f in fields.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in value:
            raise ConfigError(f"{key} entry {value!r} lacks '{name}'")
    return tp(**{k: _coerce(v, hints[k], f"{key}.{k}") for k, v in value.items()})


def _list_items(value: Any) -> list[Any]:
    """A list from a TOML/YAML list, a scalar, or a string like `[1, 4]` or `1,4`."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        return [s.strip().strip("'\"") for s in text.split(",") if s.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if not isinstance(value, str):
        return None
    try:
        return int(value.strip().replace("_", ""))
    except ValueError:
        number = _to_float(value)  # "1e3" is an int, "2.5" is not
    return int(number) if number is not None and number.is_integer() else None


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _to_str(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


# field type -> converter returning None for a value it cannot take
_SCALARS: dict[Any, Any] = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


# ---------------------------------------------------------------- reading


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML or YAML file into a flat {dotted key: value} dict."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Config file not found: {path}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"Cannot parse config file {path}: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a table of settings")
    return _flatten(data)


def parse_set(items: list[str]) -> dict[str, str]:
    """Parse repeated `--set a.b=value` into a dict."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


def _apply(flat: dict[str, Any], values: dict[str, Any]) -> None:
    """Coerce `values` to their fields' types into `flat`; unknown keys suggest a near one."""
    known = {k: tp for k, tp, _, _ in iter_keys()}
    for key, value in values.items():
        if key not in known:
            hint = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            tip = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise ConfigError(f"Unknown config key '{key}'{tip}")
        flat[key] = _coerce(value, known[key], key)


# ---------------------------------------------------------------- building


def build(flat: dict[str, Any]) -> Config:
    """Build a validated Config from a flat {dotted key: typed value} dict."""

    def make(cls: type, prefix: str) -> Any:
        kwargs = {}
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            key = prefix + f.name
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                kwargs[f.name] = make(tp, key + ".")
            elif key in flat:
                kwargs[f.name] = flat[key]
        return cls(**kwargs)

    config: Config = make(Config, "")
    return config


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    env: bool = True,
    base: Config | None = None,
) -> Config:
    """Resolve the config: defaults < file (or preset name) < MATHRL_CONFIG file < --set.

    `base`, a Config object (the Python API), takes the file's place; the result is a new
    validated Config, `base` is not changed.
    """
    flat: dict[str, Any] = {}
    if base is not None:
        _apply(flat, _flatten(dataclasses.asdict(base)))
    if path is not None:
        _apply(flat, read_config_file(resolve_config(path)))
    env_path = os.environ.get(ENV_CONFIG) if env else None
    if env_path:
        _apply(flat, read_config_file(env_path))
    _apply(flat, parse_set(overrides or []))
    return build(flat)
