"""Redaction of secrets by value, applied wherever ci-gate's GitHub code hands text to the outside.

The token is registered once (by the client, or by the CLI as soon as it reads it) and every
output boundary runs text through :func:`redact`: exception messages, printed lines, values
written to ``$GITHUB_OUTPUT`` and the job summary, and log records. Redacting by value, not by
where the text came from, also covers a server that echoes the token back in a success body.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "***"

# Shorter values would mask ordinary words; no GitHub token format is this short.
_MIN_SECRET_CHARS = 8

_secrets: set[str] = set()
_lock = threading.Lock()

# Prefixes of GitHub's token formats (personal, OAuth, user-to-server, server-to-server, refresh,
# fine-grained) and the 40-hex classic format.
TOKEN_LIKE = re.compile(r"^(gh[pousr]_|github_pat_)|^[0-9a-f]{40}$")


def register_secret(value: str | None) -> None:
    """Mask ``value`` (and its whitespace-stripped form) in everything :func:`redact` sees from now on."""
    if not value:
        return
    with _lock:
        for candidate in (value, value.strip()):
            if len(candidate) >= _MIN_SECRET_CHARS:
                _secrets.add(candidate)


def redact(text: str, *extra: str | None) -> str:
    """``text`` with every registered secret (and each of ``extra``) replaced by ``***``."""
    if not isinstance(text, str):
        text = str(text)
    with _lock:
        values = set(_secrets)
    values.update(v for v in extra if v and len(v) >= _MIN_SECRET_CHARS)
    # Longest first: a secret that contains another must be masked whole.
    for value in sorted(values, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


def contains_secret(text: str) -> bool:
    return redact(text) != text


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with the secrets masked; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's business, not ours
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            # The formatter would render the traceback after the filters ran; render it here.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


# A logger's filters see only the records logged on that logger itself, not those of its
# children, so each logger that may see a URL or a header is named here.
_LOGGERS = (
    "ci_gate",
    "ci_gate.github",
    "urllib3",
    "urllib3.connectionpool",
    "urllib3.util.retry",
    "urllib3.poolmanager",
    "urllib3.response",
    "requests",
)
_FILTER = RedactingFilter()


def install_log_filter() -> None:
    """Attach the redacting filter to the loggers the GitHub client's stack writes to (idempotent)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
