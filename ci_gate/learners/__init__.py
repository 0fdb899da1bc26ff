"""Prompt learners, one module each, behind a registry (as commands and attacks are).

A learner module defines one :class:`~ci_gate.learners.base.Learner` subclass and names it
``LEARNER``; list the module here. Everything that enumerates learner kinds (the checkpoint
format, ``ci-gate convert``, the result schema, the benchmark, the tests) reads this list, so
a new learner is its module plus one entry below.

The names are kept here as plain strings so that validating a checkpoint's metadata does not
import the learners (and torch) before it must.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ci_gate.learners.base import Learner

# kind -> (module under ci_gate.learners, importable from Dassl files by 'ci-gate convert');
# the flag is kept here rather than on the class so the CLI offers its choices without torch
_REGISTRY = {
    "coop": ("coop", True),
    "cocoop": ("cocoop", True),
    "zeroshot": ("zeroshot", False),
    "maple": ("maple", True),
}
KINDS: tuple[str, ...] = tuple(_REGISTRY)
DASSL_KINDS: tuple[str, ...] = tuple(k for k, (_, dassl) in _REGISTRY.items() if dassl)
LearnerKind = Literal[KINDS]  # type: ignore[valid-type]


def learner_class(kind: str) -> type["Learner"]:
    """The Learner subclass registered as ``kind`` (KeyError names the known kinds)."""
    if kind not in _REGISTRY:
        raise KeyError(f"unknown learner kind {kind!r} (known: {', '.join(KINDS)})")
    module = _REGISTRY[kind][0]
    cls = importlib.import_module(f"ci_gate.learners.{module}").LEARNER
    assert cls.kind == kind, f"ci_gate.learners.{module} registers {cls.kind!r}, listed as {kind!r}"
    return cls


def tuned_kinds() -> tuple[str, ...]:
    """Kinds that carry learned prompt tensors (everything but the hand-written zero-shot prompt)."""
    return tuple(k for k in KINDS if learner_class(k).tensors_required)
