"""A small GitHub REST client over requests: auth, retries, one deadline, and errors that never leak the token.

Retries are urllib3's :class:`~urllib3.util.Retry` on requests' HTTPAdapter, limited to what is
safe to send twice: idempotent methods only (a POST that timed out may have been applied, and a
second one would post a second comment), on 429/5xx answers and GitHub's secondary rate limit
(403 with Retry-After). Any other 4xx is the caller's mistake and raises GitHubError at once.

Every client has one deadline (``deadline_s``, ``--api-timeout`` in the CLI): each try's
(connect, read) timeout shrinks to what is left of it, a retry that would wait past it is not
made, and reading a body stops when it runs out.

Redirects are never followed automatically: requests would re-send a POST body to wherever a 307
points. Only a GET that stays under the API root is followed, a few times at most; anything
else is an error naming where the redirect led.

Answers that cannot be used (not JSON, the wrong shape, a redirect we do not follow, too large)
raise GitHubBadResponse, exit code 2, with one line naming the endpoint and the problem.
"""

from __future__ import annotations

import functools
import json
import re
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.auth
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import InvalidHeader, MaxRetryError, ReadTimeoutError, ResponseError
from urllib3.util import Retry, Timeout

from ci_gate import __version__
from ci_gate.errors import CiGateError
from ci_gate.github.redact import install_log_filter, redact, register_secret

API_VERSION = "2022-11-28"
DEFAULT_API_URL = "https://api.github.com"
DEFAULT_DEADLINE_S = 60.0
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 30.0
# No answer ci-gate reads comes near this (a page of 100 comments of 64 KiB is 6.5 MB); a larger
# one is refused rather than held in memory.
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_REDIRECTS = 3
MAX_PAGES = 1000
SHOWN_CHARS = 200  # of a server's text in one of our messages

# Safe to send twice. POST and PATCH are not: GitHub may have applied the first one.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# What a token can contain (GitHub's formats are [A-Za-z0-9_]); anything else, a space or a
# newline above all, would end up in an exception text from the HTTP layer.
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


class GitHubError(CiGateError):
    """A GitHub API call failed (an error status, the network, the deadline). Exit code 1."""

    exit_code = 1

    def __init__(self, method: str, path: str, status: int | None, message: str, *, text: str | None = None):
        self.method = method
        self.path = one_line(redact(path))
        self.status = status
        self.message = one_line(redact(message))
        where = f"GitHub API {method} {self.path}"
        if text is None:
            text = f"{where} failed: {status} {self.message}" if status else f"{where} failed: {self.message}"
        super().__init__(one_line(redact(text)))


class GitHubBadResponse(GitHubError):
    """GitHub (or what answers in its place) sent something ci-gate cannot use. Exit code 2."""

    exit_code = 2

    def __init__(self, method: str, path: str, status: int | None, message: str, *, text: str | None = None):
        shown = one_line(redact(path))
        super().__init__(method, path, status, message, text=text or f"GitHub API {method} {shown}: {one_line(redact(message))}")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    backoff_s: float = 1.0  # urllib3's backoff factor: waits of 0, 2x, 4x, ... this between tries
    max_wait_s: float = 120.0  # a Retry-After or rate-limit reset further away than this is an error, not a wait


def one_line(text: str) -> str:
    """Control characters (newlines, terminal escapes) become spaces; runs of space collapse."""
    cleaned = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in str(text))
    return " ".join(cleaned.split())


