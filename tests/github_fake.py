"""A real HTTP server on 127.0.0.1 that behaves like the parts of the GitHub REST API ci-gate uses.

It keeps state (refs, commits, pull requests, comments, SARIF uploads), checks every request the
way GitHub would (token, required fields, existing base trees and parents), records the requests
for assertions, and can be told to answer the next requests with faults: an error status, a rate
limit, a redirect, a body that is not JSON or is cut off, an answer that comes late or never.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict | None


@dataclass
class Fault:
    """The answer to the next request (or the next one ``match`` fits) instead of the API's own."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: object = field(default_factory=lambda: {"message": "injected fault"})
    raw: bytes | None = None  # sent as is instead of body's JSON
    content_type: str = "application/json"
    delay_s: float = 0.0  # before anything is sent (a server that hangs)
    drip_s: float = 0.0  # between single bytes of the body (a server that trickles)
    declared_length: int | None = None  # a Content-Length larger than the body: the answer is cut off
    match: tuple[str, str] | None = None  # (method, regex searched in the path): only such a request gets it

    def fits(self, method: str, path: str) -> bool:
        return self.match is None or (self.match[0] == method and re.search(self.match[1], path) is not None)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    data: bytes
    content_type: str = "application/json"
    delay_s: float = 0.0
    drip_s: float = 0.0
    declared_length: int | None = None


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def _sha(*parts: object) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class FakeGitHub:
    BASE_SHA = "1" * 40
    BASE_TREE = "2" * 40

    def __init__(self, token: str, repo: str = "octo/models", comment_page_size: int = 100):
        self.token = token
        self.repo = repo
        self.comment_page_size = comment_page_size
        self.requests: list[Recorded] = []
        self.faults: deque[Fault] = deque()
        self.lock = threading.Lock()
        self.refs: dict[str, str] = {"refs/heads/main": self.BASE_SHA}
        self.commits: dict[str, dict] = {self.BASE_SHA: {"sha": self.BASE_SHA, "tree": {"sha": self.BASE_TREE}, "parents": []}}
        self.trees: dict[str, dict] = {self.BASE_TREE: {"sha": self.BASE_TREE, "tree": []}}
        self.blobs: dict[str, bytes] = {}
        self.pulls: list[dict] = []
        self.comments: dict[int, list[dict]] = {}
        self.sarifs: dict[str, dict] = {}
        self.sarif_status = "complete"
        self._ids = iter(range(1000, 10**6))
        self._server: ThreadingHTTPServer | None = None
        self._stopping = threading.Event()
        self.url = ""

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeGitHub:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                reply = fake.reply(self.command, self.path, dict(self.headers), raw)
                if reply.delay_s and fake._stopping.wait(reply.delay_s):
                    return
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", reply.content_type)
                    self.send_header("Content-Length", str(reply.declared_length or len(reply.data)))
                    self.end_headers()
                    if not reply.drip_s:
                        self.wfile.write(reply.data)
                        return
                    for i in range(len(reply.data)):
                        if fake._stopping.wait(reply.drip_s):
                            return
                        self.wfile.write(reply.data[i:i + 1])
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its deadline): nothing to tell it

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # a client that hung up is expected in fault tests; tracebacks would land in capsys

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends handlers that are still delaying or trickling
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def inject(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    # ---- helpers for assertions --------------------------------------------------------------
    def calls(self) -> list[tuple[str, str]]:
        prefix = f"/repos/{self.repo}"
        return [(r.method, r.path.removeprefix(prefix)) for r in self.requests]

    def add_comment(self, number: int, body: str, login: str = "someone") -> dict:
        comment = {"id": next(self._ids), "body": body, "user": {"login": login}, "html_url": f"{self.url}/c"}
        self.comments.setdefault(number, []).append(comment)
        return comment

    # ---- request handling --------------------------------------------------------------------
    def reply(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes) -> Reply:
        split = urlsplit(raw_path)
        with self.lock:
            fault = next((f for f in self.faults if f.fits(method, split.path)), None)
            if fault is not None:
                self.faults.remove(fault)
        if fault is None:
            status, extra, payload = self.handle(method, raw_path, headers, raw)
            return Reply(status, extra, json.dumps(payload).encode())
        self._record(method, raw_path, headers, raw)
        data = fault.raw if fault.raw is not None else json.dumps(fault.body).encode()
        return Reply(fault.status, fault.headers, data, fault.content_type, fault.delay_s, fault.drip_s, fault.declared_length)

    def _record(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes) -> tuple[str, dict, object]:
        split = urlsplit(raw_path)
        query = {k: v[0] for k, v in parse_qs(split.query).items()}
        body = json.loads(raw) if raw else None
        with self.lock:
            self.requests.append(Recorded(method, split.path, query, {k.lower(): v for k, v in headers.items()}, body))
        return split.path, query, body

    def handle(self, method: str, raw_path: str, headers: dict[str, str], raw: bytes) -> tuple[int, dict, object]:
        path, query, body = self._record(method, raw_path, headers, raw)
        with self.lock:
            if headers.get("Authorization") != f"Bearer {self.token}":
                return 401, {}, {"message": "Bad credentials"}
            try:
                return self._route(method, path, query, body)
            except HttpError as exc:
                return exc.status, {}, {"message": exc.message}
            except (KeyError, TypeError) as exc:
                return 422, {}, {"message": f"Invalid request: {exc}"}

    def _route(self, method: str, path: str, query: dict, body: dict | None) -> tuple[int, dict, object]:
        prefix = f"/repos/{self.repo}"
        if not path.startswith(prefix + "/"):
            raise HttpError(404, "Not Found")
        rest = path[len(prefix):]
        routes = [
            ("POST", r"/code-scanning/sarifs", self._post_sarif),
            ("GET", r"/code-scanning/sarifs/(?P<id>[^/]+)", self._get_sarif),
            ("POST", r"/git/blobs", self._post_blob),
            ("GET", r"/git/commits/(?P<sha>\w+)", self._get_commit),
            ("POST", r"/git/trees", self._post_tree),
            ("POST", r"/git/commits", self._post_commit),
            ("GET", r"/git/ref/heads/(?P<branch>.+)", self._get_ref),
            ("POST", r"/git/refs", self._post_ref),
            ("PATCH", r"/git/refs/heads/(?P<branch>.+)", self._patch_ref),
            ("GET", r"/pulls", self._list_pulls),
            ("POST", r"/pulls", self._post_pull),
            ("PATCH", r"/pulls/(?P<number>\d+)", self._patch_pull),
            ("GET", r"/issues/(?P<number>\d+)/comments", self._list_comments),
            ("POST", r"/issues/(?P<number>\d+)/comments", self._post_comment),
            ("PATCH", r"/issues/comments/(?P<id>\d+)", self._patch_comment),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, rest)
            if verb == method and match:
                return handler(body=body, query=query, **match.groupdict())
        raise HttpError(404, "Not Found")

    # code scanning
    def _post_sarif(self, body: dict, **_: object) -> tuple[int, dict, object]:
        for key in ("commit_sha", "ref", "sarif"):
            if not body.get(key):
                raise HttpError(422, f"{key} is required")
        if not re.fullmatch(r"[0-9a-f]{40}", body["commit_sha"]):
            raise HttpError(422, "commit_sha is not a SHA")
        decoded = json.loads(gzip.decompress(base64.b64decode(body["sarif"], validate=True)))
        sarif_id = f"sarif-{next(self._ids)}"
        self.sarifs[sarif_id] = {"request": body, "sarif": decoded}
        return 202, {}, {"id": sarif_id, "url": f"{self.url}/repos/{self.repo}/code-scanning/sarifs/{sarif_id}"}

    def _get_sarif(self, id: str, **_: object) -> tuple[int, dict, object]:
        if id not in self.sarifs:
            raise HttpError(404, "Not Found")
        answer = {"processing_status": self.sarif_status}
        if self.sarif_status == "failed":
            answer["errors"] = ["locationFromSarifResult: expected artifact location"]
        return 200, {}, answer

    # git data
    def _post_blob(self, body: dict, **_: object) -> tuple[int, dict, object]:
        if body.get("encoding") != "base64":
            raise HttpError(422, "encoding must be base64")
        content = base64.b64decode(body["content"], validate=True)
        sha = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
        self.blobs[sha] = content
        return 201, {}, {"sha": sha}

    def _get_commit(self, sha: str, **_: object) -> tuple[int, dict, object]:
        if sha not in self.commits:
            raise HttpError(404, "Not Found")
        return 200, {}, self.commits[sha]

    def _post_tree(self, body: dict, **_: object) -> tuple[int, dict, object]:
        if body.get("base_tree") not in self.trees:
            raise HttpError(422, "base_tree does not exist")
        for entry in body["tree"]:
            if entry["sha"] not in self.blobs or entry["mode"] != "100644" or entry["type"] != "blob":
                raise HttpError(422, f"bad tree entry {entry}")
        sha = _sha("tree", body)
        self.trees[sha] = {"sha": sha, "base_tree": body["base_tree"], "tree": body["tree"]}
        return 201, {}, {"sha": sha}

    def _post_commit(self, body: dict, **_: object) -> tuple[int, dict, object]:
        if body["tree"] not in self.trees or any(p not in self.commits for p in body["parents"]) or not body.get("message"):
            raise HttpError(422, "tree or parents do not exist")
        sha = _sha("commit", body, len(self.commits))
        self.commits[sha] = {"sha": sha, "tree": {"sha": body["tree"]}, "parents": [{"sha": p} for p in body["parents"]], "message": body["message"]}
        return 201, {}, {"sha": sha}

    def _get_ref(self, branch: str, **_: object) -> tuple[int, dict, object]:
        ref = f"refs/heads/{branch}"
        if ref not in self.refs:
            raise HttpError(404, "Not Found")
        return 200, {}, {"ref": ref, "object": {"sha": self.refs[ref], "type": "commit"}}

    def _post_ref(self, body: dict, **_: object) -> tuple[int, dict, object]:
        if body["ref"] in self.refs:
            raise HttpError(422, "Reference already exists")
        if body["sha"] not in self.commits:
            raise HttpError(422, "Object does not exist")
        self.refs[body["ref"]] = body["sha"]
        return 201, {}, {"ref": body["ref"], "object": {"sha": body["sha"]}}

    def _patch_ref(self, branch: str, body: dict, **_: object) -> tuple[int, dict, object]:
        ref = f"refs/heads/{branch}"
        if ref not in self.refs:
            raise HttpError(422, "Reference does not exist")
        parents = [p["sha"] for p in self.commits[body["sha"]]["parents"]]
        if self.refs[ref] not in parents and not body.get("force"):
            raise HttpError(422, "Update is not a fast forward")
        self.refs[ref] = body["sha"]
        return 200, {}, {"ref": ref, "object": {"sha": body["sha"]}}

    # pull requests
    def _list_pulls(self, query: dict, **_: object) -> tuple[int, dict, object]:
        owner = self.repo.split("/")[0]
        found = [
            p for p in self.pulls
            if p["state"] == query.get("state", "open")
            and ("head" not in query or f"{owner}:{p['head']}" == query["head"])
            and ("base" not in query or p["base"] == query["base"])
        ]
        return 200, {}, found

    def _post_pull(self, body: dict, **_: object) -> tuple[int, dict, object]:
        if f"refs/heads/{body['head']}" not in self.refs or f"refs/heads/{body['base']}" not in self.refs:
            raise HttpError(422, "Validation Failed")
        if any(p["head"] == body["head"] and p["state"] == "open" for p in self.pulls):
            raise HttpError(422, "A pull request already exists")
        number = len(self.pulls) + 1
        pr = {"number": number, "state": "open", "html_url": f"{self.url}/pull/{number}", **{k: body[k] for k in ("head", "base", "title", "body")}}
        self.pulls.append(pr)
        return 201, {}, pr

    def _patch_pull(self, number: str, body: dict, **_: object) -> tuple[int, dict, object]:
        pr = next((p for p in self.pulls if p["number"] == int(number)), None)
        if pr is None:
            raise HttpError(404, "Not Found")
        pr.update({k: body[k] for k in ("title", "body") if k in body})
        return 200, {}, pr

    # comments
    def _list_comments(self, number: str, query: dict, **_: object) -> tuple[int, dict, object]:
        items = self.comments.get(int(number), [])
        size = min(int(query.get("per_page", 30)), self.comment_page_size)
        page = int(query.get("page", 1))
        chunk = items[(page - 1) * size: page * size]
        headers = {}
        if page * size < len(items):
            base = f"{self.url}/repos/{self.repo}/issues/{number}/comments"
            headers["Link"] = f'<{base}?per_page={size}&page={page + 1}>; rel="next"'
        return 200, headers, chunk

    def _post_comment(self, number: str, body: dict, **_: object) -> tuple[int, dict, object]:
        return 201, {}, self.add_comment(int(number), body["body"], login="github-actions[bot]")

    def _patch_comment(self, id: str, body: dict, **_: object) -> tuple[int, dict, object]:
        for comments in self.comments.values():
            for comment in comments:
                if comment["id"] == int(id):
                    comment["body"] = body["body"]
                    return 200, {}, comment
        raise HttpError(404, "Not Found")
