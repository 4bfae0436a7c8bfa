"""Registries: one table of names per kind of thing (probes, strategies, backends, methods, modes,
tasks), owned by the package that implements them and read by the CLI choices, the pipeline's
config check and the generated docs.

>>> colours = Registry("colour")
>>> @colours.register("red", help="warm")
... def red(): return "#f00"
>>> colours.names(), colours.get("red")()
(('red',), '#f00')
>>> colours.get("blue")
Traceback (most recent call last):
...
prunescope.core.errors.PrunescopeError: unknown colour 'blue': choose one of red
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prunescope.core.errors import PrunescopeError


_DECORATE = object()  # register() without an object: used as a decorator


class Registry:
    """Names -> objects, in registration order, each with a one-line help text."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, Any] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, obj: Any = _DECORATE, *, help: str = "") -> Any:
        """``registry.register("x", obj)``, or as a decorator ``@registry.register("x")``."""
        def add(o):
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._items[name], self._help[name] = o, help
            return o

        return add if obj is _DECORATE else add(obj)

    def get(self, name: str) -> Any:
        if name not in self._items:
            raise PrunescopeError(f"unknown {self.what} {name!r}: choose one of {', '.join(self._items)}")
        return self._items[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def help(self, name: str) -> str:
        return self._help[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, name: str) -> Any:
        return self._items[name]

    def items(self):
        return self._items.items()

    def keys(self):
        return self._items.keys()

    def values(self):
        return self._items.values()
