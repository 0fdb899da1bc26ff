"""``ci-gate report``: re-render the reports of a saved result.json (no torch, no GPU)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import typer

from ci_gate.commands import options
from ci_gate.errors import InputError
from ci_gate.report.formats import format_names, unknown_formats

# The registry lists names without loading the renderers (jinja2): they load when the command runs.
FORMATS_HELP = ",".join(format_names())


def parse_formats(spec: str) -> list[str]:
    formats = [f.strip().lower() for f in spec.split(",") if f.strip()]
    bad = unknown_formats(formats)
    if not formats or bad:
        raise InputError("--format", f"unknown format(s) {', '.join(bad) or repr(spec)}; choose from {FORMATS_HELP}")
    return formats


def saved_formats(result, result_json: Path, default: list[str]) -> list[str]:
    """The formats the scan's policy chose: an edited list there is bad input, not a crash."""
    saved = (result.policy.settings.get("report") or {}).get("formats") or list(default)
    if not isinstance(saved, list) or not all(isinstance(f, str) for f in saved) or unknown_formats(saved):
        raise InputError(result_json, "policy.settings.report.formats is not a list of report formats; pass --format")
    return saved


def report(
    result_json: Path = typer.Argument(..., help="A result.json written by `ci-gate verify`."),
    formats: str | None = typer.Option(
        None, "--format", "-f", help=f"Comma-separated formats from {FORMATS_HELP} (default: the policy's report.formats)."
    ),
    out: str | None = typer.Option(None, "--out", "-o", help="Output folder (default: the result's folder); replaced as a whole, atomically."),
    run_url: str | None = typer.Option(None, "--run-url", help="Workflow run the Markdown summary links to."),
    artifact_name: str | None = typer.Option(None, "--artifact-name", help="Workflow artifact holding the report bundle."),
    source_root: Path | None = typer.Option(
        None, "--source-root", help="Repository root, to make an absolute checkpoint path relative in SARIF."
    ),
    rescore: bool = typer.Option(False, "--rescore", help="Re-decide the saved scan under --policy plus --set overrides (no scan); needs --out; exits 1 when the re-decided gate fails."),
    policy: str | None = typer.Option(None, "--policy", "-p", help=f"With --rescore: the policy whose detection and report settings re-decide (default: default). {options.POLICY_HELP}"),
    overrides: list[str] = typer.Option([], "--set", help="With --rescore: override a detection or report setting, e.g. --set detection.k=3"),
) -> None:
    """Re-render HTML, SARIF, Markdown and JSON reports from a saved result.

    result.json itself is an input and is never rewritten: into its own folder only the other
    formats are rendered; into --out it is copied byte for byte.
    """
    from ci_gate.report import FORMATS, SummaryLinks, render
    from ci_gate.report.artifacts import missing_artifacts
    from ci_gate.report.folder import check_out_folder, own_folder, staged_folder
    from ci_gate.report.sanitize import plain
    from ci_gate.result import load_result

    result = load_result(result_json)
    result_dir = Path(os.path.realpath(result_json)).parent
    for flag, given in (("--set", overrides), ("--policy", policy)):
        if given and not rescore:
            raise InputError(flag, "only applies with --rescore (a saved result is otherwise rendered as it is)")
    if rescore:
        links = SummaryLinks(run_url=run_url, artifact_name=artifact_name)
        return _rescored(result, result_json, result_dir, formats, out, policy or "default", overrides, links, source_root)
    chosen = parse_formats(formats) if formats else saved_formats(result, result_json, FORMATS)
    for rel in missing_artifacts(result, result_dir):
        typer.echo(f"ci-gate: warning: {plain(result_dir / rel)}: image missing or not a PNG; the report shows a placeholder", err=True)
    in_place = out is None or (str(out).strip() and Path(os.path.realpath(out)) == result_dir)
    target = result_dir if in_place else check_out_folder(out, "--out", inputs=[("result", result_json)])
    rendered = [f for f in chosen if f != "json"]
    options = dict(links=SummaryLinks(run_url=run_url, artifact_name=artifact_name), source_root=source_root.resolve() if source_root else None)
    written: dict[str, Path] = {}
    if in_place and not own_folder(result_dir):
        # a result.json among other files (not a folder verify wrote): replacing the folder would
        # take those along, so each report is replaced on its own (still atomically per file)
        written = render(result, result_dir, rendered, **options)
    else:
        with staged_folder(target) as stage:
            if in_place:
                link_tree(result_dir, stage)  # the artifacts and result.json itself, unchanged
            elif "json" in chosen:
                shutil.copyfile(result_json, stage / "result.json")
            staged = render(result, result_dir, rendered, out_dir=stage, **options)
        written = {fmt: target / path.relative_to(stage) for fmt, path in staged.items()}
    if "json" in chosen:
        written = {"json": target / "result.json" if not in_place else Path(result_json), **written}
        written = {f: written[f] for f in chosen if f in written}
    for path in written.values():
        typer.echo(plain(path, None))


