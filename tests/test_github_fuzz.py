"""Property tests for what the GitHub client makes of an answer's body, without the network.

Whatever bytes arrive, with the token spliced in anywhere, the client either returns a value of
the expected shape or raises GitHubBadResponse (exit 2) whose text is one line without the token;
an error body gives a one-line GitHubError message without the token; redaction leaves no copy.
The same properties run at 10,000 examples with `-m bench`.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from ci_gate.github.branch_commit import _CommitShape
from ci_gate.github.client import Answer, GitHubBadResponse, GitHubClient, GitHubError, one_line
from ci_gate.github.code_scanning import _UploadShape
from ci_gate.github.comments import _CommentShape
from ci_gate.github.pulls import _PullShape
from ci_gate.github.redact import redact

TOKEN = "ghs_Fuzz1ngT0kenValue0000abcdef"
CLIENT = GitHubClient("http://127.0.0.1:9", "octo/models", TOKEN)
SHAPES = [None, _CommentShape, list[_CommentShape], _PullShape, list[_PullShape], _CommitShape, _UploadShape]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    | st.sampled_from([TOKEN, "a" * 40, "sarif-1", "https://x/" + TOKEN]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["id", "sha", "tree", "html_url", "number", "body", "url", "message", "errors", "x"]), inner, max_size=5),
    max_leaves=12,
)


@st.composite
def bodies(draw) -> bytes:
    kind = draw(st.sampled_from(["json", "bytes", "spliced"]))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    text = json.dumps(draw(json_values))
    cut = draw(st.integers(0, len(text)))
    return (text[:cut] + TOKEN + text[cut:]).encode()


def _answer(status: int, body: bytes, content_type: str) -> Answer:
    return Answer("POST", "/repos/octo/models/x", status, CaseInsensitiveDict({"Content-Type": content_type}), "http://127.0.0.1:9/x", body, {})


def _check_clean(text: str) -> None:
    assert TOKEN not in text
    assert "\n" not in text and "\r" not in text and one_line(text) == text
    assert len(text) < 1200


def _success_body(body: bytes, shape_index: int, content_type: str) -> None:
    shape = SHAPES[shape_index]
    try:
        value = CLIENT._json(_answer(200, body, content_type), shape)
    except GitHubBadResponse as exc:
        assert exc.exit_code == 2
        _check_clean(str(exc))
        return
    if shape is not None:
        expected = getattr(shape, "__origin__", shape)
        assert isinstance(value, expected)


def _error_body(body: bytes, status: int) -> None:
    exc = GitHubError("GET", f"/repos/octo/models/x?t={TOKEN}", status, CLIENT._error_message(_answer(status, body, "text/html")))
    assert exc.exit_code == 1
    _check_clean(str(exc))
    _check_clean(exc.message)


def _redaction(prefix: str, suffix: str, copies: int) -> None:
    text = prefix + TOKEN.join([suffix] * (copies + 1))
    assert TOKEN not in redact(text)


def _properties(examples: int):
    configured = settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])

    @configured
    @given(bodies(), st.integers(0, len(SHAPES) - 1), st.sampled_from(["application/json", "text/html", ""]))
    def success_body(body, shape_index, content_type):
        _success_body(body, shape_index, content_type)

    @configured
    @given(bodies(), st.sampled_from([400, 401, 403, 404, 422, 429, 500, 502, 503]))
    def error_body(body, status):
        _error_body(body, status)

    @configured
    @given(st.text(max_size=30), st.text(max_size=30), st.integers(0, 3))
    def redaction(prefix, suffix, copies):
        _redaction(prefix, suffix, copies)

    return success_body, error_body, redaction


test_success_body, test_error_body, test_redaction = _properties(300)
test_success_body_bench, test_error_body_bench, test_redaction_bench = (pytest.mark.bench(t) for t in _properties(10_000))


def test_the_fuzzer_reaches_both_outcomes():
    # A property that only ever saw one outcome would prove little: check both are reachable.
    good = json.dumps({"id": 5, "html_url": "u"}).encode()
    assert CLIENT._json(_answer(201, good, "application/json"), _CommentShape).id == 5
    with pytest.raises(GitHubBadResponse):
        CLIENT._json(_answer(201, good + b"x", "application/json"), _CommentShape)
