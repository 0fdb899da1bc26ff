"""Where an OOD pool's images come from, one module per kind of source. A module defines
``SOURCE`` (a :class:`~ci_gate.pool_sources.base.PoolSource`); list it in ``_MODULES``.

A source claims the specs it reads (claims are disjoint: a folder, a glob, a tar file) and opens
one into a :class:`~ci_gate.pool_sources.base.Listing`: the entries' names, without their bytes,
and a ``read`` for one entry. :func:`ci_gate.pool.load_pool` sorts the names, picks with a seeded
permutation and reads only what it keeps, whatever the source; decoding and the checks on the
pixels (ci_gate/pool.py) are the same for every source.
"""

from __future__ import annotations

from pathlib import Path

from ci_gate.errors import InputError
from ci_gate.plugins import registered
from ci_gate.pool_sources.base import IMAGE_SUFFIXES, MAX_FILE_BYTES, NOT_FOUND, Entry, Listing, PoolSource, Skipped, display_name

_MODULES = ("folder", "glob_pattern", "tar_archive")

NOT_A_POOL = "pool must be a folder, a glob or a .tar of images"

__all__ = ["IMAGE_SUFFIXES", "MAX_FILE_BYTES", "NOT_A_POOL", "NOT_FOUND", "Entry", "Listing", "PoolSource", "display_name", "open_source", "pool_sources"]


def pool_sources() -> dict[str, PoolSource]:
    """Every registered source by name, in registry order."""
    return registered(__name__, _MODULES, "SOURCE", PoolSource)


def open_source(spec: str, skipped: Skipped) -> Listing:
    """The listing of the one source that claims ``spec``; InputError naming it when none does."""
    for source in pool_sources().values():
        if source.claims(spec):
            return source.open(spec, skipped)
    if Path(spec).is_file():
        raise InputError(display_name(spec), NOT_A_POOL)
    raise InputError(display_name(spec), NOT_FOUND)
