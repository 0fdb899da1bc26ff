"""The GitHub client and operations against a real local HTTP server (tests/github_fake.py)."""

from __future__ import annotations

import base64
import gzip
import json
import socket
from pathlib import Path

import pytest

from ci_gate.cli import main
from ci_gate.github import GitHubClient, GitHubError, RetryPolicy
from ci_gate.github.branch_commit import commit_file
from ci_gate.github.code_scanning import encode_sarif, prepare_sarif, upload_sarif, wait_for_processing
from ci_gate.github.comments import MARKER, upsert_comment
from ci_gate.github.outputs import append_step_summary, format_outputs, result_outputs, write_outputs
from ci_gate.github.pulls import open_or_update_pr, pr_number_from_ref
from ci_gate.report import render
from ci_gate.report.sarif import SarifLimitError
from github_fake import Fault, FakeGitHub
from result_factory import make_result, saved_result

TOKEN = "ghs_t0pSecretT0kenValue42"
HEAD_SHA = "a" * 40


@pytest.fixture
def fake():
    server = FakeGitHub(TOKEN).start()
    yield server
    server.stop()


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def client_for(fake: FakeGitHub, sleeps: Sleeps | None = None, clock=lambda: 1_000_000.0, attempts: int = 4) -> GitHubClient:
    return GitHubClient(
        fake.url, fake.repo, TOKEN,
        retry=RetryPolicy(attempts=attempts, backoff_s=0.001, max_wait_s=30),
        sleep=sleeps if sleeps is not None else Sleeps(), clock=clock, timeout_s=5,
    )


@pytest.fixture
def sarif_bytes(tmp_path: Path) -> bytes:
    result = make_result(tmp_path / "scan")
    return render(result, tmp_path / "scan", ["sarif"])["sarif"].read_bytes()


@pytest.fixture
def sarif(sarif_bytes):
    return prepare_sarif(sarif_bytes)


# ---- code scanning ---------------------------------------------------------------------------

def test_upload_sends_gzip_base64_sarif_with_commit_ref_and_auth(fake, sarif, sarif_bytes):
    with client_for(fake) as client:
        upload = upload_sarif(client, sarif, commit_sha=HEAD_SHA, ref="refs/pull/7/merge", checkout_uri="file:///work/repo")
        assert wait_for_processing(client, upload, poll_s=0) == "complete"

    stored = fake.sarifs[upload.id]
    assert stored["sarif"] == json.loads(sarif_bytes)
    assert stored["request"]["commit_sha"] == HEAD_SHA
    assert stored["request"]["ref"] == "refs/pull/7/merge"
    assert stored["request"]["tool_name"] == "ci-gate"
    assert stored["request"]["checkout_uri"] == "file:///work/repo"
    first = fake.requests[0]
    assert (first.method, first.path) == ("POST", "/repos/octo/models/code-scanning/sarifs")
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert first.headers["x-github-api-version"] == "2022-11-28"
    assert first.headers["accept"] == "application/vnd.github+json"


def test_encode_sarif_round_trips():
    data = b'{"version": "2.1.0", "runs": []}'
    assert gzip.decompress(base64.b64decode(encode_sarif(data))) == data


def test_processing_that_is_not_yet_known_counts_as_pending(fake, sarif):
    sleeps = Sleeps()
    with client_for(fake, sleeps) as client:
        upload = upload_sarif(client, sarif, commit_sha=HEAD_SHA, ref="refs/heads/main")
        fake.inject(Fault(404, body={"message": "Not Found"}))
        assert wait_for_processing(client, upload, poll_s=0.5, sleep=sleeps) == "complete"
    assert sleeps == [0.5]


def test_slow_processing_returns_pending_at_the_timeout(fake, sarif):
    fake.sarif_status = "pending"
    with client_for(fake) as client:
        upload = upload_sarif(client, sarif, commit_sha=HEAD_SHA, ref="refs/heads/main")
        assert wait_for_processing(client, upload, timeout_s=0, poll_s=0) == "pending"


def test_rejected_sarif_processing_raises(fake, sarif):
    fake.sarif_status = "failed"
    with client_for(fake) as client, pytest.raises(GitHubError, match="rejected the SARIF: locationFromSarifResult"):
        wait_for_processing(client, upload_sarif(client, sarif, commit_sha=HEAD_SHA, ref="refs/heads/main"), poll_s=0)


