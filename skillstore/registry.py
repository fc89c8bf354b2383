"""A registry of configured instances, keyed by their ``name``: one type per extension point."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Generic, Protocol, TypeVar, overload, runtime_checkable

from .errors import ConfigError, unknown_name


@runtime_checkable
class Named(Protocol):
    """What every registry entry has: the name users write in configs, CLIs and manifests."""

    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)
D = TypeVar("D")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only name -> instance map built from a list of instances (mergekit's habit).

    ``registry[name]`` answers an unknown name with lm-eval's "did you mean" ConfigError
    rather than a bare KeyError, so ``in`` and ``get`` are answered directly here instead of
    through Mapping's KeyError-based defaults. Two entries with one name are refused when the
    registry is built: the second would silently shadow the first.
    """

    def __init__(self, kind: str, entries: Iterable[T]):
        self.kind = kind
        by_name: dict[str, T] = {}
        for entry in entries:
            name = entry.name
            if not isinstance(name, str) or not name:
                raise ConfigError(
                    f"A {kind} entry {entry!r} has no name; give it a non-empty `name`.")
            if name in by_name:
                raise ConfigError(f"Two {kind} entries are named {name!r} ({by_name[name]!r} and "
                                 f"{entry!r}); give each a distinct name.")
            by_name[name] = entry
        self._entries = MappingProxyType(by_name)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name(self.kind, name, list(self._entries)) from None

    def get_or_raise(self, name: str) -> T:
        """The entry called ``name``, or the "did you mean" ConfigError."""
        return self[name]

    @overload
    def get(self, name: str) -> T | None: ...

    @overload
    def get(self, name: str, default: D) -> T | D: ...

    def get(self, name, default=None):
        return self._entries.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, [{', '.join(self._entries)}])"
