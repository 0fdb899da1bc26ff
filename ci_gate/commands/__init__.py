"""CLI commands, one module each. A module exposes ``register(app)``; list it here."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator

_MODULES = ("verify", "convert", "demo", "report", "github", "bench", "repair", "canary", "policy", "precommit", "export", "attest", "registry")


def registered_commands() -> Iterator[Callable]:
    for name in _MODULES:
        yield importlib.import_module(f"ci_gate.commands.{name}").register
