"""GitHub integration over the REST API with plain requests (no Actions toolkit).

Library code takes every setting (API URL, repository, token, file paths) as an argument; only the
CLI command in ``ci_gate/commands/github.py`` reads the Actions environment.

The client's names load on first use, so that importing ``ci_gate.github.redact`` (which every
github command does at CLI start) does not load requests.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_API_URL", "GitHubBadResponse", "GitHubClient", "GitHubError", "RetryPolicy"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ci_gate.github import client

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
