"""The Python API: the gate's commands as functions that return what they found.

    import ci_gate

    result = ci_gate.verify("model.safetensors", policy="strict", pool="ood/", device="cpu", detection__k=3)
    if not ci_gate.gate_passes(result):
        ...

Each function takes the CLI command's inputs and returns the object the command's reports are
made of (a :class:`~ci_gate.result.Result`, a repair or canary summary). Nothing here prints,
exits or reads the environment; a verdict is a return value (a backdoored model is not an
exception), while bad input raises :class:`~ci_gate.errors.InputError` and ci-gate's own faults
:class:`~ci_gate.errors.InternalError` or any other exception, as the CLI's exit codes 2 and 3.

Policy overrides are keyword arguments, the CLI's ``--set`` with ``__`` for the dot:
``detection__k=3`` is ``--set detection.k=3``; top-level keys are plain (``device="cpu"``,
``seed=1``). Values are Python values (``inversion__epsilon=[4/255, 8/255]``). A dotted key
still works through a mapping, ``**{"detection.k": 3}``. They are validated like ``--set``: an
error names the key as ``--set KEY=VALUE``.

Outputs are opt-in: without ``out`` nothing is written (the scan runs in memory; the Result's
trigger and example image paths then name files that were never written); with ``out`` that folder
gets result.json, the policy's report formats and the trigger images, replaced as a whole and
atomically as ``ci-gate verify --out`` does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ci_gate.policy import Policy
from ci_gate.result import Result
from ci_gate.scan_inputs import ScanInputs, scan_inputs, set_items

if TYPE_CHECKING:  # torch-heavy modules load only when a scan runs
    from ci_gate.canary import CanarySummary
    from ci_gate.distributed import Shard
    from ci_gate.repair.flow import RepairSummary

PathLike = str | os.PathLike
Progress = Callable[[int, int, int], None]  # (steps done, steps in all, classes): ci_gate.inversion.optimize.Progress
Log = Callable[[str], None]

__all__ = ["canary", "gate_passes", "repair", "set_items", "verify"]


def gate_passes(result: Result) -> bool:
    """Whether ``ci-gate verify`` exits 0 for this result: its own policy's ``report.fail_on``
    decides (the one recorded in the result, --fail-on included)."""
    fail_on = (result.policy.settings.get("report") or {}).get("fail_on", "backdoor")
    return not result.gate_fails(fail_on)


@dataclass(frozen=True)
class VerifyPlan:
    """A checked verify: policy loaded, pool resolved, output folder checked, before any compute."""

    scan: ScanInputs
    out_dir: Path | None


def plan_verify(
    checkpoint: PathLike,
    policy: str | PathLike | Policy | None = "default",
    pool: PathLike | None = None,
    *,
    out: PathLike | None = None,
    backbone_weights: PathLike | None = None,
    reference_weights: PathLike | None = None,
    display_path: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    set_: list[str] | None = None,
    out_flag: str = "out",
) -> VerifyPlan:
    """Everything verify checks before it loads a model. ``set_`` takes raw ``--set`` items (the
    CLI's), ``overrides`` keyword ones; ``out_flag`` is how errors name the output folder."""
    inputs = scan_inputs(checkpoint, policy, pool, set_=set_, overrides=overrides, backbone_weights=backbone_weights,
                         reference_weights=reference_weights, display_path=display_path)
    return VerifyPlan(inputs, None if out is None else checked_out_folder(out, out_flag, inputs))


def checked_out_folder(out: PathLike, flag: str, inputs: ScanInputs, *extra: tuple[str, Path | None]) -> Path:
    """The report folder ``out``, checked against the scan's input files (and ``extra`` ones) and its pool."""
    from ci_gate.report.folder import check_out_folder

    return check_out_folder(out, flag, inputs=[*inputs.files, *extra], pool=inputs.pool)


@dataclass(frozen=True)
class Verified:
    result: Result
    reports: dict[str, Path]  # format -> file, where they are once the folder is in place


def run_verify(plan: VerifyPlan, progress: Progress | None = None, shard: Shard | None = None) -> Verified | None:
    """Scan as planned; None on the ranks other than 0 of a sharded (torchrun) scan, which write
    nothing (rank 0 alone writes the folder)."""
    from ci_gate.distributed import SINGLE
    from ci_gate.report.folder import write_report_folder
    from ci_gate.scan import scan

    found = scan(plan.scan, progress, SINGLE if shard is None else shard)
    if found is None:
        return None
    if plan.out_dir is None:
        return Verified(found.result, {})
    return Verified(found.result, write_report_folder(found, plan.out_dir, plan.scan.policy.report.formats))


def verify(
    checkpoint: PathLike,
    policy: str | PathLike | Policy | None = "default",
    pool: PathLike | None = None,
    *,
    out: PathLike | None = None,
    backbone_weights: PathLike | None = None,
    reference_weights: PathLike | None = None,
    display_path: str | None = None,
    progress: Progress | None = None,
    **overrides: Any,
) -> Result:
    """Scan ``checkpoint`` for a backdoor; what ``ci-gate verify`` does, returned as a Result.

    ``policy``: a policy file, a bundled name (``default``, ``strict``, ``permissive``), a
    :class:`~ci_gate.policy.Policy`, or None for the built-in defaults. ``pool``: the OOD images
    (folder, glob or .tar), else the policy's ``pool.path``. ``progress(done, total, n_classes)`` is
    called as the inversion advances (a step is one class on one batch). Whether the gate passes: :func:`gate_passes`."""
    plan = plan_verify(
        checkpoint, policy, pool, out=out, backbone_weights=backbone_weights, reference_weights=reference_weights,
        display_path=display_path, overrides=overrides,
    )
    done = run_verify(plan, progress)
    assert done is not None, "a single-process scan always returns its result"
    return done.result


def repair(
    checkpoint: PathLike,
    clean_data: PathLike,
    out: PathLike,
    policy: str | PathLike | Policy | None = "default",
    pool: PathLike | None = None,
    *,
    summary: PathLike | None = None,
    backbone_weights: PathLike | None = None,
    reference_weights: PathLike | None = None,
    display_path: str | None = None,
    log: Log | None = None,
    **overrides: Any,
) -> RepairSummary:
    """``ci-gate repair``: verify, and when the gate fails and the policy allows repair, fine-tune
    the prompt learner and re-verify. The summary's ``status`` says what happened (``clean``,
    ``repaired``: ``out`` and the summary file written, ``refused``: nothing written).
    ``reference_weights``: the published backbone, for every scan of the repair (as verify's)."""
    from ci_gate.repair.flow import RepairRequest, require_allowed, run_repair
    from ci_gate.report.folder import check_out_file, output_errors

    inputs = scan_inputs(checkpoint, policy, pool, overrides=overrides, backbone_weights=backbone_weights,
                         reference_weights=reference_weights, display_path=display_path, require=require_allowed)
    check_out_file(out, "out", inputs=inputs.files)
    check_out_file(summary if summary is not None else Path(out).parent / "repair.json", "summary" if summary is not None else "out", inputs=inputs.files)
    req = RepairRequest(inputs, clean_data=Path(clean_data), out=Path(out), summary=None if summary is None else Path(summary))
    with output_errors(Path(out)):
        return run_repair(req, log=log).summary


def canary(
    checkpoint: PathLike,
    data: PathLike,
    policy: str | PathLike | Policy | None = "default",
    pool: PathLike | None = None,
    *,
    attack: str = "badclip",
    target: str | None = None,
    out: PathLike | None = None,
    backbone_weights: PathLike | None = None,
    reference_weights: PathLike | None = None,
    display_path: str | None = None,
    log: Log | None = None,
    **overrides: Any,
) -> CanarySummary:
    """``ci-gate canary``: plant ``attack`` in an in-memory copy of ``checkpoint`` and scan it;
    ``passed`` says whether the gate caught it with the right target. ``out`` keeps canary.json
    and the scan's folder (never the backdoored model); without it nothing is written."""
    from ci_gate.canary import CanaryRequest, run_canary
    from ci_gate.report.folder import staged_folder

    inputs = scan_inputs(checkpoint, policy, pool, overrides=overrides, backbone_weights=backbone_weights,
                         reference_weights=reference_weights, display_path=display_path)
    req = CanaryRequest(inputs, data=Path(data), out=None, attack=attack, target=target, keep_model=False)
    if out is None:
        return run_canary(req, log=log)
    out_dir = checked_out_folder(out, "out", inputs, ("data", Path(data)))
    with staged_folder(out_dir) as stage:
        return run_canary(replace(req, out=stage), log=log)
