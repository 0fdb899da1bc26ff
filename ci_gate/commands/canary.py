"""``ci-gate canary``: plant a known backdoor in a copy of the user's model and check the gate catches it."""

from __future__ import annotations

from pathlib import Path

import typer

from ci_gate.commands import options
from ci_gate.errors import GateFailure


def canary(
    checkpoint: Path = typer.Argument(..., help="The user's (clean) ci-gate checkpoint; only read, never modified."),
    data: Path = typer.Option(..., "--data", help="Labeled images, one sub-folder per class of the checkpoint (poisoned copies are made in memory)."),
    policy: str = options.policy_option("The policy whose gate is being tested."),
    pool: str = options.pool_option(),
    attack: str = typer.Option("badclip", "--attack", help="Backdoor to plant (prompt-level attacks of ci_gate.attacks, e.g. badclip, badnets, blended, wanet)."),
    target: str = typer.Option(None, "--target", help="Class the backdoor sends triggered images to (default: a seeded choice)."),
    out: str = typer.Option("ci-gate-canary", "--out", "-o", help="Folder for canary.json and the scan's result.json and triggers (replaced as a whole, atomically)."),
    overrides: list[str] = options.set_option("canary.epochs=30"),
    keep_model: bool = typer.Option(False, "--keep-model", help="Also keep the backdoored copy as OUT/canary.safetensors (off: a backdoored model should not linger)."),
    backbone_weights: Path = options.backbone_weights_option(),
    reference_weights: Path = options.reference_weights_option(),
    display_path: str = options.display_path_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the final line."),
) -> None:
    """Self-test the gate: plant ATTACK (target TARGET) in a copy of CHECKPOINT and scan it with the policy.

    Exit 0: caught, with the right target. Exit 1: missed, wrong target, or the planted backdoor
    did not work (inconclusive). Exit 2: bad input. CHECKPOINT is never modified.
    """
    from ci_gate.api import checked_out_folder
    from ci_gate.canary import CanaryRequest, run_canary
    from ci_gate.io import atomic_write_text
    from ci_gate.report.folder import staged_folder
    from ci_gate.report.sanitize import plain, quoted

    inputs = options.scan_inputs_from_cli(checkpoint, policy, pool, overrides, backbone_weights, reference_weights, display_path)
    out_dir = checked_out_folder(out, "--out", inputs, ("data", data))
    log = None if quiet else (lambda msg: typer.echo(f"ci-gate canary: {msg}", err=True))
    # Everything (canary.json, scan/, canary.safetensors) is built in a staging folder: the
    # backdoored copy can never land on the user's checkpoint, and a failed run leaves an earlier
    # canary report as it was.
    with staged_folder(out_dir) as stage:
        req = CanaryRequest(inputs, data=data, out=stage, attack=attack, target=target, keep_model=keep_model)
        s = run_canary(req, log=log)
        if s.canary_model is not None:
            # canary.json names the kept model where it will be, not at the staging name
            s = s.model_copy(update={"canary_model": str(out_dir / Path(s.canary_model).relative_to(stage))})
            atomic_write_text(stage / "canary.json", s.model_dump_json(indent=2) + "\n")
    if not quiet:
        typer.echo(
            f"planted {s.attack} -> {quoted(s.planted_target)}: held-out ASR {s.planted_asr:.1%} (no-trigger rate {s.natural_rate:.1%}), "
            f"clean accuracy {s.clean_accuracy_original:.1%} -> {s.clean_accuracy_canary:.1%}"
        )
        if s.scan is not None:
            typer.echo(f"scan: {s.scan.verdict}" + (f", target {quoted(s.scan.target_class)}" if s.scan.target_class else "") + f", max anomaly {s.scan.max_anomaly:.2f}")
    line = f"{s.status.upper()}: {plain(s.message, None)} (report {plain(out_dir / 'canary.json', None)})"
    if not s.passed:
        raise GateFailure(line)
    typer.echo(line)


def register(app: typer.Typer) -> None:
    app.command("canary")(canary)
