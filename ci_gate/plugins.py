"""One-module plug-ins behind a registry (report formats, pool sources): a package names its
modules in order, and each module defines one object with a ``name`` under an agreed attribute."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Protocol, TypeVar


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


def registered(package: str, modules: Iterable[str], attr: str, kind: type[T]) -> dict[str, T]:
    """``attr`` of each listed module of ``package`` by its name, in the listed order."""
    found: dict[str, T] = {}
    for module in modules:
        entry = getattr(importlib.import_module(f"{package}.{module}"), attr)
        if not isinstance(entry, kind):
            raise TypeError(f"{package}.{module}.{attr} is not a {kind.__name__}")
        if entry.name in found:  # two modules claiming one name: the later would silently win
            raise ValueError(f"{package}.{module}: {kind.__name__} name {entry.name!r} is taken")
        found[entry.name] = entry
    return found
