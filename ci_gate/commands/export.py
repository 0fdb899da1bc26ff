"""``ci-gate export``: the verified classifier as an attested ONNX graph (ci_gate.export.onnx)."""

from __future__ import annotations

from pathlib import Path

import typer

from ci_gate.errors import InputError


def export_command(
    checkpoint: Path = typer.Argument(..., help="ci-gate checkpoint (.safetensors) that was verified."),
    onnx_out: str = typer.Option(..., "--onnx", help="ONNX file to write (atomically)."),
    result: Path = typer.Option(None, "--result", help="result.json of a clean `ci-gate verify` of this checkpoint."),
    allow_unverified: bool = typer.Option(False, "--allow-unverified", help="Export without a clean result of this checkpoint; recorded in the file, and `ci-gate attest` then fails."),
    backbone_weights: Path = typer.Option(None, "--backbone-weights", help="Local backbone weights file (instead of the pretrained tag)."),
) -> None:
    """Export CHECKPOINT to ONNX with an attestation. Exit 0 written, 1 the result is not clean, 2 bad input
    (a result of another checkpoint among them).

    The graph takes float32 images (N, 3, S, S) in [0, 1], resized and centre-cropped to the
    backbone's input size S; normalisation is inside it. It returns logits over the checkpoint's classes.
    """
    from ci_gate.export.onnx import OPSET, export_onnx
    from ci_gate.report.folder import check_out_file, output_errors

    if not str(onnx_out).strip():
        raise InputError("--onnx", "empty path; give the .onnx file to write")
    out = check_out_file(onnx_out, "--onnx", inputs=[("checkpoint", checkpoint), ("result", result), ("backbone weights", backbone_weights)])
    with output_errors(out):
        report = export_onnx(checkpoint, out, result, allow_unverified=allow_unverified, backbone_weights=backbone_weights)
    if report.metadata["ci_gate.verified"] != "true":
        typer.echo(f"warning: exported without a clean verify ({report.metadata['ci_gate.unverified_reasons']}); `ci-gate attest` will fail on this file", err=True)
    parity = "not checked (onnxruntime not installed)" if report.parity_max_abs is None else f"max abs logit difference {report.parity_max_abs:.1e}"
    typer.echo(f"ONNX opset {OPSET}, {report.n_bytes / 1e6:.1f} MB, exported in {report.export_s:.1f} s; onnxruntime vs torch: {parity}", err=True)
    # sha256sum's layout, as `ci-gate convert` prints it
    typer.echo(f"{report.sha256}  {report.path}")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
