"""A small GitHub REST client over plain requests: auth, retries, and errors that never leak the token.

Retries cover what GitHub documents as transient: 5xx answers and secondary rate limits (403/429
with Retry-After, or with x-ratelimit-remaining: 0 and a reset time). Any other 4xx is the
caller's mistake and raises GitHubError at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
import requests.auth

from ci_gate import __version__
from ci_gate.errors import CiGateError

API_VERSION = "2022-11-28"
DEFAULT_API_URL = "https://api.github.com"


class GitHubError(CiGateError):
    """A GitHub API call failed. Exit code 1: the gate could not do its job."""

    exit_code = 1

    def __init__(self, method: str, path: str, status: int | None, message: str):
        self.method = method
        self.path = path
        self.status = status
        self.message = message
        where = f"GitHub API {method} {path}"
        super().__init__(f"{where} failed: {status} {message}" if status else f"{where} failed: {message}")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff_s: float = 1.0  # first wait for 5xx and network errors; doubles each attempt
    max_wait_s: float = 120.0  # a rate-limit reset further away than this is an error, not a wait


class _BearerAuth(requests.auth.AuthBase):
    # An auth object rather than a plain header: requests would otherwise replace the header with
    # credentials from ~/.netrc, which self-hosted runners sometimes carry.
    def __init__(self, token: str):
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


class GitHubClient:
    """Calls to one repository (``owner/name``) on one API host."""

    def __init__(
        self,
        api_url: str,
        repo: str,
        token: str,
        *,
        retry: RetryPolicy = RetryPolicy(),
        timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ):
        owner, _, name = repo.partition("/")
        if not owner or not name or "/" in name:
            raise ValueError(f"repository must be 'owner/name', got {repo!r}")
        if not token:
            raise ValueError("a GitHub token is required")
        self.api_url = api_url.rstrip("/")
        self.repo = repo
        self._token = token
        self._retry = retry
        self._timeout = timeout_s
        self._sleep = sleep
        self._clock = clock
        self._session = requests.Session()
        self._session.auth = _BearerAuth(token)
        self._session.headers.update(
            {
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": f"ci-gate/{__version__}",
            }
        )

    def __repr__(self) -> str:
        return f"GitHubClient(api_url={self.api_url!r}, repo={self.repo!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> GitHubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def repo_path(self, suffix: str) -> str:
        return f"/repos/{self.repo}{suffix}"

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None) -> requests.Response:
        """One API call with retries; ``path`` is relative to the API root or an absolute next-page URL."""
        url = path if path.startswith(("http://", "https://")) else self.api_url + path
        shown = self._redact(path.replace(self.api_url, ""))
        for attempt in range(1, self._retry.attempts + 1):
            last = attempt == self._retry.attempts
            try:
                response = self._session.request(method, url, json=json, params=params, timeout=self._timeout)
            except requests.RequestException as exc:
                if last:
                    # from None: the chained exception carries the prepared request and its headers.
                    raise GitHubError(method, shown, None, self._redact(f"{type(exc).__name__}: {exc}")) from None
                self._sleep(self._backoff(attempt))
                continue
            if response.status_code < 400:
                return response
            wait = self._retry_wait(response, attempt)
            if wait is None or last:
                raise GitHubError(method, shown, response.status_code, self._redact(_error_message(response))) from None
            self._sleep(wait)
        raise AssertionError("unreachable")

    def _backoff(self, attempt: int) -> float:
        return self._retry.backoff_s * 2 ** (attempt - 1)

    def _retry_wait(self, response: requests.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying, or None if this answer is final."""
        status = response.status_code
        if status >= 500:
            return self._backoff(attempt)
        if status not in (403, 429):
            return None
        headers = response.headers
        if "retry-after" in headers:
            wait = _seconds(headers["retry-after"])
        elif headers.get("x-ratelimit-remaining") == "0" and "x-ratelimit-reset" in headers:
            wait = _seconds(headers["x-ratelimit-reset"]) - self._clock()
        elif status == 429:
            wait = self._backoff(attempt)
        else:
            return None  # a plain 403: missing permission, not a rate limit
        wait = max(wait, 0.0)
        return wait if wait <= self._retry.max_wait_s else None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None).json()

    def post(self, path: str, body: dict) -> Any:
        return self.request("POST", path, json=body).json()

    def patch(self, path: str, body: dict) -> Any:
        return self.request("PATCH", path, json=body).json()

    def get_optional(self, path: str) -> Any | None:
        """GET that answers None for 404 (a branch or file that does not exist yet)."""
        try:
            return self.get(path)
        except GitHubError as exc:
            if exc.status == 404:
                return None
            raise

    def paginate(self, path: str, per_page: int = 100) -> Iterator[Any]:
        """Items of a list endpoint across pages, following the Link header GitHub sends."""
        response = self.request("GET", path, params={"per_page": per_page})
        while True:
            yield from response.json()
            next_url = response.links.get("next", {}).get("url")
            if not next_url:
                return
            if not next_url.startswith(self.api_url + "/"):
                # The session sends the token with every request: never to another host.
                raise GitHubError("GET", self._redact(path), None, "pagination link leaves the API host")
            response = self.request("GET", next_url)


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return 60.0  # GitHub's advice for a secondary limit without a usable header: wait a minute


def _error_message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason or "error"
    if not isinstance(body, dict):
        return response.reason or "error"
    message = str(body.get("message") or response.reason or "error")
    details = [str(e.get("message") or e.get("code") or e) if isinstance(e, dict) else str(e) for e in body.get("errors", [])]
    return f"{message} ({'; '.join(details)})" if details else message
