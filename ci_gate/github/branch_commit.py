"""Commit one file to a branch through the git data API (no git checkout, no push credentials).

blob -> tree on top of the base commit's tree -> commit whose parent is the base commit -> branch
ref created or moved there. The branch is ci-gate's own: it always holds exactly "base commit +
this file", so a rerun replaces an older repair instead of stacking on it.
"""

from __future__ import annotations

import base64
import posixpath
from typing import Annotated
from urllib.parse import quote

from pydantic import BaseModel, StringConstraints

from ci_gate.github.client import GitHubClient

# The git data API accepts blobs up to 100 MB.
MAX_BLOB_BYTES = 100 * 1024 * 1024


# SHA-1 object names, or SHA-256 ones in a repository that uses them. The commit's goes into
# $GITHUB_OUTPUT and into later URLs, so nothing else is accepted.
Sha = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{40}([0-9a-f]{24})?$")]


class _ObjectShape(BaseModel):
    sha: Sha


class _CommitShape(BaseModel):
    sha: Sha
    tree: _ObjectShape


class _RefShape(BaseModel):
    object: _ObjectShape


def _ref_path(client: GitHubClient, branch: str) -> str:
    return client.repo_path(f"/git/ref/heads/{quote(branch, safe='/')}")


def repo_relative(path: str) -> str:
    """A clean repository-relative path with forward slashes; ValueError if it leaves the repository."""
    rel = posixpath.normpath(path.replace("\\", "/"))
    if rel in (".", "..") or rel.startswith(("/", "../")):
        raise ValueError(f"not a path inside the repository: {path!r}")
    return rel


def commit_file(
    client: GitHubClient,
    *,
    branch: str,
    base_sha: str,
    path: str,
    content: bytes,
    message: str,
) -> str:
    """Point ``refs/heads/<branch>`` at a new commit adding ``content`` at ``path``; returns its sha."""
    if len(content) > MAX_BLOB_BYTES:
        raise ValueError(f"{path}: {len(content)} bytes is over the git data API's 100 MB blob limit")
    path = repo_relative(path)
    blob = client.post(
        client.repo_path("/git/blobs"),
        {"content": base64.b64encode(content).decode("ascii"), "encoding": "base64"},
        shape=_ObjectShape,
    )
    base_commit = client.get(client.repo_path(f"/git/commits/{quote(base_sha, safe='')}"), shape=_CommitShape)
    tree = client.post(
        client.repo_path("/git/trees"),
        {
            "base_tree": base_commit.tree.sha,
            "tree": [{"path": path, "mode": "100644", "type": "blob", "sha": blob.sha}],
        },
        shape=_ObjectShape,
    )
    commit = client.post(
        client.repo_path("/git/commits"),
        {"message": message, "tree": tree.sha, "parents": [base_sha]},
        shape=_ObjectShape,
    )
    if client.get_optional(_ref_path(client, branch), shape=_RefShape) is None:
        client.post(client.repo_path("/git/refs"), {"ref": f"refs/heads/{branch}", "sha": commit.sha}, shape=_RefShape)
    else:
        # force: the branch is rebuilt from the base commit on every run (see module docstring).
        client.patch(
            client.repo_path(f"/git/refs/heads/{quote(branch, safe='/')}"),
            {"sha": commit.sha, "force": True},
            shape=_RefShape,
        )
    return commit.sha
