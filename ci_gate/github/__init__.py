"""GitHub integration over the REST API with plain requests (no Actions toolkit).

Library code takes every setting (API URL, repository, token, file paths) as an argument; only the
CLI command in ``ci_gate/commands/github.py`` reads the Actions environment.
"""

from ci_gate.github.client import DEFAULT_API_URL, GitHubClient, GitHubError, RetryPolicy

__all__ = ["DEFAULT_API_URL", "GitHubClient", "GitHubError", "RetryPolicy"]
