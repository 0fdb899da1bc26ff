"""``ci-gate repair``: remove a detected backdoor with a small labeled clean set, then re-verify."""

from __future__ import annotations

from pathlib import Path

import typer

from ci_gate.commands import options
from ci_gate.errors import GateFailure


def repair(
    checkpoint: Path = typer.Argument(..., help="ci-gate checkpoint (.safetensors); never modified."),
    clean_data: Path = typer.Option(..., "--clean-data", help="Labeled clean images, one sub-folder per class of the checkpoint."),
    out: str = typer.Option(..., "--out", "-o", help="Repaired checkpoint (written atomically, only when the repair re-verifies)."),
    policy: str = options.policy_option("Policy file or bundled name; it must allow repair (repair.allowed)."),
    pool: str = options.pool_option(),
    overrides: list[str] = options.set_option("repair.epochs=30"),
    summary: str = typer.Option(None, "--summary", help="Where to write the JSON summary (default: repair.json next to --out)."),
    backbone_weights: Path = options.backbone_weights_option(),
    reference_weights: Path = options.reference_weights_option(),
    display_path: str = options.display_path_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the final line."),
) -> None:
    """Verify CHECKPOINT; if the gate fails, fine-tune its prompt learner on the clean data plus the
    reconstructed trigger (true labels kept) and verify again.

    Exit 0: repaired and re-verified (checkpoint and repair.json written), or the model is clean
    (nothing to repair, nothing written). Exit 1: repair refused, the repaired model still fails
    the gate or lost more clean accuracy than the policy allows (nothing written). Exit 2: bad input.
    """
    from ci_gate.repair.flow import RepairRequest, require_allowed, run_repair
    from ci_gate.report.folder import check_out_file, output_errors
    from ci_gate.report.sanitize import plain, quoted

    inputs = options.scan_inputs_from_cli(checkpoint, policy, pool, overrides, backbone_weights, reference_weights, display_path,
                                          require=require_allowed)
    # never over an input, also not through a hard or symbolic link (flow.check_output compares
    # resolved paths only); refused before any compute
    check_out_file(out, "--out", inputs=inputs.files)
    if summary is not None:
        check_out_file(summary, "--summary", inputs=inputs.files)
    else:
        check_out_file(Path(out).parent / "repair.json", "--out", inputs=inputs.files)
    # the paths as given: the summary and the log name them the way the user wrote them
    out_path, summary_path = Path(out), None if summary is None else Path(summary)
    req = RepairRequest(inputs, clean_data=clean_data, out=out_path, summary=summary_path)
    log = None if quiet else (lambda msg: typer.echo(f"ci-gate repair: {msg}", err=True))
    with output_errors(out_path):  # a full disk or read-only folder is exit 2 naming the file
        outcome = run_repair(req, log=log)
    s = outcome.summary
    if not quiet:
        typer.echo(_table(s))
    if s.status == "clean":
        typer.echo(f"CLEAN: the gate passes {plain(s.checkpoint, None)}; nothing to repair, nothing written")
    elif s.status == "repaired":
        typer.echo(f"REPAIRED target={quoted(s.target_class)} out={plain(s.output, None)} summary={plain(req.summary_path, None)}")
    else:
        raise GateFailure("repair refused, nothing written: " + "; ".join(s.reasons))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _table(s) -> str:
    lines = [f"verify: {s.verify.verdict}" + (f", target {s.verify.target_class!r}" if s.verify.target_class else "")]
    if s.before is not None and s.after is not None:
        lines.append(f"{'held out':<28}{'before':>10}{'after':>10}")
        lines.append(f"{'clean accuracy':<28}{_pct(s.before.clean_accuracy):>10}{_pct(s.after.clean_accuracy):>10}")
        lines.append(f"{'reconstructed trigger ASR':<28}{_pct(s.before.trigger_asr):>10}{_pct(s.after.trigger_asr):>10}")
        lines.append(f"{'no-trigger rate of target':<28}{_pct(s.before.natural_rate):>10}{_pct(s.after.natural_rate):>10}")
        for r in s.rounds:
            v = r.reverify
            lines.append(f"round {r.round}: triggers {r.triggers} -> re-verification {v.verdict}"
                         + (f" (target {v.target_class!r})" if v.target_class else "") + f", gate {'passes' if v.gate_passes else 'fails'}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("repair")(repair)
