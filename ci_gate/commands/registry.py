"""``ci-gate registry``: the MLflow Model Registry gate (``verify models:/...``, ``promote``, ``scan-new``).

``ci-gate verify models:/NAME/VERSION`` (or ``models:/NAME@ALIAS``) runs :func:`verify_registered`:
download the version's checkpoint, run the local ``verify`` unchanged on it (every flag of verify
applies, the report names the checkpoint by its registry URI), then tag the version with the
verdict and log the report folder (see ci_gate/registry/mlflow.py). The tracking server comes from
``--tracking-uri`` or ``MLFLOW_TRACKING_URI``, read by typer here at the CLI edge and nowhere else.
mlflow is imported only by these commands: a local verify never loads it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from ci_gate.errors import GateFailure, InputError

TRACKING_HELP = "MLflow tracking server (its model registry at the same URI); default: $MLFLOW_TRACKING_URI."


def tracking_option() -> Any:
    return typer.Option(None, "--tracking-uri", envvar="MLFLOW_TRACKING_URI", show_envvar=True, help=TRACKING_HELP)


def _registry(tracking_uri: str | None):
    import urllib.parse

    from ci_gate.github.redact import register_secret

    # credentials in the URI (https://user:token@host, or a token alone as https://token@host) are
    # masked in every error line, traceback and crash log from here on, as the GitHub token is
    try:
        parts = urllib.parse.urlsplit(tracking_uri or "")
        parts.port  # noqa: B018  (a bad port raises only when read)
    except ValueError as exc:
        # not echoed: an unparsable URI's credentials cannot be told apart to be masked
        raise InputError("--tracking-uri", f"not a valid URI ({exc})") from None
    register_secret(parts.password)
    register_secret(parts.username)
    try:
        from ci_gate.registry.mlflow import MlflowRegistry
    except ImportError as exc:
        raise InputError("models:/", f"MLflow registry URIs need the mlflow extra (pip install 'ci-gate[mlflow]'): {exc}") from None
    return MlflowRegistry(tracking_uri)


def _say(msg: str) -> None:
    from ci_gate.cli import one_line

    typer.echo(one_line(f"ci-gate: {msg}"), err=True)


def verify_registered(verify: Callable[..., None], params: dict[str, Any]) -> None:
    """``ci-gate verify models:/...``: ``params`` are the verify command's own arguments."""
    from ci_gate.distributed import Shard
    from ci_gate.registry import parse_models_uri
    from ci_gate.registry.mlflow import summary_line, version_uri

    ref = parse_models_uri(str(params["checkpoint"]), "CHECKPOINT")
    registry = _registry(params["tracking_uri"])
    mv = registry.resolve(ref)
    uri = version_uri(mv)
    code = 0
    with tempfile.TemporaryDirectory(prefix="ci-gate-mlflow-") as tmp:
        ckpt, artifact_path = registry.download_checkpoint(mv, Path(tmp))
        try:
            verify(**{**params, "checkpoint": ckpt, "display_path": params["display_path"] or uri, "tracking_uri": None})
        except typer.Exit as exc:
            if exc.exit_code != 1:
                raise
            code = 1  # a verdict: still recorded on the version, then the exit code stands
    # under torchrun only rank 0 wrote the report folder; the others have nothing to record
    if Shard.from_launcher(os.environ).is_main:
        recorded = registry.record(mv, Path(params["out"]).expanduser(), artifact_path)
        if not params.get("quiet"):
            _say(summary_line(uri, recorded))
    raise typer.Exit(code)


