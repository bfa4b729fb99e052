"""Name -> builder registries for backbones, scenarios and methods (mammoth-style)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from moecl.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of builders filled by the ``@register(name)`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        """Register the decorated builder under each of ``names`` (one builder may serve variants)."""

        def decorate(item: T) -> T:
            for name in names:
                if name in self._items:
                    raise ValueError(f"{self.kind} {name!r} is registered twice")
                self._items[name] = item
            return item

        return decorate

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(
                f"{self.kind}={name!r} is not a known {self.kind}; available: {', '.join(self.names())}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