def _rescored(result, result_json: Path, result_dir: Path, formats: str | None, out: str | None, policy_spec: str, overrides: list[str], links, source_root: Path | None) -> None:
    """The saved scan re-decided (ci_gate.rescore) into a new folder: result.json there is the
    re-decided one; the source folder, its result.json included, is left as it is.

    The decision and the gate (report.fail_on) follow --policy and --set, never the file: a
    result.json anybody could edit must not be able to switch the gate off. Only what was scanned
    (ci_gate.rescore.SCAN_SHAPE) is read from it."""
    from ci_gate.report import FORMATS, render
    from ci_gate.report.folder import check_out_folder, staged_folder
    from ci_gate.report.sanitize import plain
    from ci_gate.rescore import SCAN_SHAPE, redecision_policy, rescore
    from ci_gate.scan_inputs import resolve_policy

    if out is None or not str(out).strip():
        raise InputError("--out", "--rescore writes a new result: give a folder other than the saved result's")
    real_out = Path(os.path.realpath(out))
    if real_out == result_dir or result_dir in real_out.parents:
        raise InputError("--out", "--rescore writes a new result: give a folder outside the saved result's")
    outside = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] not in ("detection", "report")]
    if outside:
        raise InputError("--set", f"{outside[0]!r}: only detection.* and report.* can change without scanning again")
    chosen_policy, _, policy_file = resolve_policy(policy_spec, overrides)  # as verify reads --policy and --set
    target = check_out_folder(out, "--out", inputs=[("result", result_json), ("policy", policy_file)])
    try:
        policy = redecision_policy(result, chosen_policy)
        decided = rescore(result, policy)
    except InputError as exc:
        raise InputError(result_json, exc.problem) from None
    except ValueError as exc:  # the decision rule's own input checks
        raise InputError(result_json, str(exc)) from None
    recorded = decided.policy.model_copy(update={"path": None if policy_file is None else str(policy_file)})  # as verify records it
    decided = decided.model_copy(update={"policy": recorded})
    differ = [key for key in SCAN_SHAPE if getattr(policy, key) != getattr(chosen_policy, key)]
    if differ:
        typer.echo(f"ci-gate: warning: the scan ran with other {', '.join(differ)} settings than policy {plain(policy.name)}'s; "
                   "its detection and report settings re-decide the scan as it ran", err=True)
    sources = _artifact_sources(decided, result_json, result_dir)
    chosen = parse_formats(formats) if formats else list(policy.report.formats or FORMATS)
    with staged_folder(target) as stage:
        for parts, src in sources:
            _place(src, stage.joinpath(*parts))
        decided.save(stage / "result.json")
        render(decided, stage, [f for f in chosen if f != "json"], links=links, source_root=source_root.resolve() if source_root else None)
    typer.echo(f"{decided.verdict}: re-decided under {plain(policy.name)} ({', '.join(overrides) or 'no --set'}) -> {plain(target / 'result.json', None)}")
    if decided.gate_fails(policy.report.fail_on):
        raise typer.Exit(1)


def _artifact_sources(result, result_json: Path, result_dir: Path) -> list[tuple[tuple[str, ...], Path]]:
    """(path below the new folder, file in the result's folder) for each file the result names.

    The new folder's path is the named one, so the copied result.json still names its files; an
    absolute path or one climbing out with '..' (a scan writes neither) is refused, since below
    the staging folder it would point outside --out. Files that are absent, or links out of the
    result's folder, are not copied (the reports show a placeholder, as `ci-gate report` does)."""
    from ci_gate.report.artifacts import named_files, relative_parts, resolve
    from ci_gate.report.sanitize import plain

    sources = []
    for field, rel in named_files(result):
        parts = relative_parts(rel)
        if parts is None:
            raise InputError(result_json, f"{field} {plain(rel)!r} is not a path inside the result's folder")
        src = resolve(result_dir, rel)
        if src is None:
            typer.echo(f"ci-gate: warning: {plain(result_dir / rel)}: named by {field} but missing or outside the result's folder; not copied", err=True)
            continue
        sources.append((parts, src))
    return sources


def _place(src: Path, dst: Path) -> None:
    """src's bytes as the new file dst. Never replaces a file: a path named twice is copied once,
    and the staging folder's own marker stays ci-gate's."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except FileExistsError:
        return
    except OSError:  # another filesystem, or no hard links there: a copy, still never over a file
        with src.open("rb") as fin, dst.open("xb") as fout:
            shutil.copyfileobj(fin, fout)


def link_tree(src: Path, dst: Path) -> None:
    """Mirror src into the (existing) folder dst with hard links: same bytes, same inodes, no copy."""
    for entry in os.scandir(src):
        target = dst / entry.name
        if entry.is_dir(follow_symlinks=False):
            target.mkdir(exist_ok=True)
            link_tree(Path(entry.path), target)
        elif entry.is_file(follow_symlinks=False) and not target.exists():
            try:
                os.link(entry.path, target)
            except OSError:
                shutil.copy2(entry.path, target)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
