"""``ci-gate github ...``: the GitHub steps of the action, over the REST API.

This module is the only place that reads the Actions environment (GITHUB_REPOSITORY, GITHUB_SHA,
...): typer resolves the ``envvar`` options, and the token is read from the variable that
``--token-env`` names, so it never appears on a command line or in ``ps``. Bad input, and an
answer from the API that cannot be used, exit 2; a failed API call exits 1 (GitHubError).

The token is registered for redaction as soon as it is read: everything these commands print,
raise or write to $GITHUB_OUTPUT / $GITHUB_STEP_SUMMARY goes through ``redact``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ci_gate.errors import CiGateError, InputError
from ci_gate.github.redact import TOKEN_LIKE, contains_secret, redact, register_secret

# requests, pydantic and jinja2 load inside the commands that use them, so the CLI (and
# `ci-gate --help`) starts without them.
if TYPE_CHECKING:
    from ci_gate.github import GitHubClient

_TOKEN_ENV = typer.Option("GITHUB_TOKEN", "--token-env", help="Environment variable that holds the token.")
_REPO = typer.Option(None, "--repo", envvar="GITHUB_REPOSITORY", help="owner/name.")
_API_URL = typer.Option(None, "--api-url", envvar="GITHUB_API_URL", help="REST API root (default: https://api.github.com).")
_GITHUB_OUTPUT = typer.Option(None, "--github-output", envvar="GITHUB_OUTPUT", help="File to append step outputs to.")
_API_TIMEOUT = typer.Option(
    60.0, "--api-timeout", help="Deadline in seconds for all of this command's GitHub API calls, retries included."
)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _echo(text: str) -> None:
    typer.echo(redact(text))


@contextlib.contextmanager
def _redacted_errors() -> Iterator[None]:
    """No exception leaves a github command with a registered secret in its text.

    ci-gate's own errors get their message redacted in place. Anything else is a bug of ours
    (exit 3 in the CLI); it keeps its traceback unless its text, or that of an exception it
    chains to, holds a secret: then only its type and the redacted text go on.
    """
    try:
        yield
    except CiGateError as exc:
        exc.args = tuple(redact(a) if isinstance(a, str) else a for a in exc.args)
        raise
    except Exception as exc:
        chain, seen = [], set()
        link: BaseException | None = exc
        while link is not None and id(link) not in seen:
            seen.add(id(link))
            chain.append(link)
            link = link.__cause__ or link.__context__
        if any(contains_secret(f"{e!s} {e!r}") for e in chain):
            raise RuntimeError(redact(f"{type(exc).__name__}: {exc}")) from None
        raise


def _required(value: str | None, option: str, env: str) -> str:
    if not value:
        raise InputError(option, f"required: pass {option} or set ${env}")
    return value


def _token(token_env: str) -> str:
    """The token from the variable ``--token-env`` names, surrounding whitespace (a pasted newline) stripped."""
    if TOKEN_LIKE.search(token_env) or not _ENV_NAME.fullmatch(token_env):
        # Someone passed the token itself: mask it everywhere from here on, and never show it.
        register_secret(token_env)
        raise InputError(
            "--token-env",
            "expects the name of an environment variable that holds the token; the value given is not a "
            "variable name (it looks like a token, so it is not shown)",
        )
    raw = os.environ.get(token_env, "")
    register_secret(raw)
    token = raw.strip()
    if not token:
        raise InputError("--token-env", f"${token_env} is empty or not set")
    if any(ch.isspace() or not ch.isprintable() or not ch.isascii() for ch in token):
        raise InputError("--token-env", f"${token_env} holds spaces or characters a token cannot contain (value not shown)")
    return token


def _client(token_env: str, repo: str | None, api_url: str | None, api_timeout: float) -> GitHubClient:
    from ci_gate.github import DEFAULT_API_URL, GitHubClient

    token = _token(token_env)
    if not api_timeout > 0:
        raise InputError("--api-timeout", f"must be a positive number of seconds, got {api_timeout}")
    repository = _required(repo, "--repo", "GITHUB_REPOSITORY")
    url = api_url or DEFAULT_API_URL
    try:
        return GitHubClient(url, repository, token, deadline_s=api_timeout)
    except ValueError as exc:
        flag = "--api-url" if "API URL" in str(exc) else "--repo"
        raise InputError(flag, redact(str(exc))) from None


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise InputError(path, "file not found")
    return path.read_bytes()


def _write_outputs(github_output: Path | None, values: dict[str, str]) -> None:
    if github_output is not None:
        from ci_gate.github.outputs import write_outputs  # redacts the values

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
    wait_timeout: float = typer.Option(
        120.0, "--wait-timeout", help="Seconds to wait for processing, on top of --api-timeout."
    ),
    token_env: str = _TOKEN_ENV,
    repo: str | None = _REPO,
    api_url: str | None = _API_URL,
    github_output: Path | None = _GITHUB_OUTPUT,
    api_timeout: float = _API_TIMEOUT,
) -> None:
    """Upload a SARIF file to code scanning."""
    from ci_gate.github.code_scanning import prepare_sarif, upload_sarif, wait_for_processing

    with _redacted_errors():
        try:
            prepared = prepare_sarif(_read(sarif))
        except ValueError as exc:
            raise InputError(sarif, f"not valid JSON: {exc}") from None
        commit_sha = _required(sha, "--sha", "GITHUB_SHA")
        full_ref = _required(ref, "--ref", "GITHUB_REF")
        if wait and not wait_timeout >= 0:
            raise InputError("--wait-timeout", f"must be zero or more seconds, got {wait_timeout}")
        # One deadline for the whole command: the calls' own, plus the processing wait.
        deadline = api_timeout + (wait_timeout if wait else 0.0) if api_timeout > 0 else api_timeout
        with _client(token_env, repo, api_url, deadline) as client:
            upload = upload_sarif(
                client, prepared, commit_sha=commit_sha, ref=full_ref, tool_name=tool_name,
                checkout_uri=checkout.resolve().as_uri() if checkout else None,
            )
            _echo(f"uploaded {sarif} to code scanning (id {upload.id})")
            state = wait_for_processing(client, upload, timeout_s=wait_timeout) if wait else "pending"
            _echo(f"processing status: {state}")
        _write_outputs(github_output, {"sarif-id": upload.id})


def comment_command(
    summary: Path = typer.Argument(..., help="Markdown to post (summary.md)."),
    pr: int | None = typer.Option(None, "--pr", help="Pull request number (default: from GITHUB_REF refs/pull/N/...)."),
    ref: str | None = typer.Option(None, "--ref", envvar="GITHUB_REF", hidden=True),
    key: str | None = typer.Option(None, "--key", help="Keeps one comment per key, e.g. the checkpoint path in a matrix."),
    token_env: str = _TOKEN_ENV,
    repo: str | None = _REPO,
    api_url: str | None = _API_URL,
    api_timeout: float = _API_TIMEOUT,
) -> None:
    """Post the summary on the pull request, or update ci-gate's earlier comment there."""
    from ci_gate.github.comments import upsert_comment
    from ci_gate.github.pulls import pr_number_from_ref

    with _redacted_errors():
        markdown = _read(summary).decode("utf-8", errors="replace")
        number = pr if pr is not None else pr_number_from_ref(ref or "")
        if number is None:
            _echo("not a pull request (no --pr and GITHUB_REF is not refs/pull/N/...): no comment posted")
            return
        with _client(token_env, repo, api_url, api_timeout) as client:
            # The summary goes to GitHub under this token: it must not carry the token itself.
            comment = upsert_comment(client, number=number, markdown=redact(markdown), key=key)
        _echo(f"{'posted' if comment.created else 'updated'} comment {comment.url or comment.id}")


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
    api_timeout: float = _API_TIMEOUT,
) -> None:
    """Commit a repaired checkpoint to a branch and open (or update) a pull request for it."""
    from ci_gate.github.branch_commit import commit_file, repo_relative
    from ci_gate.github.pulls import open_or_update_pr

    with _redacted_errors():
        content = _read(repaired)
        sha = _required(base_sha, "--base-sha", "GITHUB_SHA")
        target = _required(base_branch, "--base-branch", "GITHUB_HEAD_REF or GITHUB_REF_NAME")
        head = branch or f"ci-gate/repair/{target}"
        try:
            rel = repo_relative(path)
        except ValueError as exc:
            raise InputError("--path", str(exc)) from None
        body = _read(body_file).decode("utf-8", errors="replace") if body_file else _default_pr_body(rel)
        with _client(token_env, repo, api_url, api_timeout) as client:
            try:
                commit = commit_file(
                    client, branch=head, base_sha=sha, path=rel, content=content,
                    message=message or f"ci-gate: repaired checkpoint {rel}",
                )
            except ValueError as exc:
                raise InputError(repaired, str(exc)) from None
            pr = open_or_update_pr(
                client, head=head, base=target, title=title or f"ci-gate: repaired checkpoint {rel}", body=redact(body)
            )
        _echo(f"committed {commit} to {head}; {'opened' if pr.created else 'updated'} pull request {pr.url}")
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

    with _redacted_errors():
        result = load_result(result_json)
        values = result_outputs(result, result_json)
        _write_outputs(github_output, values)
        if step_summary is not None:
            append_step_summary(step_summary, summary_markdown(result, SummaryLinks(run_url, artifact_name)))
        from ci_gate.report.sanitize import plain

        for name, value in values.items():
            # the log line, not the output: target-class is the checkpoint author's text, and a
            # "##[set-output ...]" or "##[add-mask]" in it would be a workflow command to the runner
            _echo(f"{name}={plain(value, None)}")


def register(root: typer.Typer) -> None:
    group = typer.Typer(name="github", help="GitHub steps of the ci-gate action (REST API, no Actions toolkit).", no_args_is_help=True)
    group.command("upload-sarif")(upload_sarif_command)
    group.command("comment")(comment_command)
    group.command("commit-repair")(commit_repair_command)
    group.command("outputs")(outputs_command)
    root.add_typer(group, name="github")
