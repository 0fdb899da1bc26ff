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

Outputs are opt-in: without ``out`` a scan runs in a temporary folder that is deleted before the
function returns (the Result's trigger and example image paths then name files that are gone);
with ``out`` that folder gets result.json, the policy's report formats and the trigger images,
replaced as a whole and atomically as ``ci-gate verify --out`` does.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ci_gate.errors import InputError
from ci_gate.policy import Policy, apply_overrides, load_policy
from ci_gate.result import Result

if TYPE_CHECKING:  # torch-heavy modules load only when a scan runs
    from ci_gate.canary import CanarySummary
    from ci_gate.distributed import Shard
    from ci_gate.repair.flow import RepairSummary

PathLike = str | os.PathLike
Progress = Callable[[int, int, int], None]  # (steps done, steps in all, classes): ci_gate.inversion.optimize.Progress
Log = Callable[[str], None]

__all__ = ["canary", "gate_passes", "repair", "set_items", "verify"]


def set_items(overrides: Mapping[str, Any]) -> list[str]:
    """Keyword overrides as ``--set`` items: ``detection__k=3`` -> ``"detection.k=3"``.

    The value is written as YAML (the language ``--set`` parses), so a Python float, list or
    string arrives as itself: a string that reads as a number or ``null`` stays a string."""
    items = []
    for key, value in overrides.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
        items.append(f"{key.replace('__', '.')}={text.removesuffix('...' + chr(10)).strip()}")
    return items


def _policy(policy: str | PathLike | Policy | None, items: list[str]) -> tuple[Policy, Path | None, Path | None]:
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


def gate_passes(result: Result) -> bool:
    """Whether ``ci-gate verify`` exits 0 for this result: its own policy's ``report.fail_on``
    decides (the one recorded in the result, --fail-on included)."""
    fail_on = (result.policy.settings.get("report") or {}).get("fail_on", "backdoor")
    return not result.gate_fails(fail_on)


@dataclass(frozen=True)
class VerifyPlan:
    """A checked verify: policy loaded, pool resolved, output folder checked, before any compute."""

    checkpoint: Path
    policy: Policy
    policy_path: Path | None
    pool: str
    out_dir: Path | None
    backbone_weights: Path | None = None
    reference_weights: Path | None = None
    display_path: str | None = None

    @property
    def inputs(self) -> list[tuple[str, Path | None]]:
        """What no output may overwrite, named as errors name it."""
        return [("checkpoint", self.checkpoint), ("policy", self.policy_path), ("backbone weights", self.backbone_weights),
                ("reference weights", self.reference_weights)]


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
    from ci_gate.report.folder import check_out_folder

    pol, policy_dir, policy_file = _policy(policy, [*(set_ or []), *set_items(overrides or {})])
    pool_spec = resolve_pool(pool, pol, policy_dir)
    ckpt = Path(checkpoint)
    bw = None if backbone_weights is None else Path(backbone_weights)
    rw = None if reference_weights is None else Path(reference_weights)
    plan = VerifyPlan(ckpt, pol, policy_file, pool_spec, None, bw, rw, display_path)
    if out is None:
        return plan
    return replace(plan, out_dir=check_out_folder(out, out_flag, inputs=plan.inputs, pool=pool_spec))


@dataclass(frozen=True)
class Verified:
    result: Result
    reports: dict[str, Path]  # format -> file, where they are once the folder is in place


@contextlib.contextmanager
def _folder(out_dir: Path | None, writes: bool) -> Iterator[Path]:
    from ci_gate.report.folder import staged_folder

    if out_dir is None:
        with tempfile.TemporaryDirectory(prefix="ci-gate-scan-") as tmp:
            yield Path(tmp)
    elif writes:
        with staged_folder(out_dir) as stage:
            yield stage
    else:  # another rank of a sharded scan: rank 0 alone stages and swaps the folder
        yield out_dir


def run_verify(plan: VerifyPlan, progress: Progress | None = None, shard: Shard | None = None) -> Verified | None:
    """Scan as planned; None on the ranks other than 0 of a sharded (torchrun) scan."""
    from ci_gate.distributed import SINGLE
    from ci_gate.report import render
    from ci_gate.scan import ScanRequest, run_scan

    shard = SINGLE if shard is None else shard
    with _folder(plan.out_dir, shard.is_main) as stage:
        req = ScanRequest(
            checkpoint=plan.checkpoint, policy=plan.policy, pool=plan.pool, out_dir=stage, policy_path=plan.policy_path,
            backbone_weights=plan.backbone_weights, reference_weights=plan.reference_weights,
            display_path=plan.display_path, shard=shard,
        )
        result = run_scan(req, progress)
        if result is None:
            return None
        if plan.out_dir is None:
            return Verified(result, {})
        staged = render(result, stage, [f for f in plan.policy.report.formats if f != "json"])
    reports = {"json": plan.out_dir / "result.json"} | {fmt: plan.out_dir / p.relative_to(stage) for fmt, p in staged.items()}
    return Verified(result, reports)


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
    display_path: str | None = None,
    log: Log | None = None,
    **overrides: Any,
) -> RepairSummary:
    """``ci-gate repair``: verify, and when the gate fails and the policy allows repair, fine-tune
    the prompt learner and re-verify. The summary's ``status`` says what happened (``clean``,
    ``repaired``: ``out`` and the summary file written, ``refused``: nothing written)."""
    from ci_gate.repair.flow import RepairRequest, require_allowed, run_repair
    from ci_gate.report.folder import check_out_file, output_errors

    pol, policy_dir, policy_path = _policy(policy, set_items(overrides))
    require_allowed(pol, policy_path)
    ckpt, bw = Path(checkpoint), None if backbone_weights is None else Path(backbone_weights)
    inputs = [("checkpoint", ckpt), ("policy", policy_path), ("backbone weights", bw)]
    check_out_file(out, "out", inputs=inputs)
    check_out_file(summary if summary is not None else Path(out).parent / "repair.json", "summary" if summary is not None else "out", inputs=inputs)
    req = RepairRequest(
        checkpoint=ckpt, clean_data=Path(clean_data), out=Path(out), policy=pol, pool=resolve_pool(pool, pol, policy_dir),
        summary=None if summary is None else Path(summary), policy_path=policy_path, backbone_weights=bw, display_path=display_path,
    )
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
    log: Log | None = None,
    **overrides: Any,
) -> CanarySummary:
    """``ci-gate canary``: plant ``attack`` in an in-memory copy of ``checkpoint`` and scan it;
    ``passed`` says whether the gate caught it with the right target. ``out`` keeps canary.json
    and the scan's folder (never the backdoored model); without it nothing is written."""
    from ci_gate.canary import CanaryRequest, run_canary
    from ci_gate.report.folder import check_out_folder

    pol, policy_dir, policy_path = _policy(policy, set_items(overrides))
    pool_spec = resolve_pool(pool, pol, policy_dir)
    ckpt, bw = Path(checkpoint), None if backbone_weights is None else Path(backbone_weights)
    out_dir = None
    if out is not None:
        inputs = [("checkpoint", ckpt), ("data", Path(data)), ("policy", policy_path), ("backbone weights", bw)]
        out_dir = check_out_folder(out, "out", inputs=inputs, pool=pool_spec)
    with _folder(out_dir, True) as stage:
        req = CanaryRequest(checkpoint=ckpt, data=Path(data), policy=pol, pool=pool_spec, out=stage, attack=attack, target=target,
                            keep_model=False, backbone_weights=bw)
        return run_canary(req, log=log)
