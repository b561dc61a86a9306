"""A tiny name -> function registry, so a new variant is a function plus a decorator."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from mathrl.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


class Registry(Generic[F]):
    """Maps config names to functions; `kind` names the registry in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._fns: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator adding `fn` under `name`; a duplicate name is a programming error."""

        def deco(fn: F) -> F:
            if name in self._fns:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._fns[name] = fn
            return fn

        return deco

    def get(self, name: str) -> F:
        """The function registered as `name`, or a ConfigError suggesting the closest name."""
        if name in self._fns:
            return self._fns[name]
        close = difflib.get_close_matches(name, self._fns, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose from {', '.join(self.names())}"
        raise ConfigError(f"Unknown {self.kind} '{name}' ({hint})")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._fns)

    def __contains__(self, name: object) -> bool:
        return name in self._fns

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
