"""A tiny name -> object registry: a new variant is a function plus a decorator.

The registries (advantage estimators, policy losses, reward schemes, prompt styles,
rollout engines, ...) are the only lists of names: the config reads its choices from
them. Torch-free, so every layer can hold one.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from mathrl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps config names to objects; `kind` names the registry in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register `item` as `name`; a duplicate name is a programming error."""
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""

        def deco(item: T) -> T:
            return self.add(name, item)

        return deco

    def remove(self, name: str) -> T:
        """Unregister `name` (tests that add a throwaway entry clean up with this)."""
        return self._items.pop(name)

    def get(self, name: str) -> T:
        """The object registered as `name`, or a ConfigError suggesting the closest name."""
        if name in self._items:
            return self._items[name]
        raise ConfigError(f"Unknown {self.kind} '{name}' ({self.hint(name)})")

    def hint(self, name: str) -> str:
        """A suggestion for an unknown name: the closest registered one, else all of them."""
        close = difflib.get_close_matches(name, self._items, n=1)
        return f"did you mean '{close[0]}'?" if close else f"choose from {', '.join(self.names())}"

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
