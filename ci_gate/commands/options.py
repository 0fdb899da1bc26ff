"""The CLI options of a scan's inputs, defined once for every command that scans (verify, repair,
canary): each becomes one field of :class:`ci_gate.scan_inputs.ScanInputs` through
:func:`scan_inputs_from_cli`, so a flag means the same thing, and reaches the scan the same way,
in every command. Factories rather than shared objects: typer reads each command's defaults from
its own signature. Nothing here imports torch or the policy model (``--help`` stays fast).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # pydantic and the policy load when a command runs, not for --help
    from ci_gate.policy import Policy
    from ci_gate.scan_inputs import ScanInputs

POLICY_HELP = "Policy file or bundled name (default, strict, permissive)."


def policy_option(help: str = POLICY_HELP) -> Any:
    return typer.Option("default", "--policy", "-p", help=help)


def pool_option() -> Any:
    return typer.Option(None, "--pool", help="OOD image pool: folder, glob or .tar (overrides pool.path).")


def set_option(example: str = "detection.k=2.5") -> Any:
    return typer.Option([], "--set", help=f"Override one policy field, e.g. --set {example}")


def backbone_weights_option() -> Any:
    return typer.Option(None, "--backbone-weights", help="Local backbone weights file (instead of the pretrained tag).")


def reference_weights_option() -> Any:
    return typer.Option(None, "--reference-weights", help="Published backbone weights for the clean reference of the ref_* statistics "
                                                          "(use with checkpoints that embed their backbone).")


def display_path_option() -> Any:
    return typer.Option(None, "--display-path", help="Checkpoint path as reports should name it (repository-relative).")


def scan_inputs_from_cli(
    checkpoint: Path,
    policy: str,
    pool: str | None,
    overrides: list[str],
    backbone_weights: Path | None,
    reference_weights: Path | None,
    display_path: str | None,
    require: Callable[[Policy, Path | None], None] | None = None,
) -> ScanInputs:
    """The options above, checked (policy loaded with its ``--set`` items, pool resolved)."""
    from ci_gate.scan_inputs import scan_inputs

    return scan_inputs(checkpoint, policy, pool, set_=overrides, backbone_weights=backbone_weights,
                       reference_weights=reference_weights, display_path=display_path, require=require)
