"""What a scan reads, as one typed object shared by verify, repair, canary and the Python API.

Every command that scans builds its :class:`ScanInputs` here, from the same arguments (the CLI's
shared options, ci_gate/commands/options.py, or the API's keywords), so a flag such as
``--reference-weights`` means the same thing and reaches the scan the same way everywhere.
Nothing here imports torch: the CLI checks its inputs before any model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ci_gate.errors import InputError
from ci_gate.policy import Policy, apply_overrides, load_policy

PathLike = str | os.PathLike


@dataclass(frozen=True)
class ScanInputs:
    checkpoint: Path
    policy: Policy
    pool: str  # a pool spec, already resolved against the policy's pool.path
    policy_path: Path | None = None  # the policy file as reports name it (None: bundled or in memory)
    backbone_weights: Path | None = None
    # the published backbone for the clean reference (ref_* statistics) when the checkpoint
    # embeds its own: an encoder-level backdoor in the embedded tower would cancel out otherwise
    reference_weights: Path | None = None
    display_path: str | None = None  # how reports name the checkpoint (repository-relative in CI)

    @property
    def files(self) -> list[tuple[str, Path | None]]:
        """The input files no output may overwrite, named as errors name them."""
        return [("checkpoint", self.checkpoint), ("policy", self.policy_path), ("backbone weights", self.backbone_weights),
                ("reference weights", self.reference_weights)]

    @property
    def shown_path(self) -> str:
        return self.display_path or str(self.checkpoint)


def set_items(overrides: Mapping[str, Any]) -> list[str]:
    """Keyword overrides as ``--set`` items: ``detection__k=3`` -> ``"detection.k=3"``.

    The value is written as YAML (the language ``--set`` parses), so a Python float, list or
    string arrives as itself: a string that reads as a number or ``null`` stays a string."""
    items = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
        items.append(f"{key.replace('__', '.')}={text.removesuffix('...' + chr(10)).strip()}")
    return items


def resolve_policy(policy: str | PathLike | Policy | None, items: list[str]) -> tuple[Policy, Path | None, Path | None]:
    """(policy, folder its relative paths resolve in, the file as reports name it)."""
    if isinstance(policy, Policy):
        return apply_overrides(policy.model_dump(mode="json"), items), None, None
    pol, policy_dir = load_policy(None if policy is None else str(policy), items)
    return pol, policy_dir, None if policy_dir is None else Path(policy)


def resolve_pool(pool: PathLike | None, policy: Policy, policy_dir: Path | None) -> str:
    """The pool given, else the policy's pool.path (relative to the policy file)."""
    if pool is not None and str(pool):
        return str(pool)
    if policy.pool.path:
        path = Path(policy.pool.path)
        if not path.is_absolute() and policy_dir is not None:
            path = policy_dir / path
        return str(path)
    raise InputError("policy", "no OOD pool: pass --pool or set pool.path in the policy")


def _path(value: PathLike | None) -> Path | None:
    return None if value is None else Path(value)


def scan_inputs(
    checkpoint: PathLike,
    policy: str | PathLike | Policy | None = "default",
    pool: PathLike | None = None,
    *,
    set_: list[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    backbone_weights: PathLike | None = None,
    reference_weights: PathLike | None = None,
    display_path: str | None = None,
    require: Callable[[Policy, Path | None], None] | None = None,
) -> ScanInputs:
    """Load the policy (``set_``: raw ``--set`` items, ``overrides``: keyword ones, applied after)
    and resolve the pool: everything a scan checks before it loads a model. ``require(policy,
    policy file)``: a command's own check of the policy, before the pool is looked for (repair's
    ``repair.allowed``), so its refusal is the one a user sees first."""
    pol, policy_dir, policy_file = resolve_policy(policy, [*(set_ or []), *set_items(overrides or {})])
    if require is not None:
        require(pol, policy_file)
    return ScanInputs(
        checkpoint=Path(checkpoint), policy=pol, pool=resolve_pool(pool, pol, policy_dir), policy_path=policy_file,
        backbone_weights=_path(backbone_weights), reference_weights=_path(reference_weights), display_path=display_path,
    )