def _cap(text: str, limit: int = SHOWN_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _snippet(body: bytes, limit: int = SHOWN_CHARS) -> str:
    text = body[: limit * 8].decode("utf-8", errors="replace")
    text = re.sub(r"<(script|style)\b.*?</\1>|<[^>]*>", " ", text, flags=re.S | re.I)  # an HTML error page: its words
    return _cap(one_line(text), limit)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:  # a port that is not a number
        port = None
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


class _Deadline:
    def __init__(self, seconds: float, monotonic: Callable[[], float]):
        self.seconds = seconds
        self._monotonic = monotonic
        self._end = monotonic() + seconds

    def left(self) -> float:
        return self._end - self._monotonic()


class _DeadlineTimeout(Timeout):
    """A (connect, read) timeout that urllib3 clones for every try, its own retries included:
    each clone is cut down to what is left of the deadline."""

    def __init__(self, connect: float, read: float, deadline: _Deadline):
        super().__init__(connect=connect, read=read)
        self._limits = (connect, read)
        self._deadline = deadline

    def clone(self) -> Timeout:
        left = max(round(self._deadline.left(), 2), 0.01)  # urllib3 refuses 0; a spent deadline fails in _GitHubRetry
        return Timeout(connect=min(self._limits[0], left), read=min(self._limits[1], left))


class _GitHubRetry(Retry):
    """urllib3's Retry with GitHub's rate-limit headers, a cap on waits, the client's deadline and
    an injectable sleep (tests)."""

    # 403 with Retry-After is GitHub's secondary rate limit; a plain 403 (no permission) is final.
    RETRY_AFTER_STATUS_CODES = frozenset({403, 413, 429, 503})

    def __init__(
        self,
        *args: Any,
        deadline: _Deadline | None = None,
        max_wait_s: float = 120.0,
        sleep_fn: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.deadline = deadline
        self.max_wait_s = max_wait_s
        self.sleep_fn = sleep_fn
        self.clock = clock

    def new(self, **kw: Any) -> _GitHubRetry:
        for name in ("deadline", "max_wait_s", "sleep_fn", "clock"):
            kw.setdefault(name, getattr(self, name))
        return super().new(**kw)

    def get_retry_after(self, response: Any) -> float | None:
        headers = response.headers
        value = headers.get("Retry-After")
        if value is not None:
            try:
                return self.parse_retry_after(value)
            except InvalidHeader:
                return 60.0  # GitHub's advice for a secondary limit without a usable header: wait a minute
        if headers.get("x-ratelimit-remaining") == "0" and headers.get("x-ratelimit-reset"):
            try:
                return max(float(headers["x-ratelimit-reset"]) - self.clock(), 0.0)
            except ValueError:
                return 60.0
        return None

    def _wait(self, response: Any) -> float:
        if response is not None and self.respect_retry_after_header:
            after = self.get_retry_after(response)
            if after is not None:
                return after
        return self.get_backoff_time()

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):  # noqa: ANN001, ANN201
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        wait = retry._wait(response)
        left = self.deadline.left() if self.deadline else float("inf")
        if wait > self.max_wait_s or wait >= left:
            # Exhausted: urllib3 hands back the last answer (raise_on_status=False) or raises the error.
            reason = error or ResponseError(f"not retried: a wait of {wait:.0f} s is past the deadline or the wait limit")
            raise MaxRetryError(_pool, url, reason) from reason
        return retry

    def sleep(self, response: Any = None) -> None:
        wait = self._wait(response)
        if wait > 0:
            self.sleep_fn(wait)


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


@dataclass(frozen=True)
class Answer:
    """One final (non-redirect) answer, its body read in full."""

    method: str
    shown: str  # the endpoint as messages name it: redacted, without the API root
    status: int
    headers: Any
    url: str
    body: bytes
    links: dict


@functools.lru_cache(maxsize=64)
def _adapter(shape: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(shape)


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _shape_problem(exc: Any) -> str:
    """The first problem pydantic found, phrased for JSON, without echoing the value (it may hold anything)."""
    errors = exc.errors(include_url=False, include_input=True)
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"]) or "top level"
    kind = first["type"]
    if kind == "missing":
        problem = f"missing key '{loc}'"
    elif kind in ("model_type", "dict_type", "model_attributes_type"):
        problem = f"{loc}: expected an object, got {_json_kind(first.get('input'))}"
    elif kind == "list_type":
        problem = f"{loc}: expected an array, got {_json_kind(first.get('input'))}"
    else:
        problem = f"{loc}: {first['msg']}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"unexpected JSON: {problem}{more}"


class GitHubClient:
    """Calls to one repository (``owner/name``) on one API host, all within one deadline."""

    def __init__(
        self,
        api_url: str,
        repo: str,
        token: str,
        *,
        retry: RetryPolicy = RetryPolicy(),
        deadline_s: float = DEFAULT_DEADLINE_S,
        timeout_s: float = READ_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        max_body_bytes: int = MAX_BODY_BYTES,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        token = (token or "").strip()
        register_secret(token)
        install_log_filter()
        owner, _, name = repo.partition("/")
        if not owner or not name or "/" in name:
            raise ValueError(f"repository must be 'owner/name', got {redact(repo)!r}")
        if not token:
            raise ValueError("a GitHub token is required")
        if not _TOKEN_CHARS.fullmatch(token):
            raise ValueError("the token contains spaces or characters a token cannot hold (value not shown)")
        if not deadline_s > 0:
            raise ValueError(f"the deadline must be a positive number of seconds, got {deadline_s}")
        base = api_url.rstrip("/")
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"the API URL must be http(s)://host[:port][/path], got {redact(api_url)!r}")
        self.api_url = base
        self.repo = repo
        self._token = token
        self._origin = _origin(base)
        self._root_path = parts.path.rstrip("/")
        self._deadline = _Deadline(deadline_s, monotonic)
        self._timeouts = (connect_timeout_s, timeout_s)
        self._max_body = max_body_bytes
        self._session = requests.Session()
        self._session.auth = _BearerAuth(token)
        adapter = HTTPAdapter(
            max_retries=_GitHubRetry(
                total=max(retry.attempts - 1, 0),
                backoff_factor=retry.backoff_s,
                backoff_max=retry.max_wait_s,
                status_forcelist=RETRY_STATUSES,
                allowed_methods=IDEMPOTENT_METHODS,
                raise_on_status=False,  # the last answer comes back, so its status and message can be shown
                respect_retry_after_header=True,
                deadline=self._deadline,
                max_wait_s=retry.max_wait_s,
                sleep_fn=sleep,
                clock=clock,
            )
        )
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
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

    @property
    def deadline_s(self) -> float:
        return self._deadline.seconds

    def time_left(self) -> float:
        """Seconds left of this client's deadline (negative once it has passed)."""
        return self._deadline.left()

    def _redact(self, text: str) -> str:
        return redact(text, self._token)

    def repo_path(self, suffix: str) -> str:
        return f"/repos/{self.repo}{suffix}"

    def _within_api(self, url: str) -> bool:
        path = urlsplit(url).path
        return _origin(url) == self._origin and (path == self._root_path or path.startswith(self._root_path + "/"))

    def _shown(self, url: str) -> str:
        shown = url.removeprefix(self.api_url) if url.startswith(self.api_url) else url
        return one_line(self._redact(shown))

    # ---- one call ----------------------------------------------------------------------------
    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None) -> Answer:
        """One API call: retries (idempotent methods only), same-origin GET redirects, the body read
        within the deadline. ``path`` is relative to the API root or an absolute URL under it.
        Raises GitHubError for an error status or a network failure, GitHubBadResponse for an
        answer that cannot be used."""
        url = path if path.startswith(("http://", "https://")) else self.api_url + path
        shown = self._shown(path)
        if not self._within_api(url):
            # The session sends the token with every request: never to another host.
            raise GitHubBadResponse(method, shown, None, f"{_origin(url)} is not under the API root {self.api_url}; not sent")
        for hop in range(MAX_REDIRECTS + 1):
            answer = self._send(method, url, shown, json=json, params=params)
            if not 300 <= answer.status < 400:
                if answer.status >= 400:
                    raise GitHubError(method, shown, answer.status, self._error_message(answer))
                return answer
            url = self._redirect_target(answer, has_body=json is not None, hop=hop)
            params = None  # the Location carries the whole query
        raise AssertionError("unreachable: _redirect_target refuses the last hop")

    def _send(self, method: str, url: str, shown: str, *, json: Any, params: dict | None) -> Answer:
        if self._deadline.left() <= 0:
            raise GitHubError(method, shown, None, f"the {self.deadline_s:g} s deadline (--api-timeout) passed before this call")
        try:
            response = self._session.request(
                method, url, json=json, params=params, allow_redirects=False, stream=True,
                timeout=_DeadlineTimeout(*self._timeouts, self._deadline),
            )
        except requests.RequestException as exc:
            # from None: the chained exception carries the prepared request and its headers.
            raise GitHubError(method, shown, None, self._network_problem(exc)) from None
        try:
            body = self._read_body(method, shown, response)
        finally:
            response.close()
        return Answer(method, shown, response.status_code, response.headers, response.url, body, response.links)

    def _network_problem(self, exc: BaseException) -> str:
        reason: Any = exc
        inner = exc.args[0] if exc.args else None
        if isinstance(inner, MaxRetryError) and inner.reason is not None:
            reason = inner.reason  # "Max retries exceeded with url: ..." says less than its reason
        detail = f"{type(exc).__name__}: {reason}"
        if self._deadline.left() <= 0.1:
            detail = f"no answer within the {self.deadline_s:g} s deadline (--api-timeout): {detail}"
        return detail

    def _read_body(self, method: str, shown: str, response: requests.Response) -> bytes:
        raw = response.raw
        read = getattr(raw, "read1", None) or raw.read  # read1: returns what has arrived, so the deadline is checked often
        chunks: list[bytes] = []
        size = 0
        while True:
            left = self._deadline.left()
            if left <= 0:
                raise GitHubError(
                    method, shown, response.status_code,
                    f"the {self.deadline_s:g} s deadline (--api-timeout) passed while reading the answer ({size} bytes read)",
                )
            sock = getattr(getattr(raw, "connection", None), "sock", None)
            if sock is not None:
                sock.settimeout(max(min(self._timeouts[1], left), 0.01))
            try:
                chunk = read(65536, decode_content=True)
            except ReadTimeoutError:
                why = (f"the {self.deadline_s:g} s deadline (--api-timeout) passed" if self._deadline.left() <= 0.1
                       else "the server stopped sending")
                raise GitHubError(method, shown, response.status_code, f"{why} while reading the answer ({size} bytes read)") from None
            except (Urllib3Error, OSError) as exc:
                raise GitHubBadResponse(
                    method, shown, response.status_code,
                    f"answer {response.status_code} cut off after {size} bytes ({type(exc).__name__})",
                ) from None
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self._max_body:
                if response.status_code >= 400:
                    chunks.append(chunk)
                    return b"".join(chunks)[: self._max_body]  # enough to say what went wrong
                raise GitHubBadResponse(
                    method, shown, response.status_code, f"answer larger than {self._max_body} bytes; not read further"
                )
            chunks.append(chunk)

    def _redirect_target(self, answer: Answer, *, has_body: bool, hop: int) -> str:
        method, shown, status = answer.method, answer.shown, answer.status
        location = answer.headers.get("Location")
        verb = "moved" if status in (301, 308) else "redirected"
        if not location:
            raise GitHubBadResponse(method, shown, status, f"answer {status} without a Location to follow")
        target = urljoin(answer.url, location)
        origin = _origin(target)

        def refuse(why: str, where: str) -> GitHubBadResponse:
            if verb == "moved":
                return GitHubBadResponse(
                    method, shown, status, why,
                    text=f"GitHub API moved {method} {shown} ({status}) to {where}; not followed: {why}",
                )
            return GitHubBadResponse(method, shown, status, f"{verb} ({status}) to {where}; not followed: {why}")

        if origin != self._origin:
            raise refuse(f"another origin; the token and the request stay with {self._origin}", origin)
        if not self._within_api(target):
            raise refuse(f"outside the API root {self.api_url}", self._redact(origin + urlsplit(target).path))
        where = self._shown(self.api_url + urlsplit(target).path.removeprefix(self._root_path))
        if method not in ("GET", "HEAD") or has_body:
            raise refuse(f"a {method} with a body is never re-sent to another address", where)
        if hop >= MAX_REDIRECTS:
            raise refuse(f"more than {MAX_REDIRECTS} redirects", where)
        return target

    def _error_message(self, answer: Answer) -> str:
        reason = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 429: "Too Many Requests"}.get(answer.status, "error")
        try:
            body = json.loads(answer.body)
        except (ValueError, RecursionError):
            snippet = _snippet(answer.body)
            return f"{reason}: {snippet}" if snippet else reason
        if not isinstance(body, dict):
            return reason
        message = _cap(one_line(str(body.get("message") or reason)))
        errors = body.get("errors") or []
        if not isinstance(errors, list):
            errors = [errors]
        details = [_cap(one_line(str(e.get("message") or e.get("code") or e) if isinstance(e, dict) else str(e))) for e in errors[:5]]
        text = f"{message} ({'; '.join(details)})" if details else message
        return _cap(text, 2 * SHOWN_CHARS)

    # ---- JSON --------------------------------------------------------------------------------
    def _json(self, answer: Answer, shape: Any = None) -> Any:
        if not answer.body.strip():
            raise GitHubBadResponse(answer.method, answer.shown, answer.status, f"answer {answer.status} has an empty body; expected JSON")
        try:
            data = json.loads(answer.body)
        except RecursionError:
            raise GitHubBadResponse(answer.method, answer.shown, answer.status, "answer is JSON nested too deeply") from None
        except ValueError as exc:
            kind = one_line(answer.headers.get("Content-Type") or "no Content-Type").split(";")[0][:60]
            where = f"; {exc.msg} at byte {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
            snippet = _snippet(answer.body, 80)
            raise GitHubBadResponse(
                answer.method, answer.shown, answer.status,
                f"answer is not valid JSON ({kind}, {len(answer.body)} bytes{where}): {snippet}",
            ) from None
        if shape is None:
            return data
        from pydantic import ValidationError

        try:
            return _adapter(shape).validate_python(data)
        except ValidationError as exc:
            raise GitHubBadResponse(answer.method, answer.shown, answer.status, _shape_problem(exc)) from None

    def get(self, path: str, *, shape: Any = None, **params: Any) -> Any:
        return self._json(self.request("GET", path, params=params or None), shape)

    def post(self, path: str, body: dict, *, shape: Any = None) -> Any:
        return self._json(self.request("POST", path, json=body), shape)

    def patch(self, path: str, body: dict, *, shape: Any = None) -> Any:
        return self._json(self.request("PATCH", path, json=body), shape)

    def get_optional(self, path: str, *, shape: Any = None) -> Any | None:
        """GET that answers None for 404 (a branch or file that does not exist yet)."""
        try:
            answer = self.request("GET", path)
        except GitHubError as exc:
            if exc.status == 404 and not isinstance(exc, GitHubBadResponse):
                return None
            raise
        return self._json(answer, shape)

    def paginate(self, path: str, per_page: int = 100, *, shape: Any = None) -> Iterator[Any]:
        """Items of a list endpoint across pages, following the Link header GitHub sends."""
        answer = self.request("GET", path, params={"per_page": per_page})
        for _ in range(MAX_PAGES):
            yield from self._json(answer, list[shape] if shape is not None else list)
            next_url = answer.links.get("next", {}).get("url")
            if not next_url:
                return
            next_url = urljoin(answer.url, next_url)
            if not self._within_api(next_url):
                # The session sends the token with every request: never to another host.
                raise GitHubBadResponse(
                    "GET", self._shown(path), None, f"pagination link leaves the API host (to {_origin(next_url)}); not followed"
                )
            answer = self.request("GET", next_url)
        raise GitHubBadResponse("GET", self._shown(path), None, f"more than {MAX_PAGES} pages")