def test_prepare_refuses_what_github_would_reject():
    results = [{"ruleId": "CIG002", "message": {"text": "x"}, "locations": []}] * 5001
    sarif = json.dumps({"version": "2.1.0", "runs": [{"tool": {"driver": {"name": "t"}}, "results": results}]}).encode()
    with pytest.raises(SarifLimitError, match="5001 results"):
        prepare_sarif(sarif)
    with pytest.raises(ValueError):
        prepare_sarif(b"{not json")


# ---- retries ---------------------------------------------------------------------------------

def test_retries_5xx_with_exponential_backoff(fake):
    fake.inject(Fault(502), Fault(503), Fault(500))
    sleeps = Sleeps()
    with client_for(fake, sleeps) as client:
        assert client.get("/repos/octo/models/pulls") == []
    assert len(fake.requests) == 4
    # urllib3's schedule: the first retry at once, then backoff_s * 2, * 4
    assert sleeps == pytest.approx([0.002, 0.004])


def test_post_is_never_retried(fake, sarif):
    # GitHub may have applied a POST that answered 502: a second one could duplicate it.
    fake.inject(Fault(502))
    sleeps = Sleeps()
    with client_for(fake, sleeps) as client, pytest.raises(GitHubError) as info:
        upload_sarif(client, sarif, commit_sha=HEAD_SHA, ref="refs/heads/main")
    assert info.value.status == 502 and info.value.exit_code == 1
    assert len(fake.requests) == 1 and sleeps == [] and fake.sarifs == {}


def test_gives_up_after_the_last_attempt_with_status(fake):
    fake.inject(*[Fault(502, body={"message": "Server Error"})] * 4)
    with client_for(fake, attempts=4) as client, pytest.raises(GitHubError) as info:
        client.get("/repos/octo/models/pulls")
    assert info.value.status == 502
    assert "Server Error" in str(info.value)
    assert len(fake.requests) == 4


def test_secondary_rate_limit_honours_retry_after(fake):
    fake.inject(Fault(403, {"Retry-After": "7"}, {"message": "You have exceeded a secondary rate limit"}))
    sleeps = Sleeps()
    with client_for(fake, sleeps) as client:
        assert client.get("/repos/octo/models/pulls", state="open") == []
    assert sleeps == [7.0]
    assert len(fake.requests) == 2


def test_rate_limit_waits_until_reset(fake):
    now = 1_000_000.0
    fake.inject(Fault(429, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(now) + 12)}))
    sleeps = Sleeps()
    with client_for(fake, sleeps, clock=lambda: now) as client:
        client.get("/repos/octo/models/pulls")
    assert sleeps == [12.0]


def test_rate_limit_reset_beyond_max_wait_is_an_error(fake):
    now = 1_000_000.0
    fake.inject(Fault(403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(now) + 3600)}, {"message": "API rate limit exceeded"}))
    sleeps = Sleeps()
    with client_for(fake, sleeps, clock=lambda: now) as client, pytest.raises(GitHubError, match="rate limit exceeded") as info:
        client.get("/repos/octo/models/pulls")
    assert info.value.status == 403 and sleeps == []


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_other_4xx_fail_at_once_with_githubs_message(fake, status):
    fake.inject(Fault(status, body={"message": "Resource not accessible by integration", "errors": [{"code": "custom", "message": "no write"}]}))
    with client_for(fake) as client, pytest.raises(GitHubError) as info:
        client.post("/repos/octo/models/pulls", {"title": "t"})
    assert info.value.status == status
    assert "Resource not accessible by integration (no write)" in str(info.value)
    assert "POST /repos/octo/models/pulls" in str(info.value)
    assert len(fake.requests) == 1


# ---- commit + pull request -------------------------------------------------------------------

CHECKPOINT = bytes(range(256)) * 40 + b"\x00\xff safetensors"


def _repair(client: GitHubClient, content: bytes = CHECKPOINT) -> tuple[str, object]:
    commit = commit_file(client, branch="ci-gate/repair/main", base_sha=FakeGitHub.BASE_SHA, path="./models/coop.safetensors", content=content, message="ci-gate: repaired")
    pr = open_or_update_pr(client, head="ci-gate/repair/main", base="main", title="ci-gate: repaired", body="re-verified clean")
    return commit, pr


