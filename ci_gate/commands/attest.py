"""``ci-gate attest``: the deploy-time check that an ONNX file is the model that was verified."""

from __future__ import annotations

from pathlib import Path

import typer

from ci_gate.errors import GateFailure


def attest_command(
    onnx_file: Path = typer.Argument(..., help="ONNX file written by `ci-gate export`."),
    result: Path = typer.Option(..., "--result", help="result.json of the verify the export was based on (from the gate's own artifact)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="The verified checkpoint: also compare every graph weight and the logits with it."),
    backbone_weights: Path = typer.Option(None, "--backbone-weights", help="Local backbone weights file (with --checkpoint, for non-embedded backbones)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing when the file passes (without --checkpoint, but the note that the graph was not checked)."),
) -> None:
    """Check ONNX_FILE's attestation against RESULT (and the checkpoint). Exit 0 it is the verified model,
    1 any mismatch (one line: the first reason), 2 bad input. Without --checkpoint the graph itself
    is not checked (its digest lives in the same file), only the metadata against RESULT."""
    from ci_gate.export.attest import attest

    report = attest(onnx_file, result, checkpoint, backbone_weights)
    if not quiet:
        for check in report.checks:
            typer.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    failures = report.failures
    if failures:
        more = f" (and {len(failures) - 1} more failed checks)" if len(failures) > 1 else ""
        raise GateFailure(f"{onnx_file}: attestation fails: {failures[0].name}: {failures[0].detail}{more}")
    if checkpoint is None:
        # the digest is in the file's own metadata: whoever rewrites the graph can rewrite it too.
        # Said under --quiet as well: a silent exit 0 would read as "this is the verified model"
        typer.echo("note: the graph (weights and nodes) was NOT checked: its digest is stored in the file itself, so a graph "
                   "rewritten together with its digest passes; pass --checkpoint to check the graph against the checkpoint", err=True)


def register(app: typer.Typer) -> None:
    app.command("attest")(attest_command)
