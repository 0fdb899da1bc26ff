"""Upload a SARIF file to GitHub code scanning (POST /repos/{owner}/{repo}/code-scanning/sarifs)."""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, StringConstraints

from ci_gate.github.client import GitHubClient, GitHubError
from ci_gate.report.sarif import check_github_limits


@dataclass(frozen=True)
class SarifUpload:
    id: str
    url: str | None


class _UploadShape(BaseModel):
    # The id goes into the URL polled next: GitHub's are UUIDs.
    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,100}$")]
    url: str | None = None


class _ProcessingShape(BaseModel):
    processing_status: str = "pending"
    errors: list[Any] | None = None


def encode_sarif(sarif: bytes) -> str:
    """gzip then base64, the encoding the endpoint requires."""
    return base64.b64encode(gzip.compress(sarif)).decode("ascii")


@dataclass(frozen=True)
class PreparedSarif:
    """A SARIF file checked against GitHub's limits and encoded for upload."""

    encoded: str


def prepare_sarif(sarif: bytes) -> PreparedSarif:
    """Check before anything is sent: ValueError if not JSON, SarifLimitError if GitHub would refuse it."""
    check_github_limits(json.loads(sarif), sarif)
    return PreparedSarif(encode_sarif(sarif))


def upload_sarif(
    client: GitHubClient,
    sarif: PreparedSarif,
    *,
    commit_sha: str,
    ref: str,
    tool_name: str = "ci-gate",
    checkout_uri: str | None = None,
) -> SarifUpload:
    body = {"commit_sha": commit_sha, "ref": ref, "sarif": sarif.encoded, "tool_name": tool_name}
    if checkout_uri:
        body["checkout_uri"] = checkout_uri
    answer = client.post(client.repo_path("/code-scanning/sarifs"), body, shape=_UploadShape)
    return SarifUpload(id=answer.id, url=answer.url)


def wait_for_processing(
    client: GitHubClient,
    upload: SarifUpload,
    *,
    timeout_s: float = 120.0,
    poll_s: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Poll until GitHub has processed the upload; raise if it rejected the file.

    Returns the final processing_status ("complete"), or "pending" when the timeout (or the
    client's deadline) runs out: processing continues on GitHub's side, so a slow queue is not a
    failure of the gate.
    """
    path = client.repo_path(f"/code-scanning/sarifs/{upload.id}")
    deadline = clock() + min(timeout_s, client.time_left())
    while True:
        # Right after the upload GitHub may not know the id yet (404): that is still "pending".
        status = client.get_optional(path, shape=_ProcessingShape) or _ProcessingShape()
        state = status.processing_status
        if state == "failed":
            errors = "; ".join(str(e) for e in status.errors or []) or "no detail given"
            raise GitHubError("GET", path, None, f"code scanning rejected the SARIF: {errors}")
        # A poll that would start past the deadline is not made: "pending" is the honest answer.
        if state == "complete" or clock() + poll_s >= deadline:
            return state
        sleep(poll_s)
