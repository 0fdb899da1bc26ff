"""``ci-gate report``: re-render the reports of a saved result.json (no torch, no GPU)."""

from __future__ import annotations

from pathlib import Path

import typer

from ci_gate.errors import InputError

# Same as ci_gate.report.FORMATS (tests check): spelled out so that building the CLI does not
# import the reporters (jinja2, pydantic); they load when the command runs.
FORMATS_HELP = "json,html,sarif,md"


def parse_formats(spec: str) -> list[str]:
    from ci_gate.report import FORMATS, unknown_formats

    formats = [f.strip().lower() for f in spec.split(",") if f.strip()]
    bad = unknown_formats(formats)
    if not formats or bad:
        raise InputError("--format", f"unknown format(s) {', '.join(bad) or repr(spec)}; choose from {','.join(FORMATS)}")
    return formats


def report(
    result_json: Path = typer.Argument(..., help="A result.json written by `ci-gate verify`."),
    formats: str | None = typer.Option(
        None, "--format", "-f", help=f"Comma-separated formats from {FORMATS_HELP} (default: the policy's report.formats)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: the result's folder)."),
    run_url: str | None = typer.Option(None, "--run-url", help="Workflow run the Markdown summary links to."),
    artifact_name: str | None = typer.Option(None, "--artifact-name", help="Workflow artifact holding the report bundle."),
    source_root: Path | None = typer.Option(
        None, "--source-root", help="Repository root, to make an absolute checkpoint path relative in SARIF."
    ),
) -> None:
    """Re-render HTML, SARIF, Markdown and JSON reports from a saved result."""
    from ci_gate.report import FORMATS, SummaryLinks, render
    from ci_gate.report.artifacts import missing_artifacts
    from ci_gate.result import load_result

    result = load_result(result_json)
    result_dir = result_json.parent
    chosen = parse_formats(formats) if formats else list(result.policy.settings.get("report", {}).get("formats") or FORMATS)
    for rel in missing_artifacts(result, result_dir):
        typer.echo(f"ci-gate: warning: {result_dir / rel}: image missing or not a PNG; the report shows a placeholder", err=True)
    written = render(
        result,
        result_dir,
        chosen,
        out_dir=out,
        links=SummaryLinks(run_url=run_url, artifact_name=artifact_name),
        source_root=source_root.resolve() if source_root else None,
    )
    for path in written.values():
        typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.command("report")(report)
