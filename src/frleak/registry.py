"""Registries: a dict + a decorator + ``create(name)``, as timm does for models.

Every pluggable family (backbones, margin heads, attacks, defenses, generators) has one registry. Modules that
define members register them at import time; a registry knows which modules to import before its first look-up,
so ``frleak list`` and ``create`` see every member without import-order games and without if/elif chains.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from frleak.errors import ConfigError

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Named factories of one kind.

    >>> reg: Registry = Registry("widget")
    >>> @reg.register("square")
    ... def square(side: int = 2) -> int:
    ...     return side * side
    >>> reg.create("square", side=3)
    9
    """

    def __init__(self, kind: str, modules: Iterable[str] = ()) -> None:
        self.kind = kind
        self._modules = tuple(modules)
        self._loaded = False
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"cannot infer a {self.kind} name for {obj!r}")
            if key in self._entries and self._entries[key] is not obj:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            return obj

        return decorator

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}"
            ) from None

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def describe(self) -> dict[str, str]:
        """Name -> first docstring line, for ``frleak list``."""
        self._load()
        out = {}
        for key in sorted(self._entries):
            doc = (getattr(self._entries[key], "__doc__", None) or "").strip().splitlines()
            out[key] = doc[0] if doc else ""
        return out


BACKBONES: Registry[Any] = Registry("backbone", ["frleak.models.iresnet", "frleak.models.mobilefacenet",
                                                 "frleak.models.tiny"])
HEADS: Registry[Any] = Registry("margin head", ["frleak.models.heads"])
ATTACKS: Registry[Any] = Registry("attack", ["frleak.attacks.paper", "frleak.attacks.stronger",
                                             "frleak.attacks.baselines"])
DEFENSES: Registry[Any] = Registry("defense", ["frleak.defenses"])
GENERATORS: Registry[Any] = Registry("generator", ["frleak.generators.dcgan", "frleak.generators.stylegan2"])