def test_commit_repair_creates_blob_tree_commit_ref_and_pr(fake):
    with client_for(fake) as client:
        commit, pr = _repair(client)

    assert fake.calls() == [
        ("POST", "/git/blobs"),
        ("GET", f"/git/commits/{FakeGitHub.BASE_SHA}"),
        ("POST", "/git/trees"),
        ("POST", "/git/commits"),
        ("GET", "/git/ref/heads/ci-gate/repair/main"),
        ("POST", "/git/refs"),
        ("GET", "/pulls"),
        ("POST", "/pulls"),
    ]
    tree_request = fake.requests[2].body
    assert tree_request["base_tree"] == FakeGitHub.BASE_TREE
    [entry] = tree_request["tree"]
    assert entry["path"] == "models/coop.safetensors"
    assert fake.blobs[entry["sha"]] == CHECKPOINT  # binary content survives base64
    assert fake.commits[commit]["parents"] == [{"sha": FakeGitHub.BASE_SHA}]
    assert fake.refs["refs/heads/ci-gate/repair/main"] == commit
    assert pr.created and pr.number == 1
    assert fake.pulls[0]["head"] == "ci-gate/repair/main" and fake.pulls[0]["base"] == "main"
    assert fake.requests[6].query == {"head": "octo:ci-gate/repair/main", "base": "main", "state": "open"}


def test_second_repair_moves_the_branch_and_updates_the_same_pr(fake):
    with client_for(fake) as client:
        first, _ = _repair(client)
        fake.requests.clear()
        second, pr = _repair(client, CHECKPOINT + b"v2")

    assert second != first
    methods = fake.calls()
    assert ("PATCH", "/git/refs/heads/ci-gate/repair/main") in methods
    assert ("POST", "/git/refs") not in methods and ("POST", "/pulls") not in methods
    assert ("PATCH", "/pulls/1") in methods
    patch = next(r for r in fake.requests if r.method == "PATCH" and "/git/refs/" in r.path)
    assert patch.body == {"sha": second, "force": True}
    assert fake.refs["refs/heads/ci-gate/repair/main"] == second
    assert len(fake.pulls) == 1 and not pr.created


def test_commit_to_unknown_base_commit_fails_with_404(fake):
    with client_for(fake) as client, pytest.raises(GitHubError) as info:
        commit_file(client, branch="b", base_sha="9" * 40, path="m.safetensors", content=b"x", message="m")
    assert info.value.status == 404


# ---- pull-request comment --------------------------------------------------------------------

def test_comment_is_created_once_then_updated_in_place(fake):
    fake.comment_page_size = 2
    for i in range(5):
        fake.add_comment(7, f"review comment {i}")
    fake.add_comment(7, f"> quoting\n{MARKER}")  # mentions the marker, but is not ours

    with client_for(fake) as client:
        first = upsert_comment(client, number=7, markdown="verdict: backdoor")
        assert first.created
        ours = [c for c in fake.comments[7] if c["body"].startswith(MARKER)]
        assert len(ours) == 1 and ours[0]["body"] == f"{MARKER}\nverdict: backdoor"

        fake.requests.clear()
        second = upsert_comment(client, number=7, markdown="verdict: clean")

    assert not second.created and second.id == first.id
    assert len(fake.comments[7]) == 7
    assert [c["body"] for c in fake.comments[7] if c["id"] == first.id] == [f"{MARKER}\nverdict: clean"]
    # our comment sits on the 4th page of 2: found only by following the Link headers
    assert [r.query.get("page", "1") for r in fake.requests if r.method == "GET"] == ["1", "2", "3", "4"]
    assert fake.calls()[-1] == ("PATCH", f"/issues/comments/{first.id}")


def test_keyed_comments_are_separate_per_checkpoint(fake):
    with client_for(fake) as client:
        a = upsert_comment(client, number=3, markdown="model a", key="models/a.safetensors")
        b = upsert_comment(client, number=3, markdown="model b", key="models/b.safetensors")
        a2 = upsert_comment(client, number=3, markdown="model a again", key="models/a.safetensors")
    assert a.id != b.id and a2.id == a.id and len(fake.comments[3]) == 2


