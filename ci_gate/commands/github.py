"""``ci-gate github ...``: the GitHub steps of the action, over the REST API.

This module is the only place that reads the Actions environment (GITHUB_REPOSITORY, GITHUB_SHA,
...): typer resolves the ``envvar`` options, and the token is read from the variable that
``--token-env`` names, so it never appears on a command line or in ``ps``. Bad input exits 2, a
failed API call exits 1 (GitHubError).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ci_gate.errors import InputError

# requests, pydantic and jinja2 load inside the commands that use them, so the CLI (and
# `ci-gate --help`) starts without them.
if TYPE_CHECKING:
    from ci_gate.github import GitHubClient

_TOKEN_ENV = typer.Option("GITHUB_TOKEN", "--token-env", help="Environment variable that holds the token.")
_REPO = typer.Option(None, "--repo", envvar="GITHUB_REPOSITORY", help="owner/name.")
_API_URL = typer.Option(None, "--api-url", envvar="GITHUB_API_URL", help="REST API root (default: https://api.github.com).")
_GITHUB_OUTPUT = typer.Option(None, "--github-output", envvar="GITHUB_OUTPUT", help="File to append step outputs to.")


def _required(value: str | None, option: str, env: str) -> str:
    if not value:
        raise InputError(option, f"required: pass {option} or set ${env}")
    return value


def _client(token_env: str, repo: str | None, api_url: str | None) -> GitHubClient:
    from ci_gate.github import DEFAULT_API_URL, GitHubClient

    token = os.environ.get(token_env, "")
    if not token:
        raise InputError("--token-env", f"${token_env} is empty or not set")
    try:
        return GitHubClient(api_url or DEFAULT_API_URL, _required(repo, "--repo", "GITHUB_REPOSITORY"), token)
    except ValueError as exc:
        raise InputError("--repo", str(exc)) from None


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise InputError(path, "file not found")
    return path.read_bytes()


def _write_outputs(github_output: Path | None, values: dict[str, str]) -> None:
    if github_output is not None:
        from ci_gate.github.outputs import write_outputs

        write_outputs(github_output, values)


def upload_sarif_command(
    sarif: Path = typer.Argument(..., help="report.sarif written by ci-gate."),
    sha: str | None = typer.Option(None, "--sha", envvar="GITHUB_SHA", help="Commit the analysis belongs to."),
    ref: str | None = typer.Option(None, "--ref", envvar="GITHUB_REF", help="Full ref, e.g. refs/heads/main or refs/pull/1/merge."),
    tool_name: str = typer.Option("ci-gate", "--tool-name"),
    checkout: Path | None = typer.Option(
        None, "--checkout", envvar="GITHUB_WORKSPACE", help="Checkout folder; lets GitHub relativise absolute paths."
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until GitHub has processed (or rejected) the upload."),
    wait_timeout: float = typer.Option(120.0, "--wait-timeout", help="Seconds to wait for processing."),
    token_env: str = _TOKEN_ENV,
    repo: str | None = _REPO,
    api_url: str | None = _API_URL,
    github_output: Path | None = _GITHUB_OUTPUT,
) -> None:
    """Upload a SARIF file to code scanning."""
    from ci_gate.github.code_scanning import prepare_sarif, upload_sarif, wait_for_processing

    try:
        prepared = prepare_sarif(_read(sarif))
    except ValueError as exc:
        raise InputError(sarif, f"not valid JSON: {exc}") from None
    commit_sha = _required(sha, "--sha", "GITHUB_SHA")
    full_ref = _required(ref, "--ref", "GITHUB_REF")
    with _client(token_env, repo, api_url) as client:
        upload = upload_sarif(
            client, prepared, commit_sha=commit_sha, ref=full_ref, tool_name=tool_name,
            checkout_uri=checkout.resolve().as_uri() if checkout else None,
        )
        typer.echo(f"uploaded {sarif} to code scanning (id {upload.id})")
        state = wait_for_processing(client, upload, timeout_s=wait_timeout) if wait else "pending"
        typer.echo(f"processing status: {state}")
    _write_outputs(github_output, {"sarif-id": upload.id})


def comment_command(
    summary: Path = typer.Argument(..., help="Markdown to post (summary.md)."),
    pr: int | None = typer.Option(None, "--pr", help="Pull request number (default: from GITHUB_REF refs/pull/N/...)."),
    ref: str | None = typer.Option(None, "--ref", envvar="GITHUB_REF", hidden=True),
    key: str | None = typer.Option(None, "--key", help="Keeps one comment per key, e.g. the checkpoint path in a matrix."),
    token_env: str = _TOKEN_ENV,
    repo: str | None = _REPO,
    api_url: str | None = _API_URL,
) -> None:
    """Post the summary on the pull request, or update ci-gate's earlier comment there."""
    from ci_gate.github.comments import upsert_comment
    from ci_gate.github.pulls import pr_number_from_ref

    markdown = _read(summary).decode("utf-8", errors="replace")
    number = pr if pr is not None else pr_number_from_ref(ref or "")
    if number is None:
        typer.echo("not a pull request (no --pr and GITHUB_REF is not refs/pull/N/...): no comment posted")
        return
    with _client(token_env, repo, api_url) as client:
        comment = upsert_comment(client, number=number, markdown=markdown, key=key)
    typer.echo(f"{'posted' if comment.created else 'updated'} comment {comment.url or comment.id}")