def promote(
    model: str = typer.Argument(..., help="models:/NAME/VERSION (or models:/NAME@ALIAS) to promote."),
    alias: str = typer.Option(..., "--alias", "-a", help="Alias to move to the version, e.g. production."),
    policy: str = typer.Option("default", "--policy", "-p", help="The policy the version must have verified clean under (same policy hash)."),
    overrides: list[str] = typer.Option([], "--set", help="Policy overrides, as given to verify (they change the policy hash)."),
    tracking_uri: str = tracking_option(),
) -> None:
    """Move ALIAS to MODEL only if ci-gate verified it clean under POLICY.

    Checked again, not taken from the tags alone: the logged result.json hashes to the version's
    ci_gate.result_sha256 tag, was made under the same policy hash, passes the gate with no backdoor
    verdict, and the version's checkpoint still hashes to what was scanned.
    Exit 0 promoted, 1 refused (with the reason), 2 bad input."""
    from ci_gate.policy import load_policy
    from ci_gate.registry import ModelRef, parse_models_uri
    from ci_gate.registry.mlflow import version_uri

    ref = parse_models_uri(model, "MODEL")
    # validates the alias; one with a "/" would parse as a version number instead
    target = parse_models_uri(f"models:/{ref.name}@{alias}", "--alias") if "/" not in alias else None
    if target is None or target.alias != alias:
        raise InputError("--alias", f"{alias!r} is not an MLflow alias (letters, digits, _ and -; not v<number>)")
    pol, _ = load_policy(policy, overrides)
    registry = _registry(tracking_uri)
    mv = registry.resolve(ref)
    result = registry.promote(mv, target.alias, pol)
    typer.echo(f"PROMOTED {version_uri(mv)} -> {ModelRef(ref.name, alias=target.alias).uri}: verified {result.verdict} under policy "
               f"{pol.name!r} (result sha256 {mv.tags.get('ci_gate.result_sha256', '')[:12]})")


def scan_new(
    name: str = typer.Argument(..., help="Registered model whose new versions to scan."),
    policy: str = typer.Option("default", "--policy", "-p", help="Policy file or bundled name."),
    pool: str = typer.Option(None, "--pool", help="OOD image pool: folder, glob or .tar (overrides pool.path)."),
    overrides: list[str] = typer.Option([], "--set", help="Override one policy field, e.g. --set detection.k=2.5"),
    out: str = typer.Option("ci-gate-registry", "--out", "-o", help="Folder for the reports, one sub-folder VERSION per version scanned."),
    reference_weights: Path = typer.Option(None, "--reference-weights", help="Published backbone weights (for checkpoints that embed their backbone)."),
    limit: int = typer.Option(0, "--limit", min=0, help="Scan at most this many versions per run (0: all)."),
    tracking_uri: str = tracking_option(),
) -> None:
    """Scan every version of NAME that has no ci-gate record (ci_gate.verdict and its tags) yet, oldest first, and record each
    verdict on its version: the polling half of "gate every new model version" (run it from a
    scheduled job). Exit 0 all passed (or nothing new), 1 some version failed the gate, 2 bad input."""
    from ci_gate.api import gate_passes, plan_verify, run_verify
    from ci_gate.console import one_line
    from ci_gate.registry.mlflow import VERDICT, recorded, summary_line, version_uri
    from ci_gate.report.folder import check_out_path

    registry = _registry(tracking_uri)
    pending = [mv for mv in registry.versions(name) if not recorded(mv)]
    if limit:
        pending = pending[:limit]
    root = check_out_path(out, "--out")
    if not pending:
        typer.echo(f"nothing new: every version of {name!r} carries ci-gate's {VERDICT} record")
        return
    failed = []
    for mv in pending:
        uri = version_uri(mv)
        with tempfile.TemporaryDirectory(prefix="ci-gate-mlflow-") as tmp:
            ckpt, artifact_path = registry.download_checkpoint(mv, Path(tmp))
            plan = plan_verify(ckpt, policy, pool, out=root / str(mv.version), reference_weights=reference_weights,
                               display_path=uri, set_=overrides, out_flag="--out")
            done = run_verify(plan)
            assert done is not None and plan.out_dir is not None, "scan-new runs in one process with an output folder"
        recorded = registry.record(mv, plan.out_dir, artifact_path)
        typer.echo(one_line(done.result))
        _say(summary_line(uri, recorded))
        if not gate_passes(done.result):
            failed.append(uri)
    if failed:
        raise GateFailure(f"{len(failed)} of {len(pending)} new versions fail the gate: {', '.join(failed)}")


def register(app: typer.Typer) -> None:
    group = typer.Typer(name="registry", help="MLflow Model Registry gate: promote verified versions, scan new ones (needs ci-gate[mlflow]).",
                        no_args_is_help=True)
    group.command("promote")(promote)
    group.command("scan-new")(scan_new)
    app.add_typer(group, name="registry")
