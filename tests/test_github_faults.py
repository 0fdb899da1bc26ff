"""Fault suite for `ci-gate github ...` against real HTTP servers on 127.0.0.1 (tests/github_fake.py).

Every CLI case checks the exit code, that a failure is one line on stderr naming the problem with
no traceback, that the inputs are unchanged, and that the token is in no output: not stdout or
stderr, not a log record, not a file the command wrote ($GITHUB_OUTPUT, $GITHUB_STEP_SUMMARY)
nor anything else under the test's folder.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from ci_gate.cli import main
from ci_gate.github import GitHubBadResponse, GitHubClient, GitHubError, RetryPolicy
from ci_gate.github.outputs import append_step_summary, write_outputs
from ci_gate.github.redact import install_log_filter, redact, register_secret
from github_fake import Fault, FakeGitHub

TOKEN = "ghs_F4ultSu1teT0kenValue0123456789ab"
SARIF = b'{"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "ci-gate"}}, "results": []}]}'
CHECKPOINT = bytes(range(256)) * 16
COMMENTS = ("GET", r"/issues/5/comments$")
POST_COMMENT = ("POST", r"/issues/5/comments$")
POST_SARIF = ("POST", r"/code-scanning/sarifs$")


# ---- harness ---------------------------------------------------------------------------------

@pytest.fixture
def fake():
    server = FakeGitHub(TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def other():
    """A second origin: whatever it receives has leaked from the first."""
    server = FakeGitHub(TOKEN).start()
    yield server
    server.stop()


@dataclass
class Run:
    code: int
    out: str
    err: str
    elapsed: float


class Env:
    def __init__(self, tmp_path: Path, fake: FakeGitHub, monkeypatch, capsys, caplog):
        self.tmp, self.fake, self.monkeypatch, self.capsys, self.caplog = tmp_path, fake, monkeypatch, capsys, caplog
        self.inputs = tmp_path / "inputs"
        self.inputs.mkdir()
        self.summary = self.inputs / "summary.md"
        self.summary.write_text("ci-gate: backdoor detected in models/coop.safetensors\n")
        self.sarif = self.inputs / "report.sarif"
        self.sarif.write_bytes(SARIF)
        self.repaired = self.inputs / "repaired.safetensors"
        self.repaired.write_bytes(CHECKPOINT)
        self.github_output = tmp_path / "github_output"
        self.step_summary = tmp_path / "step_summary"
        for name in ("GITHUB_HEAD_REF", "GITHUB_REF_NAME", "GITHUB_WORKSPACE", "CI_GATE_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
        monkeypatch.setenv("GITHUB_REPOSITORY", fake.repo)
        monkeypatch.setenv("GITHUB_API_URL", fake.url)
        monkeypatch.setenv("GITHUB_SHA", FakeGitHub.BASE_SHA)
        monkeypatch.setenv("GITHUB_REF", "refs/pull/5/merge")
        monkeypatch.setenv("GITHUB_OUTPUT", str(self.github_output))
        monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(self.step_summary))
        # urllib3 logs every request line at DEBUG: those records must be clean too.
        caplog.set_level(logging.DEBUG)

    def hashes(self) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in self.inputs.iterdir()}

    def cli(self, *argv: str) -> Run:
        before = self.hashes()
        start = time.monotonic()
        with pytest.raises(SystemExit) as info:
            main(["github", *argv])
        elapsed = time.monotonic() - start
        captured = self.capsys.readouterr()
        assert self.hashes() == before, "an input file changed"
        return Run(info.value.code, captured.out, captured.err, elapsed)

    def comment(self, *extra: str) -> Run:
        return self.cli("comment", str(self.summary), "--pr", "5", *extra)

    def upload(self, *extra: str) -> Run:
        return self.cli("upload-sarif", str(self.sarif), "--no-wait", *extra)

    def commit_repair(self, *extra: str) -> Run:
        return self.cli("commit-repair", str(self.repaired), "--path", "models/coop.safetensors", "--base-branch", "main", *extra)

    def assert_no_secret(self, run: Run, *secrets: str) -> None:
        for secret in (TOKEN, *secrets):
            assert secret not in run.out and secret not in run.err
            assert secret not in self.caplog.text
            for record in self.caplog.records:
                assert secret not in record.getMessage()
            for path in self.tmp.rglob("*"):
                if path.is_file() and self.inputs not in path.parents:  # an input may hold it on purpose
                    assert secret.encode() not in path.read_bytes(), f"{path} holds the token"

    def expect(self, run: Run, code: int, pattern: str, *secrets: str) -> str:
        """The exit code, the one line that names the problem, and no secret anywhere."""
        assert run.code == code, (run.out, run.err)
        assert "Traceback" not in run.out + run.err
        if code == 0:
            assert re.search(pattern, run.out), run.out
            line = run.out
        else:
            lines = [line for line in run.err.splitlines() if line.strip()]
            assert len(lines) == 1, run.err
            line = lines[0]
            assert line.startswith("ci-gate: error: "), line
            assert re.search(pattern, line), line
        self.assert_no_secret(run, *secrets)
        return line


@pytest.fixture
def env(tmp_path, fake, monkeypatch, capsys, caplog) -> Env:
    return Env(tmp_path, fake, monkeypatch, capsys, caplog)


def _count(fake: FakeGitHub, method: str, suffix: str = "") -> int:
    return sum(1 for r in fake.requests if r.method == method and r.path.endswith(suffix))


# ---- deadline --------------------------------------------------------------------------------

def test_hanging_api_fails_at_the_deadline(env, fake):
    fake.inject(Fault(200, body=[], delay_s=30, match=COMMENTS))
    run = env.comment("--api-timeout", "2")
    env.expect(run, 1, r"GET /repos/octo/models/issues/5/comments failed: no answer within the 2 s deadline \(--api-timeout\)")
    assert run.elapsed < 4.5
    assert _count(fake, "POST") == 0


def test_trickling_body_fails_at_the_deadline(env, fake):
    fake.inject(Fault(200, raw=b"[" + b" " * 200 + b"]", drip_s=0.1, match=COMMENTS))
    run = env.comment("--api-timeout", "2")
    env.expect(run, 1, r"deadline \(--api-timeout\) passed while reading the answer \(\d+ bytes read\)")
    assert run.elapsed < 4.5


def test_slow_post_is_sent_once(env, fake):
    fake.inject(Fault(201, body={"id": 1, "html_url": "u"}, delay_s=5, match=POST_COMMENT))
    run = env.comment("--api-timeout", "2")
    env.expect(run, 1, r"POST /repos/octo/models/issues/5/comments failed: .*(deadline|timed out)")
    assert run.elapsed < 4.5
    assert _count(fake, "POST") == 1


def test_retry_after_past_the_deadline_is_not_waited_for(env, fake):
    fake.inject(Fault(429, {"Retry-After": "5"}, {"message": "slow down"}, match=COMMENTS))
    run = env.comment("--api-timeout", "3")
    env.expect(run, 1, r"failed: 429 slow down")
    assert run.elapsed < 2 and _count(fake, "GET") == 1


def test_backoff_stops_at_the_deadline(env, fake):
    page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1>\n<hr>nginx</body></html>"
    fake.inject(*[Fault(502, raw=page, content_type="text/html", match=COMMENTS)] * 5)
    run = env.comment("--api-timeout", "3")
    # tries at 0 s, at once again, after 2 s; the next wait (4 s) would pass the deadline
    env.expect(run, 1, r"failed: 502 error: 502 Bad Gateway 502 Bad Gateway nginx$")
    assert _count(fake, "GET") == 3 and run.elapsed < 4.5


def test_library_post_timeout_is_not_retried_but_get_is(fake):
    fake.inject(Fault(201, body={"id": 1}, delay_s=3, match=POST_COMMENT))
    client = GitHubClient(fake.url, fake.repo, TOKEN, deadline_s=10, timeout_s=0.4, retry=RetryPolicy(attempts=3, backoff_s=0))
    start = time.monotonic()
    with client, pytest.raises(GitHubError, match="ReadTimeout"):
        client.post(client.repo_path("/issues/5/comments"), {"body": "x"})
    assert time.monotonic() - start < 2 and _count(fake, "POST") == 1

    fake.inject(*[Fault(200, body=[], delay_s=3, match=COMMENTS)] * 2)
    client = GitHubClient(fake.url, fake.repo, TOKEN, deadline_s=10, timeout_s=0.4, retry=RetryPolicy(attempts=3, backoff_s=0))
    with client:
        assert list(client.paginate(client.repo_path("/issues/5/comments"))) == []
    assert _count(fake, "GET") == 3


# ---- redirects -------------------------------------------------------------------------------

@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_cross_origin_redirect_of_a_post_is_not_followed(env, fake, other, status):
    fake.inject(Fault(status, {"Location": f"{other.url}/upload/sarif"}, {"message": "moved"}, match=POST_SARIF))
    run = env.upload()
    port = other.url.rsplit(":", 1)[1]
    env.expect(run, 2, rf"POST /repos/octo/models/code-scanning/sarifs \({status}\) to http://127\.0\.0\.1:{port}; not followed: another origin"
               if status in (301, 308) else rf"redirected \({status}\) to http://127\.0\.0\.1:{port}; not followed: another origin")
    assert other.requests == [] and _count(fake, "POST") == 1
    assert not env.github_output.exists()


def test_cross_origin_redirect_of_a_get_is_not_followed(env, fake, other):
    fake.inject(Fault(302, {"Location": f"{other.url}/repos/octo/models/issues/5/comments"}, match=COMMENTS))
    env.expect(env.comment(), 2, r"GET /repos/octo/models/issues/5/comments: redirected \(302\) to http://127\.0\.0\.1:\d+; not followed")
    assert other.requests == [] and _count(fake, "POST") == 0


def test_redirect_to_another_host_name_of_the_same_server_is_not_followed(env, fake):
    port = fake.url.rsplit(":", 1)[1]
    fake.inject(Fault(307, {"Location": f"http://localhost:{port}/repos/octo/models/issues/5/comments"}, match=COMMENTS))
    env.expect(env.comment(), 2, rf"redirected \(307\) to http://localhost:{port}; not followed: another origin")
    assert len(fake.requests) == 1


def test_same_origin_get_redirect_is_followed(env, fake):
    fake.inject(Fault(302, {"Location": "/repos/octo/models/issues/5/comments?per_page=100&page=1"}, match=COMMENTS))
    env.expect(env.comment(), 0, r"posted comment")
    assert [(r.method, r.query.get("page")) for r in fake.requests] == [("GET", None), ("GET", "1"), ("POST", None)]
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in fake.requests)


def test_same_origin_redirect_of_a_post_is_not_followed(env, fake):
    fake.inject(Fault(307, {"Location": "/repos/octo/models/issues/6/comments"}, match=POST_COMMENT))
    env.expect(env.comment(), 2, r"redirected \(307\) to /repos/octo/models/issues/6/comments; not followed: a POST with a body is never re-sent")
    assert _count(fake, "POST") == 1 and fake.comments == {}


def test_moved_repository_on_a_post_is_one_line(env, fake):
    fake.inject(Fault(301, {"Location": f"{fake.url}/repositories/42/issues/5/comments"}, {"message": "Moved Permanently"}, match=POST_COMMENT))
    env.expect(env.comment(), 2, r"GitHub API moved POST /repos/octo/models/issues/5/comments \(301\) to /repositories/42/issues/5/comments; not followed")


def test_301_without_location_is_one_line(env, fake):
    fake.inject(Fault(301, body={"message": "Moved Permanently"}, match=COMMENTS))
    env.expect(env.comment(), 2, r"GET /repos/octo/models/issues/5/comments: answer 301 without a Location to follow")


def test_redirect_loop_stops(env, fake):
    fake.inject(*[Fault(302, {"Location": "/repos/octo/models/issues/5/comments"}, match=COMMENTS)] * 6)
    env.expect(env.comment(), 2, r"not followed: more than 3 redirects")
    assert _count(fake, "GET") == 4


def test_redirect_outside_the_api_root_is_not_followed(fake):
    fake.inject(Fault(302, {"Location": "/login"}))
    with GitHubClient(fake.url + "/api/v3", fake.repo, TOKEN) as client, pytest.raises(GitHubBadResponse, match=r"outside the API root") as info:
        client.get(client.repo_path("/pulls"))
    assert info.value.exit_code == 2 and len(fake.requests) == 1


def test_pagination_to_another_origin_is_not_followed(env, fake, other):
    fake.inject(Fault(200, {"Link": f'<{other.url}/repos/octo/models/issues/5/comments?page=2>; rel="next"'}, [], match=COMMENTS))
    env.expect(env.comment(), 2, r"pagination link leaves the API host \(to http://127\.0\.0\.1:\d+\); not followed")
    assert other.requests == []


# ---- the token -------------------------------------------------------------------------------

def test_token_with_a_trailing_newline_is_stripped(env, fake, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN + "\r\n")
    env.expect(env.comment(), 0, r"posted comment")
    assert {r.headers["authorization"] for r in fake.requests} == {f"Bearer {TOKEN}"}


def test_token_with_a_trailing_newline_rejected_by_the_server(env, fake, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN + "\n")
    fake.inject(Fault(401, body={"message": f"Bad credentials for {TOKEN}\n"}, match=COMMENTS))
    env.expect(env.comment(), 1, r"failed: 401 Bad credentials for \*\*\*$")


@pytest.mark.parametrize("value", [TOKEN, "github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "0123456789abcdef0123456789abcdef01234567", "my secret"])
def test_token_given_as_the_token_env_value_is_refused_unseen(env, fake, value):
    run = env.comment("--token-env", value)
    env.expect(run, 2, r"--token-env: expects the name of an environment variable .* not shown", value)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["--api-timeout", "0"], r"--api-timeout: must be a positive number of seconds, got 0"),
        (["--api-timeout", "nan"], r"--api-timeout: must be a positive number of seconds, got nan"),
        (["--api-url", "ftp://example.test/api"], r"--api-url: the API URL must be http\(s\)://host"),
        (["--repo", "just-a-name"], r"--repo: repository must be 'owner/name'"),
    ],
)
def test_bad_flags_are_exit_2_before_any_call(env, fake, argv, pattern):
    env.expect(env.comment(*argv), 2, pattern)
    assert fake.requests == []


def test_token_with_inner_whitespace_is_refused_unseen(env, fake, monkeypatch):
    odd = "ghs_half0fAT0ken secondHalf0fIt"
    monkeypatch.setenv("GITHUB_TOKEN", odd)
    env.expect(env.comment(), 2, r"--token-env: \$GITHUB_TOKEN holds spaces .* \(value not shown\)", odd, "secondHalf0fIt")
    assert fake.requests == []


def test_token_echoed_in_a_success_body_is_masked_when_printed(env, fake):
    fake.inject(Fault(201, body={"id": 77, "html_url": f"https://github.example/c/77?t={TOKEN}"}, match=POST_COMMENT))
    env.expect(env.comment(), 0, r"posted comment https://github\.example/c/77\?t=\*\*\*")


def test_token_echoed_in_a_success_body_is_masked_in_github_output(env, fake):
    fake.inject(Fault(201, body={"number": 9, "html_url": f"https://github.example/pull/9#{TOKEN}"}, match=("POST", r"/pulls$")))
    env.expect(env.commit_repair(), 0, r"opened pull request https://github\.example/pull/9#\*\*\*")
    text = env.github_output.read_text()
    assert "pr-url<<" in text and "https://github.example/pull/9#***" in text and "pr-number<<" in text


def test_token_as_an_upload_id_is_masked_everywhere(env, fake):
    fake.inject(Fault(202, body={"id": TOKEN, "url": f"{fake.url}/x"}, match=POST_SARIF))
    env.expect(env.upload(), 0, r"\(id \*\*\*\)")
    assert "sarif-id<<" in env.github_output.read_text()


def test_token_echoed_in_a_json_error_body(env, fake):
    fake.inject(Fault(403, body={"message": f"Resource not accessible by integration ({TOKEN})"}, match=POST_COMMENT))
    env.expect(env.comment(), 1, r"POST /repos/octo/models/issues/5/comments failed: 403 Resource not accessible by integration \(\*\*\*\)")


def test_token_echoed_in_an_html_error_page(env, fake):
    page = f"<html><title>500 Internal Server Error</title><body><pre>Authorization: Bearer {TOKEN}\n</pre></body></html>".encode()
    fake.inject(Fault(500, raw=page, content_type="text/html", match=POST_COMMENT))
    env.expect(env.comment(), 1, r"failed: 500 error: 500 Internal Server Error Authorization: Bearer \*\*\*$")
    assert _count(fake, "POST") == 1


def test_token_in_the_summary_is_not_posted(env, fake):
    env.summary.write_text(f"debug dump: GITHUB_TOKEN={TOKEN}\n")
    env.expect(env.comment(), 0, r"posted comment")
    [comment] = fake.comments[5]
    assert TOKEN not in comment["body"] and "GITHUB_TOKEN=***" in comment["body"]


# ---- statuses --------------------------------------------------------------------------------

def test_401_bad_credentials(env, fake, monkeypatch):
    monkeypatch.setenv("GITHUB_TOKEN", "ghs_n0tTheRightT0kenAtAll")
    env.expect(env.comment(), 1, r"GET /repos/octo/models/issues/5/comments failed: 401 Bad credentials$", "ghs_n0tTheRightT0kenAtAll")
    assert len(fake.requests) == 1


def test_403_without_rate_limit_is_final(env, fake):
    fake.inject(Fault(403, body={"message": "Must have admin rights"}, match=COMMENTS))
    env.expect(env.comment(), 1, r"failed: 403 Must have admin rights$")
    assert len(fake.requests) == 1


def test_403_secondary_rate_limit_is_retried_after_retry_after(env, fake):
    fake.inject(Fault(403, {"Retry-After": "1"}, {"message": "You have exceeded a secondary rate limit"}, match=COMMENTS))
    run = env.comment()
    env.expect(run, 0, r"posted comment")
    assert _count(fake, "GET") == 2 and run.elapsed >= 0.9


def test_429_with_retry_after_is_retried(env, fake):
    fake.inject(Fault(429, {"Retry-After": "1"}, {"message": "Too Many Requests"}, match=COMMENTS))
    run = env.comment()
    env.expect(run, 0, r"posted comment")
    assert _count(fake, "GET") == 2 and run.elapsed >= 0.9


def test_429_on_a_post_is_not_retried(env, fake):
    fake.inject(Fault(429, {"Retry-After": "1"}, {"message": "Too Many Requests"}, match=POST_COMMENT))
    env.expect(env.comment(), 1, r"POST .* failed: 429 Too Many Requests$")
    assert _count(fake, "POST") == 1


def test_500_on_a_get_is_retried(env, fake):
    fake.inject(Fault(500, body={"message": "boom"}, match=COMMENTS))
    env.expect(env.comment(), 0, r"posted comment")
    assert _count(fake, "GET") == 2


def test_502_on_a_post_is_not_retried(env, fake):
    fake.inject(Fault(502, body={"message": "Server Error"}, match=POST_SARIF))
    env.expect(env.upload(), 1, r"POST /repos/octo/models/code-scanning/sarifs failed: 502 Server Error$")
    assert _count(fake, "POST") == 1 and fake.sarifs == {}


def test_huge_error_body_is_cut_to_one_short_line(env, fake):
    fake.inject(Fault(403, body={"message": "no " * 400_000 + "\n\x1b[31mred"}, match=COMMENTS))
    line = env.expect(env.comment(), 1, r"failed: 403 no no .*\.\.\.$")
    assert len(line) < 500


# ---- answers that cannot be used -------------------------------------------------------------

BAD_ANSWERS = {
    "malformed JSON": (Fault(201, raw=b'{"id": 1, "html_url": ', match=POST_COMMENT), r"answer is not valid JSON \(application/json, 22 bytes; Expecting value at byte 22\)"),
    "array for an object": (Fault(201, body=[], match=POST_COMMENT), r"unexpected JSON: top level: expected an object, got an array"),
    "object for an array": (Fault(200, body={"message": "hi"}, match=COMMENTS), r"GET .*: unexpected JSON: top level: expected an array, got an object"),
    "missing key": (Fault(201, body={"html_url": "u"}, match=POST_COMMENT), r"unexpected JSON: missing key 'id'"),
    "wrong type": (Fault(201, body={"id": "seventy", "html_url": "u"}, match=POST_COMMENT), r"unexpected JSON: id: Input should be a valid integer"),
    "item of the wrong shape": (Fault(200, body=[{"id": 1}, "x"], match=COMMENTS), r"unexpected JSON: 1: expected an object, got a string"),
    "cut off": (Fault(201, raw=b'{"id": 1, "ht', declared_length=400, match=POST_COMMENT), r"answer 201 cut off after 13 bytes"),
    "HTML page": (Fault(200, raw=b"<!DOCTYPE html><html><title>Sign in</title><body>Please log in\n</body></html>", content_type="text/html; charset=utf-8", match=COMMENTS),
                  r"answer is not valid JSON \(text/html, \d+ bytes; Expecting value at byte 0\): Sign in Please log in$"),
    "empty body": (Fault(201, raw=b"", match=POST_COMMENT), r"answer 201 has an empty body; expected JSON"),
    "not UTF-8": (Fault(201, raw=b'{"id": 1, "html_url": "\xff\xfe"}', match=POST_COMMENT), r"answer is not valid JSON"),
    "nested too deeply": (Fault(200, raw=b"[" * 200_000, match=COMMENTS), r"answer is JSON nested too deeply"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_unusable_answer_is_exit_2_naming_the_endpoint(env, fake, case):
    fault, pattern = BAD_ANSWERS[case]
    fake.inject(fault)
    line = env.expect(env.comment(), 2, pattern)
    assert re.search(r"GitHub API (GET|POST) /repos/octo/models/issues/5/comments", line)


def test_commit_sha_that_is_not_a_sha(env, fake):
    fake.inject(Fault(201, body={"sha": "../../../etc"}, match=("POST", r"/git/commits$")))
    env.expect(env.commit_repair(), 2, r"POST /repos/octo/models/git/commits: unexpected JSON: sha: String should match pattern")
    assert not env.github_output.exists() and fake.pulls == []


def test_huge_success_body_is_refused(fake):
    fake.inject(Fault(200, raw=b"[" + b"0," * 500_000 + b"0]"))
    with GitHubClient(fake.url, fake.repo, TOKEN, max_body_bytes=64 * 1024) as client:
        with pytest.raises(GitHubBadResponse, match=r"answer larger than 65536 bytes; not read further") as info:
            client.get(client.repo_path("/pulls"))
    assert info.value.exit_code == 2


# ---- output boundaries -----------------------------------------------------------------------

def test_outputs_and_step_summary_are_redacted(tmp_path):
    secret = "ghs_0utputB0undaryT0ken42"
    register_secret(secret + "\n")
    write_outputs(tmp_path / "out", {"pr-url": f"https://x/{secret}"})
    append_step_summary(tmp_path / "summary", f"token {secret}")
    assert secret not in (tmp_path / "out").read_text() and "https://x/***" in (tmp_path / "out").read_text()
    assert (tmp_path / "summary").read_text() == "token ***\n"
    assert redact(f"a{secret}b") == "a***b"


def test_log_records_are_redacted(caplog):
    secret = "ghs_L0gRec0rdT0kenValue77"
    register_secret(secret)
    install_log_filter()
    caplog.set_level(logging.DEBUG)
    logging.getLogger("urllib3.connectionpool").debug('%s "GET /x?t=%s HTTP/1.1" 200', "http://h", secret)
    try:
        raise ValueError(f"bad {secret}")
    except ValueError:
        logging.getLogger("ci_gate.github").exception("failed")
    assert caplog.records and secret not in caplog.text
    assert "t=***" in caplog.text and "bad ***" in caplog.text


def test_an_internal_error_holding_the_token_is_redacted(env, monkeypatch):
    import ci_gate.github.comments as comments

    def broken(*args, **kwargs):
        raise KeyError(f"no field for {TOKEN}")

    monkeypatch.setattr(comments, "upsert_comment", broken)
    try:
        main(["github", "comment", str(env.summary), "--pr", "5"])
    except SystemExit as exc:  # once the CLI maps unexpected errors to exit 3
        captured = env.capsys.readouterr()
        assert exc.code == 3 and TOKEN not in captured.out + captured.err
    except Exception as exc:
        text = "".join(traceback.format_exception(exc))
        assert TOKEN not in text and "KeyError" in text and "***" in text
    else:
        raise AssertionError("the command did not fail")