def test_pr_number_from_ref():
    assert pr_number_from_ref("refs/pull/42/merge") == 42
    assert pr_number_from_ref("refs/pull/42/head") == 42
    assert pr_number_from_ref("refs/heads/pull/42/merge") is None
    assert pr_number_from_ref("") is None


# ---- the token never leaks -------------------------------------------------------------------

def _assert_no_token(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text


def test_token_is_not_in_errors_even_when_the_server_echoes_it(fake):
    fake.inject(Fault(401, body={"message": f"Bad credentials: {TOKEN}"}))
    with client_for(fake) as client:
        with pytest.raises(GitHubError) as info:
            client.get(f"/repos/octo/models/pulls?token={TOKEN}")
        _assert_no_token(str(info.value), repr(info.value), repr(info.value.args), info.value.message, info.value.path, repr(client))
        assert "***" in str(info.value)


def test_pagination_never_follows_a_link_to_another_host(fake):
    fake.inject(Fault(200, {"Link": '<http://127.0.0.2:9/steal?page=2>; rel="next"'}, []))
    with client_for(fake) as client, pytest.raises(GitHubError, match="leaves the API host"):
        list(client.paginate("/repos/octo/models/issues/1/comments"))
    assert len(fake.requests) == 1


def test_token_is_sent_even_with_netrc_credentials(fake, tmp_path, monkeypatch):
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login someone password other-secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with client_for(fake) as client:
        client.get("/repos/octo/models/pulls")
    assert fake.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_token_is_not_in_network_errors():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = GitHubClient(f"http://127.0.0.1:{port}", "octo/models", TOKEN, retry=RetryPolicy(attempts=2, backoff_s=0.001), sleep=Sleeps())
    with pytest.raises(GitHubError) as info:
        client.get("/repos/octo/models/pulls")
    assert info.value.status is None and "ConnectionError" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    _assert_no_token(str(info.value), repr(info.value))


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    out = capsys.readouterr()
    return info.value.code, out.out + out.err


@pytest.fixture
def action_env(monkeypatch, fake, tmp_path):
    for name in ("GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_WORKSPACE", "GITHUB_HEAD_REF", "GITHUB_REF_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GITHUB_TOKEN", TOKEN)
    monkeypatch.setenv("GITHUB_REPOSITORY", fake.repo)
    monkeypatch.setenv("GITHUB_API_URL", fake.url)
    monkeypatch.setenv("GITHUB_SHA", FakeGitHub.BASE_SHA)
    monkeypatch.setenv("GITHUB_REF", "refs/pull/5/merge")
    output = tmp_path / "github_output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    return output


def test_cli_upload_comment_and_commit_end_to_end(fake, action_env, tmp_path, capsys):
    scan = tmp_path / "scan"
    result_json = saved_result(scan)
    render(make_result(scan), scan, ["sarif", "md"])
    repaired = tmp_path / "repaired.safetensors"
    repaired.write_bytes(CHECKPOINT)

    code, out = _cli(["github", "upload-sarif", str(scan / "report.sarif"), "--wait-timeout", "5"], capsys)
    assert code == 0, out
    assert "processing status: complete" in out
    [stored] = fake.sarifs.values()
    assert stored["request"]["ref"] == "refs/pull/5/merge" and stored["request"]["commit_sha"] == FakeGitHub.BASE_SHA

    code, out = _cli(["github", "comment", str(scan / "summary.md"), "--key", "models/coop_cifar10.safetensors"], capsys)
    assert code == 0, out
    [comment] = fake.comments[5]
    assert "backdoor detected" in comment["body"]

    code, out = _cli(["github", "commit-repair", str(repaired), "--path", "models/coop_cifar10.safetensors", "--base-branch", "main"], capsys)
    assert code == 0, out
    assert fake.pulls[0]["head"] == "ci-gate/repair/main"
    outputs = action_env.read_text()
    assert "pr-url<<" in outputs and fake.pulls[0]["html_url"] in outputs and "sarif-id<<" in outputs
    _assert_no_token(outputs, out)
    assert result_json.is_file()


def test_cli_api_failure_exits_1_without_the_token(fake, action_env, tmp_path, capsys):
    scan = tmp_path / "scan"
    render(make_result(scan), scan, ["sarif"])
    fake.inject(Fault(403, body={"message": f"Resource not accessible by integration {TOKEN}"}))
    code, out = _cli(["github", "upload-sarif", str(scan / "report.sarif")], capsys)
    assert code == 1
    assert "403" in out and "Resource not accessible" in out
    _assert_no_token(out)


def test_cli_bad_input_exits_2(fake, action_env, tmp_path, capsys, monkeypatch):
    code, out = _cli(["github", "upload-sarif", str(tmp_path / "missing.sarif")], capsys)
    assert code == 2 and "file not found" in out
    (tmp_path / "bad.sarif").write_text("{not json")
    code, out = _cli(["github", "upload-sarif", str(tmp_path / "bad.sarif")], capsys)
    assert code == 2 and "not valid JSON" in out
    code, out = _cli(["github", "commit-repair", str(tmp_path / "bad.sarif"), "--path", "../outside", "--base-branch", "main"], capsys)
    assert code == 2 and "--path" in out
    monkeypatch.delenv("GITHUB_TOKEN")
    code, out = _cli(["github", "comment", str(tmp_path / "bad.sarif")], capsys)
    assert code == 2 and "$GITHUB_TOKEN is empty or not set" in out
    assert fake.requests == []


def test_cli_comment_outside_a_pull_request_is_a_no_op(fake, action_env, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_REF", "refs/heads/main")
    (tmp_path / "summary.md").write_text("hello")
    code, out = _cli(["github", "comment", str(tmp_path / "summary.md")], capsys)
    assert code == 0 and "not a pull request" in out and fake.requests == []


# ---- action outputs and job summary ----------------------------------------------------------

def parse_github_output(text: str) -> dict[str, str]:
    """The runner's reading of $GITHUB_OUTPUT: name=value lines and name<<DELIM blocks."""
    values, lines = {}, iter(text.split("\n"))
    for line in lines:
        if "<<" in line:
            name, delimiter = line.split("<<", 1)
            body = []
            for inner in lines:
                if inner == delimiter:
                    break
                body.append(inner)
            else:
                raise AssertionError(f"unterminated block for {name}")
            values[name] = "\n".join(body)
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
    return values


def test_outputs_survive_newlines_and_delimiter_lookalikes(tmp_path):
    path = tmp_path / "out"
    path.write_text("earlier=step\n")
    tricky = "line one\nEOF\nci_gate_deadbeef\nname<<x = y"
    write_outputs(path, {"verdict": "backdoor", "target-class": tricky})
    values = parse_github_output(path.read_text())
    assert values == {"earlier": "step", "verdict": "backdoor", "target-class": tricky}
    with pytest.raises(ValueError):
        format_outputs({"bad=name": "x"})


def test_outputs_command_sets_verdict_paths_and_appends_summary(tmp_path, monkeypatch, capsys):
    scan = tmp_path / "scan"
    result_json = saved_result(scan)
    render(make_result(scan), scan, ["html", "sarif"])
    output, summary = tmp_path / "gh_out", tmp_path / "gh_summary"
    summary.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, out = _cli(["github", "outputs", str(result_json), "--artifact-name", "ci-gate-report", "--run-url", "https://example.test/run/1"], capsys)
    assert code == 0, out
    values = parse_github_output(output.read_text())
    assert values["verdict"] == "backdoor" and values["target-class"] == "cat"
    assert values["report-html"] == str(scan / "report.html")
    assert values["report-sarif"] == str(scan / "report.sarif")
    assert values["report-md"] == ""  # not rendered in this scan folder
    assert values["result-json"] == str(result_json)
    text = summary.read_text()
    assert text.startswith("# earlier step\n") and "backdoor detected" in text and "`ci-gate-report`" in text


def test_result_outputs_for_a_clean_model(tmp_path):
    result_json = saved_result(tmp_path, verdict="clean")
    values = result_outputs(make_result(tmp_path, verdict="clean"), result_json)
    assert values["verdict"] == "clean" and values["target-class"] == ""


def test_append_step_summary_appends(tmp_path):
    path = tmp_path / "summary"
    append_step_summary(path, "one")
    append_step_summary(path, "two\n")
    assert path.read_text() == "one\ntwo\n"
