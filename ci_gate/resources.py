"""Locate the bundled templates and policies, both in a checkout and in an installed wheel.

The wheel carries them under ``ci_gate/_data`` (see pyproject's force-include); an editable
install or a plain checkout finds them at the repository's top level.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundled folder {name!r} not found next to {_PKG}")


def templates_dir() -> Path:
    return data_dir("templates")


def policies_dir() -> Path:
    return data_dir("policies")


def bundled_policy_names() -> list[str]:
    return sorted(p.stem for p in policies_dir().glob("*.yaml"))


def bundled_policy(name: str) -> Path | None:
    """The bundled policy called ``name`` (``strict``), or None; only names from the listing,
    so a name like ``../x`` never reaches the file system."""
    return policies_dir() / f"{name}.yaml" if name in bundled_policy_names() else None
