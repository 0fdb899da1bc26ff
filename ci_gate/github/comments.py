"""One ci-gate comment per pull request (per checkpoint), updated in place on every run.

Our comment is recognised by a hidden HTML marker on its first line, so reruns edit it instead of
piling up new comments. A key (the checkpoint path) gives each model of a workflow matrix its own
comment.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from ci_gate.github.client import GitHubClient

MARKER = "<!-- ci-gate -->"
MAX_BODY_CHARS = 65536  # GitHub's limit for an issue comment


@dataclass(frozen=True)
class Comment:
    id: int
    url: str
    created: bool


class _CommentShape(BaseModel):
    # The fields ci-gate reads; GitHub sends many more, ignored.
    id: int
    body: str | None = None
    html_url: str = ""


def marker_line(key: str | None = None) -> str:
    if not key:
        return MARKER
    # "--" cannot appear inside an HTML comment (one pass of replace leaves "--" of "---"); a key
    # is a path, so nothing is lost. A line break would end the marker line (_is_ours reads one).
    key = " ".join(key.replace(">", "").split())
    while "--" in key:
        key = key.replace("--", "-")
    return f"<!-- ci-gate key={key} -->"


def comment_body(markdown: str, key: str | None = None) -> str:
    body = f"{marker_line(key)}\n{markdown}"
    if len(body) > MAX_BODY_CHARS:
        note = "\n\n_(truncated: the full summary is in the workflow run's job summary)_\n"
        body = body[: MAX_BODY_CHARS - len(note)] + note
    return body


def _is_ours(body: str | None, marker: str) -> bool:
    return bool(body) and body.split("\n", 1)[0].strip() == marker


def upsert_comment(client: GitHubClient, *, number: int, markdown: str, key: str | None = None) -> Comment:
    marker = marker_line(key)
    body = comment_body(markdown, key)
    for comment in client.paginate(client.repo_path(f"/issues/{number}/comments"), shape=_CommentShape):
        if _is_ours(comment.body, marker):
            updated = client.patch(client.repo_path(f"/issues/comments/{comment.id}"), {"body": body}, shape=_CommentShape)
            return Comment(id=updated.id, url=updated.html_url, created=False)
    created = client.post(client.repo_path(f"/issues/{number}/comments"), {"body": body}, shape=_CommentShape)
    return Comment(id=created.id, url=created.html_url, created=True)