def commit_repair_command(
    repaired: Path = typer.Argument(..., help="The repaired (and re-verified) checkpoint file."),
    path: str = typer.Option(..., "--path", help="Repository-relative path the checkpoint replaces."),
    base_sha: str | None = typer.Option(None, "--base-sha", envvar="GITHUB_SHA", help="Commit the repair starts from."),
    base_branch: str | None = typer.Option(
        None, "--base-branch", envvar=["GITHUB_HEAD_REF", "GITHUB_REF_NAME"], help="Branch the pull request targets."
    ),
    branch: str | None = typer.Option(None, "--branch", help="Branch for the repair (default: ci-gate/repair/<base-branch>)."),
    message: str | None = typer.Option(None, "--message", help="Commit message."),
    title: str | None = typer.Option(None, "--title", help="Pull request title."),
    body_file: Path | None = typer.Option(None, "--body-file", help="Markdown for the pull request description."),
    token_env: str = _TOKEN_ENV,
    repo: str | None = _REPO,
    api_url: str | None = _API_URL,
    github_output: Path | None = _GITHUB_OUTPUT,
) -> None:
    """Commit a repaired checkpoint to a branch and open (or update) a pull request for it."""
    from ci_gate.github.branch_commit import commit_file, repo_relative
    from ci_gate.github.pulls import open_or_update_pr

    content = _read(repaired)
    sha = _required(base_sha, "--base-sha", "GITHUB_SHA")
    target = _required(base_branch, "--base-branch", "GITHUB_HEAD_REF or GITHUB_REF_NAME")
    head = branch or f"ci-gate/repair/{target}"
    try:
        rel = repo_relative(path)
    except ValueError as exc:
        raise InputError("--path", str(exc)) from None
    body = body_file.read_text(encoding="utf-8") if body_file else _default_pr_body(rel)
    with _client(token_env, repo, api_url) as client:
        try:
            commit = commit_file(
                client, branch=head, base_sha=sha, path=rel, content=content,
                message=message or f"ci-gate: repaired checkpoint {rel}",
            )
        except ValueError as exc:
            raise InputError(repaired, str(exc)) from None
        pr = open_or_update_pr(client, head=head, base=target, title=title or f"ci-gate: repaired checkpoint {rel}", body=body)
    typer.echo(f"committed {commit} to {head}; {'opened' if pr.created else 'updated'} pull request {pr.url}")
    _write_outputs(github_output, {"repair-commit": commit, "pr-url": pr.url, "pr-number": str(pr.number)})


def _default_pr_body(path: str) -> str:
    return (
        f"ci-gate found a backdoor in `{path}` and repaired it: the prompt learner was fine-tuned on "
        "clean data carrying the reconstructed trigger, and the repaired checkpoint was verified again "
        "and passed before this commit.\n\n"
        "Pushes made with the workflow's token do not start workflow runs, so CI will not rerun on this "
        "branch by itself: the verification above is the one that counts. Review the report artifact of "
        "the workflow run before merging.\n"
    )


def outputs_command(
    result_json: Path = typer.Argument(..., help="result.json of the scan."),
    github_output: Path | None = _GITHUB_OUTPUT,
    step_summary: Path | None = typer.Option(None, "--step-summary", envvar="GITHUB_STEP_SUMMARY", help="Job summary file."),
    run_url: str | None = typer.Option(None, "--run-url", help="Workflow run the summary links to."),
    artifact_name: str | None = typer.Option(None, "--artifact-name", help="Workflow artifact holding the reports."),
) -> None:
    """Set the action outputs (verdict, target-class, report paths) and append the job summary."""
    from ci_gate.github.outputs import append_step_summary, result_outputs
    from ci_gate.report.markdown import SummaryLinks, summary_markdown
    from ci_gate.result import load_result

    result = load_result(result_json)
    values = result_outputs(result, result_json)
    _write_outputs(github_output, values)
    if step_summary is not None:
        append_step_summary(step_summary, summary_markdown(result, SummaryLinks(run_url, artifact_name)))
    for name, value in values.items():
        typer.echo(f"{name}={value}")


def register(root: typer.Typer) -> None:
    group = typer.Typer(name="github", help="GitHub steps of the ci-gate action (REST API, no Actions toolkit).", no_args_is_help=True)
    group.command("upload-sarif")(upload_sarif_command)
    group.command("comment")(comment_command)
    group.command("commit-repair")(commit_repair_command)
    group.command("outputs")(outputs_command)
    root.add_typer(group, name="github")
