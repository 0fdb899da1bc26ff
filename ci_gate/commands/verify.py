"""``ci-gate verify``: scan a checkpoint and pass or fail the gate."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from ci_gate.commands import options
from ci_gate.commands import registry as registry_cli
from ci_gate.errors import InputError
from ci_gate.registry import is_models_uri


def verify(
    checkpoint: Path = typer.Argument(..., help="ci-gate checkpoint (.safetensors), or an MLflow model version: models:/NAME/VERSION or models:/NAME@ALIAS."),
    policy: str = options.policy_option(),
    pool: str = options.pool_option(),
    out: str = typer.Option("ci-gate-report", "--out", "-o", help="Folder for result.json, reports and triggers (replaced as a whole, atomically)."),
    # machine-readable output and progress (issue 15, CLI conventions): see ci_gate/result_output.py
    output_format: str = typer.Option("text", "--format", help="text: a summary for people; json: the result document (result.json's text) for scripts, human lines then go to stderr."),
    output: str = typer.Option(None, "--output", help="With --format json: '-' (stdout, the default) or a file written atomically."),
    progress_interval: float = typer.Option(5.0, "--progress-interval", min=0.0, help="Seconds between progress lines on stderr when it is not a terminal (a CI log)."),
    overrides: list[str] = options.set_option(),
    backbone_weights: Path = options.backbone_weights_option(),
    reference_weights: Path = options.reference_weights_option(),
    fail_on: str = typer.Option(None, "--fail-on", help="What fails the gate: backdoor, suspicious or never; same as --set report.fail_on=VALUE (default from policy)."),
    display_path: str = options.display_path_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="One line of output, no progress bar (for CI logs)."),
    tracking_uri: str = registry_cli.tracking_option(),
) -> None:
    """Scan CHECKPOINT for a backdoor. Exit 0 clean, 1 backdoor (or policy violation), 2 bad input.

    CHECKPOINT may be an MLflow registry version, models:/NAME/VERSION or models:/NAME@ALIAS: its
    checkpoint is downloaded and scanned, and the verdict is written back as version tags."""
    if is_models_uri(str(checkpoint)):  # every argument of this call, passed on unchanged
        return registry_cli.verify_registered(verify, dict(locals()))
    from ci_gate.api import VerifyPlan, checked_out_folder, run_verify
    from ci_gate.console import one_line, print_summary, scan_progress
    from ci_gate.distributed import Shard
    from ci_gate.report.sanitize import terminal
    from ci_gate.result_output import check_output_args, write_result

    if fail_on is not None and fail_on not in ("backdoor", "suspicious", "never"):
        raise InputError("--fail-on", f"expected backdoor, suspicious or never, got {fail_on!r}")
    # --fail-on is shorthand for --set report.fail_on=...: as a policy override it is recorded in
    # result.json and the reports (policy settings and hash), so they show what failed the gate.
    if fail_on is not None:
        overrides = [*overrides, f"report.fail_on={fail_on}"]
    inputs = options.scan_inputs_from_cli(checkpoint, policy, pool, overrides, backbone_weights, reference_weights, display_path)
    plan = VerifyPlan(inputs, checked_out_folder(out, "--out", inputs))
    pol, out_dir = inputs.policy, plan.out_dir
    json_file = check_output_args(output_format, output, out_dir, inputs.files, pool=inputs.pool)
    machine = output_format == "json"  # stdout then carries the JSON document and nothing else
    console = Console(stderr=machine)
    # Under `torchrun --nproc-per-node N -m ci_gate verify ...` the candidate classes are sharded
    # across the N processes; the launcher's variables are read here and nowhere else.
    shard = Shard.from_launcher(os.environ)
    with scan_progress(Console(stderr=True), enabled=not quiet and shard.is_main, interval=progress_interval) as progress:
        done = run_verify(plan, progress, shard)
    if done is None:  # another rank of a sharded scan: rank 0 reports and sets the exit code
        return
    result = done.result
    paths = {fmt: path for fmt, path in done.reports.items() if fmt != "json"}
    if machine:
        write_result(result, json_file)
    if quiet:
        typer.echo(one_line(result), err=machine)
    else:
        print_summary(console, result, str(out_dir))
        for fmt, path in paths.items():
            console.print(f"  {fmt}: {terminal(str(path), None)}")
    if result.gate_fails(pol.report.fail_on):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
