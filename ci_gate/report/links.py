"""The documentation addresses reports link to (SARIF ``informationUri`` and each rule's ``helpUri``).

GitHub's SARIF ingestion rejects relative URIs, and Microsoft's multitool asks for both links
(SARIF2005, SARIF2012), so every address here is absolute https. Where ci-gate is published
(``ci_gate.PROJECT_URL``, a GitHub repository) the tool links to it and each rule to its section
of docs/alerts.md on the default branch (``blob/HEAD`` exists in every repository, a release tag
may not). Until then both fall back to METHOD_URL, the paper that defines the detection method:
an address that exists and says what the alerts measure, rather than a guessed repository name
that someone else could register.
"""

from __future__ import annotations

import urllib.parse

METHOD_URL = "https://arxiv.org/abs/2604.09101"  # CLIP-Inspector (../shared/docs/method.md cites it)
ALERTS_DOC = "docs/alerts.md"


def check_absolute_https(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.netloc:
        raise ValueError(f"{url!r} is not an absolute https URL (GitHub code scanning rejects relative URIs)")
    return url


def information_uri(project_url: str | None) -> str:
    return check_absolute_https(project_url or METHOD_URL)


def help_uri(project_url: str | None, anchor: str) -> str:
    """The rule's section of docs/alerts.md; ``anchor`` is GitHub's slug of its heading."""
    if not project_url:
        return METHOD_URL
    return check_absolute_https(f"{project_url.rstrip('/')}/blob/HEAD/{ALERTS_DOC}#{anchor}")
