"""Open a pull request for a head branch, or update the one already open for it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel

from ci_gate.github.client import GitHubClient


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str
    created: bool


class _PullShape(BaseModel):
    number: int
    html_url: str


def pr_number_from_ref(ref: str) -> int | None:
    """``refs/pull/<n>/merge`` or ``refs/pull/<n>/head`` -> n; other refs are not pull requests."""
    match = re.fullmatch(r"refs/pull/(\d+)/(?:merge|head)", ref or "")
    return int(match.group(1)) if match else None


def open_or_update_pr(client: GitHubClient, *, head: str, base: str, title: str, body: str) -> PullRequest:
    owner = client.repo.split("/")[0]
    existing = client.get(client.repo_path("/pulls"), shape=list[_PullShape], head=f"{owner}:{head}", base=base, state="open")
    if existing:
        pr = client.patch(client.repo_path(f"/pulls/{existing[0].number}"), {"title": title, "body": body}, shape=_PullShape)
        return PullRequest(number=pr.number, url=pr.html_url, created=False)
    pr = client.post(client.repo_path("/pulls"), {"title": title, "head": head, "base": base, "body": body}, shape=_PullShape)
    return PullRequest(number=pr.number, url=pr.html_url, created=True)
