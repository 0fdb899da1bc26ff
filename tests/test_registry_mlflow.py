"""The MLflow Model Registry gate against a real MLflow tracking server (`mlflow server`, sqlite
backend, local artifact root, on 127.0.0.1), started once for this module and stopped after.

The model is tests/tiny_scan.py's one-second random-weight checkpoint. Two policies give it two
real verdicts: `tiny` (the default thresholds: CLEAN) and `tiny-k05` (k=0.5, min_asr=0: the most
anomalous class is flagged, BACKDOOR); the registry code sees nothing but the scans' results.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="the mlflow extra is not installed (pip install -e '.[mlflow]'): the MLflow registry gate is untested")

from mlflow import MlflowClient  # noqa: E402

from ci_gate import __version__  # noqa: E402
from ci_gate.cli import main  # noqa: E402
from ci_gate.result import load_result  # noqa: E402
from tiny_scan import build, published_weights  # noqa: E402

NAME = "tiny-clip"
TINY_POLICY = "version: 1\nname: tiny\ndevice: cpu\npool: {min_images: 8, max_images: 8}\ninversion: {batch_size: 8, epochs: 1}\n"
FLAGGING_POLICY = TINY_POLICY.replace("name: tiny", "name: tiny-k05") + "detection: {statistic: loss_drop, k: 0.5, absolute_k: 0.5, min_asr: 0.0}\n"


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` in its own process group (it starts a uvicorn child), so teardown stops both."""

    def __init__(self, root: Path):
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                 "--default-artifact-root", (root / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(self.port),
                 "--artifacts-destination", (root / "proxied").as_uri(), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=root,
            )  # fmt: skip

    def wait(self, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.uri
            except OSError:
                time.sleep(0.25)
        pytest.fail(f"mlflow server did not answer /health within {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("mlflow"))
    yield srv  # the checkpoint is built while the server starts; tests wait for it through `registry`
    srv.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_thread, server):
    root = tmp_path_factory.mktemp("registry")
    ckpt, pool = build(root / "m")
    (root / "tiny.yaml").write_text(TINY_POLICY)
    (root / "tiny-k05.yaml").write_text(FLAGGING_POLICY)
    # the published weights of the tiny model's embedded tower: without them it is unverified, which fails the gate
    return {"root": root, "ckpt": ckpt, "pool": pool, "policy": root / "tiny.yaml", "flagging": root / "tiny-k05.yaml", "published": published_weights(root / "m")}


def _register(client: MlflowClient, name: str, *files: Path, run: bool = True) -> str:
    """A new version of ``name`` whose artifacts are ``files`` under model/; returns its number.
    Without ``run``, they are an MLflow 3 logged model made outside any run: the version has no
    source run."""
    if run:
        exp = client.get_experiment_by_name("training") or client.get_experiment(client.create_experiment("training"))
        r = client.create_run(exp.experiment_id)
        for f in files:
            client.log_artifact(r.info.run_id, str(f), artifact_path="model")
        client.set_terminated(r.info.run_id)
        return client.create_model_version(name, f"{r.info.artifact_uri}/model", run_id=r.info.run_id).version
    if not hasattr(client, "create_logged_model"):
        pytest.skip("a version without a source run is made here from an MLflow 3 logged model; this mlflow is older")
    model = client.create_logged_model(client.get_experiment_by_name("training").experiment_id, name=name)
    for f in files:
        client.log_model_artifact(model.model_id, str(f))
    client.finalize_logged_model(model.model_id, "READY")
    return client.create_model_version(name, f"models:/{model.model_id}", model_id=model.model_id).version


@pytest.fixture(scope="module")
def registry(server, files):
    client = MlflowClient(tracking_uri=server.wait(), registry_uri=server.uri)
    client.create_registered_model(NAME)
    return client


@pytest.fixture(autouse=True)
def no_local_store(tmp_path, monkeypatch):
    """Every MLflow call goes to the server: none falls back to a local store in the working folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # mlflow's own setting, as the docs' CI recipe sets it: no tqdm bars around ci-gate's lines
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    yield
    assert not {"mlflow.db", "mlruns"} & {p.name for p in cwd.iterdir()}


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what the set-up printed (mlflow's client writes run URLs to stdout)
    with pytest.raises(SystemExit) as info:
        main(list(argv))
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _verify(capsys, files, server, uri: str, out: Path, policy: str = "policy", *extra: str) -> tuple[int, str, str]:
    return _cli(capsys, "verify", uri, "--pool", str(files["pool"]), "--policy", str(files[policy]), "--out", str(out),
                "--tracking-uri", server.uri, *extra)


def _run(*argv: str) -> tuple[int, str, str]:
    """main(argv) outside a test function (capsys is per test): (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        main(list(argv))
    return info.value.code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def verified(registry, server, files, tmp_path_factory):
    """Two versions of the same checkpoint: one verified by number under `tiny` (clean), one by
    alias under `tiny-k05` (backdoor), the tracking server taken from MLFLOW_TRACKING_URI."""
    root = tmp_path_factory.mktemp("verified")
    clean, flagged = _register(registry, NAME, files["ckpt"]), _register(registry, NAME, files["ckpt"])
    registry.set_registered_model_alias(NAME, "candidate", flagged)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        runs = {
            "clean": _run("verify", f"models:/{NAME}/{clean}", "--pool", str(files["pool"]), "--policy", str(files["policy"]),
                          "--out", str(root / "clean"), "--tracking-uri", server.uri, "--reference-weights", str(files["published"]), "--quiet"),
        }
        mp.setenv("MLFLOW_TRACKING_URI", server.uri)  # as MLflow's own tools read it
        runs["flagged"] = _run("verify", f"models:/{NAME}@candidate", "--pool", str(files["pool"]), "--policy", str(files["flagging"]),
                               "--out", str(root / "flagged"), "--format", "json", "--reference-weights", str(files["published"]))
    assert not {"mlflow.db", "mlruns"} & {p.name for p in root.iterdir()}
    return {name: {"version": v, "run": runs[name], "out": root / name} for name, v in (("clean", clean), ("flagged", flagged))}


def test_verify_a_version_tags_it_and_logs_the_report(registry, verified, files, tmp_path):
    v, (code, out, err), report = verified["clean"]["version"], verified["clean"]["run"], verified["clean"]["out"]
    assert code == 0, err
    result = load_result(report / "result.json")
    assert result.verdict == "clean" and result.model.path == f"models:/{NAME}/{v}"  # reports name the version
    assert out.startswith("CLEAN ") and len(out.splitlines()) == 1 and "recorded on" not in err  # --quiet: one line
    tags = registry.get_model_version(NAME, v).tags
    assert tags == {
        "ci_gate.verdict": "clean", "ci_gate.gate": "pass", "ci_gate.target": "",
        "ci_gate.result_sha256": _sha(report / "result.json"), "ci_gate.checkpoint_sha256": _sha(files["ckpt"]),
        "ci_gate.checkpoint": "model.safetensors", "ci_gate.version": __version__, "ci_gate.policy": "tiny",
        "ci_gate.policy_sha256": result.policy.sha256, "ci_gate.report": tags["ci_gate.report"],
    }  # fmt: skip
    # the report is logged on the version's source run, under its version and result hash
    run_id = registry.get_model_version(NAME, v).run_id
    assert tags["ci_gate.report"] == f"runs:/{run_id}/ci-gate/version-{v}/{tags['ci_gate.result_sha256'][:12]}"
    logged = {f.path.rsplit("/", 1)[-1] for f in registry.list_artifacts(run_id, tags["ci_gate.report"].split("/", 2)[2])}
    assert {"result.json", "report.html", "summary.md", "report.sarif", "triggers"} <= logged
    local = registry.download_artifacts(run_id, tags["ci_gate.report"].split("/", 2)[2] + "/result.json", str(tmp_path / "dl"))
    assert _sha(local) == tags["ci_gate.result_sha256"]


def test_verify_by_alias_records_a_backdoor_on_the_resolved_version(registry, verified):
    v, (code, out, err), report = verified["flagged"]["version"], verified["flagged"]["run"], verified["flagged"]["out"]
    assert code == 1, err  # the verdict's exit code, after recording it
    result = load_result(report / "result.json")
    tags = registry.get_model_version(NAME, v).tags
    assert result.verdict == "backdoor" and result.model.path == f"models:/{NAME}/{v}"
    assert (tags["ci_gate.verdict"], tags["ci_gate.gate"], tags["ci_gate.target"]) == ("backdoor", "fail", result.target_class)
    assert f"recorded on models:/{NAME}/{v}: ci_gate.verdict=backdoor gate=fail target=" in err
    # --format json: stdout is the result document alone, the registry line goes to stderr with the rest
    assert json.loads(out) == json.loads((report / "result.json").read_text())


def test_promote_moves_the_alias_only_for_a_version_verified_clean_under_that_policy(registry, server, verified, files, capsys):
    clean, flagged, never = verified["clean"]["version"], verified["flagged"]["version"], _register(registry, NAME, files["ckpt"])

    def promote(version: str, policy: str = "policy") -> tuple[int, str]:
        code, out, err = _cli(capsys, "registry", "promote", f"models:/{NAME}/{version}", "--alias", "production",
                              "--policy", str(files[policy]), "--tracking-uri", server.uri)
        return code, out + err

    def production() -> str | None:
        return registry.get_registered_model(NAME).aliases.get("production")

    code, text = promote(never)
    assert (code, production()) == (1, None) and "never verified by ci-gate" in text
    code, text = promote(flagged, "flagging")
    assert (code, production()) == (1, None) and "verified as BACKDOOR" in text
    code, text = promote(clean, "flagging")  # clean under `tiny`, never checked under `tiny-k05`
    assert (code, production()) == (1, None) and "was verified under policy 'tiny'" in text
    code, text = promote(clean)
    assert (code, production()) == (0, clean) and f"PROMOTED models:/{NAME}/{clean} -> models:/{NAME}@production" in text
    # a forged tag does not promote: the logged result.json no longer hashes to it
    registry.set_registered_model_alias(NAME, "production", flagged)
    registry.set_model_version_tag(NAME, flagged, "ci_gate.result_sha256", registry.get_model_version(NAME, clean).tags["ci_gate.result_sha256"])
    code, text = promote(flagged, "flagging")
    assert (code, production()) == (1, flagged) and "does not hash to the ci_gate.result_sha256 tag" in text
    # an alias with a "/" parsed as models:/NAME@x/VERSION, a version number, and no alias at all
    code, out, err = _cli(capsys, "registry", "promote", f"models:/{NAME}/{clean}", "--alias", f"staging/{clean}",
                          "--policy", str(files["policy"]), "--tracking-uri", server.uri)
    assert (code, out) == (2, "") and err.startswith(f"ci-gate: error: --alias: 'staging/{clean}' is not an MLflow alias"), err
    assert set(registry.get_registered_model(NAME).aliases) == {"production", "candidate"}


def test_bad_registry_input_is_exit_2_naming_it(registry, server, files, tmp_path, capsys, monkeypatch):
    other = tmp_path / "other.safetensors"
    other.write_bytes(files["ckpt"].read_bytes())
    several = _register(registry, NAME, files["ckpt"], other)
    none = _register(registry, NAME, files["policy"])
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x04 a pickled state dict the server may load instead")
    beside = _register(registry, NAME, files["ckpt"], pickle)
    upper = tmp_path / "up" / "MODEL.SafeTensors"
    upper.parent.mkdir()
    upper.write_bytes(b"a second checkpoint in another case")
    cased = _register(registry, NAME, files["ckpt"], upper)
    cases = {
        f"models:/{NAME}/{several}": "2 .safetensors files among the version's artifacts (model.safetensors, other.safetensors)",
        f"models:/{NAME}/{none}": "no .safetensors checkpoint among the version's artifacts",
        # weights the scan would not see: verify must not tag the version as if they were scanned
        f"models:/{NAME}/{beside}": "weights in another format beside the checkpoint (model.pt)",
        f"models:/{NAME}/{cased}": "2 .safetensors files among the version's artifacts (MODEL.SafeTensors, model.safetensors)",
        f"models:/{NAME}/999": f"models:/{NAME}/999: MLflow:",
        f"models:/{NAME}@nobody": f"models:/{NAME}@nobody: MLflow:",
        f"models:/{NAME}/latest": "the version must be a number",
    }
    for uri, message in cases.items():
        code, _, err = _verify(capsys, files, server, uri, tmp_path / "r", "policy", "-q")
        assert code == 2 and err.startswith("ci-gate: error: ") and message in err and len(err.splitlines()) == 1, (uri, err)
    assert "ci_gate.verdict" not in registry.get_model_version(NAME, several).tags  # nothing recorded
    assert "ci_gate.verdict" not in registry.get_model_version(NAME, beside).tags
    # a server that does not answer is bad input too, and the URI's password is never shown
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    code, _, err = _cli(capsys, "verify", f"models:/{NAME}/1", "--tracking-uri", f"http://ci:s3cret-passw0rd@127.0.0.1:{_free_port()}")
    assert code == 2 and "MLflow: API request to http://***@127.0.0.1:" in err and "s3cret" not in err
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = _cli(capsys, "verify", f"models:/{NAME}/{several}", "--pool", str(files["pool"]))
    assert code == 2 and "--tracking-uri: no MLflow tracking server" in err


def test_scan_new_scans_each_untagged_version_once(registry, server, files, tmp_path, capsys):
    name = "tiny-poll"
    registry.create_registered_model(name)
    # exactly one checkpoint among other files is fine
    first, second = _register(registry, name, files["ckpt"], files["policy"]), _register(registry, name, files["ckpt"], run=False)
    argv = ["registry", "scan-new", name, "--pool", str(files["pool"]), "--out", str(tmp_path / "poll"), "--tracking-uri", server.uri, "--reference-weights", str(files["published"])]
    code, out, err = _cli(capsys, *argv, "--policy", str(files["policy"]), "--limit", "1")
    assert code == 0, err
    assert out.count("CLEAN ") == 1 and f"recorded on models:/{name}/{first}: ci_gate.verdict=clean" in err
    assert "ci_gate.verdict" not in registry.get_model_version(name, second).tags  # --limit 1, oldest first
    code, out, err = _cli(capsys, *argv, "--policy", str(files["flagging"]))
    assert code == 1 and out.count("BACKDOOR ") == 1 and f"1 of 1 new versions fail the gate: models:/{name}/{second}" in err
    for v, verdict in ((first, "clean"), (second, "backdoor")):
        tags = registry.get_model_version(name, v).tags
        assert tags["ci_gate.verdict"] == verdict and tags["ci_gate.result_sha256"] == _sha(tmp_path / "poll" / v / "result.json")
    # a version registered without a run gets its report on a new run in the `ci-gate` experiment
    report_run = registry.get_model_version(name, second).tags["ci_gate.report"].split("/")[1]
    assert registry.get_run(report_run).info.experiment_id == registry.get_experiment_by_name("ci-gate").experiment_id
    code, out, _ = _cli(capsys, *argv)
    assert code == 0 and out.startswith("nothing new")
    # a verdict tag set by hand at registration is not a scan: the version is scanned all the same
    third = _register(registry, name, files["ckpt"])
    registry.set_model_version_tag(name, third, "ci_gate.verdict", "clean")
    code, out, err = _cli(capsys, *argv, "--policy", str(files["flagging"]))
    assert code == 1 and f"1 of 1 new versions fail the gate: models:/{name}/{third}" in err
    assert registry.get_model_version(name, third).tags["ci_gate.verdict"] == "backdoor"


def test_promote_refuses_a_modified_tower_whatever_fail_on(registry, server, files, tmp_path, capsys):
    from safetensors.torch import save_file

    from ci_gate.model.small import random_clip_state, small_config

    # the published weights the user holds differ from the checkpoint's embedded tower in one tensor
    published = random_clip_state(small_config("tiny-32"), seed=0)
    changed = next(k for k in published if k.startswith("visual.") and published[k].is_floating_point())
    published[changed] = published[changed] + 0.01
    ref = tmp_path / "published.safetensors"
    save_file({k: v.contiguous() for k, v in published.items()}, str(ref))
    never = tmp_path / "never.yaml"
    never.write_text(TINY_POLICY.replace("name: tiny", "name: tiny-never") + "report: {fail_on: never}\n")
    v = _register(registry, NAME, files["ckpt"])
    code, _, err = _verify(capsys, files, server, f"models:/{NAME}/{v}", tmp_path / "out", "policy", "--policy", str(never), "--reference-weights", str(ref), "--quiet")
    assert code == 0, err  # fail_on: never keeps the job green...
    assert load_result(tmp_path / "out" / "result.json").encoder.modified
    code, out, err = _cli(capsys, "registry", "promote", f"models:/{NAME}/{v}", "--alias", "staging", "--policy", str(never), "--tracking-uri", server.uri)
    # ...it does not make the towers the published ones
    assert code == 1 and "its encoder differs from the published weights" in out + err
    assert registry.get_registered_model(NAME).aliases.get("staging") is None


def test_promote_refuses_a_version_whose_towers_nobody_checked(registry, server, files, tmp_path, capsys):
    never = tmp_path / "never.yaml"
    never.write_text(TINY_POLICY.replace("name: tiny", "name: tiny-never") + "report: {fail_on: never}\n")
    v = _register(registry, NAME, files["ckpt"])
    # no --reference-weights: the embedded tower is unverified, and the default answer fails the gate
    code, out, err = _verify(capsys, files, server, f"models:/{NAME}/{v}", tmp_path / "out", "policy", "--quiet")
    assert code == 1 and "UNVERIFIED_ENCODER" in out, out + err
    assert load_result(tmp_path / "out" / "result.json").encoder.status == "unverified"
    # fail_on never keeps the job green, but promotion still refuses the unchecked towers
    code, _, err = _verify(capsys, files, server, f"models:/{NAME}/{v}", tmp_path / "never", "policy", "--policy", str(never), "--quiet")
    assert code == 0, err
    code, out, err = _cli(capsys, "registry", "promote", f"models:/{NAME}/{v}", "--alias", "staging", "--policy", str(never), "--tracking-uri", server.uri)
    assert code == 1 and "its encoder could not be checked against published weights" in out + err
    assert registry.get_registered_model(NAME).aliases.get("staging") is None


def test_promote_refuses_a_version_whose_checkpoint_changed_after_the_scan(registry, server, verified, files, tmp_path, capsys):
    # last in this module: it re-logs the clean version's checkpoint
    v = verified["clean"]["version"]
    before = registry.get_registered_model(NAME).aliases.get("production")
    swapped = tmp_path / "swap" / "model.safetensors"
    swapped.parent.mkdir()
    swapped.write_bytes(files["ckpt"].read_bytes()[:-4] + b"\0\0\0\0")
    registry.log_artifact(registry.get_model_version(NAME, v).run_id, str(swapped), artifact_path="model")  # same name, new bytes
    code, out, err = _cli(capsys, "registry", "promote", f"models:/{NAME}/{v}", "-a", "staging", "-p", str(files["policy"]),
                          "--tracking-uri", server.uri)
    assert code == 1 and "the checkpoint changed since it was verified" in err
    assert "staging" not in registry.get_registered_model(NAME).aliases
    assert registry.get_registered_model(NAME).aliases.get("production") == before


def test_a_bad_tracking_uri_is_exit_2_and_its_credentials_never_shown(capsys, monkeypatch):
    from ci_gate.github.redact import redact

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cases = {
        "ftp://mlflow.example/x": "--tracking-uri: MLflow: Model registry functionality is unavailable",  # was exit 3
        "http://ci:s3cret-passw0rd@[::1": "--tracking-uri: not a valid URI (Invalid IPv6 URL)",  # was exit 3, password in the crash log
        "http://mlflow.example:99999/": "--tracking-uri: not a valid URI (Port out of range",
    }
    for uri, message in cases.items():
        code, out, err = _cli(capsys, "verify", f"models:/{NAME}/1", "--tracking-uri", uri)
        assert code == 2 and err.startswith(f"ci-gate: error: {message}") and len(err.splitlines()) == 1, (uri, err)
        assert "s3cret" not in err and out == ""
    # a token given as the user name (https://TOKEN@host) is masked from then on, as a password is
    code, _, err = _cli(capsys, "verify", f"models:/{NAME}/1", "--tracking-uri", f"http://tok-0123456789abcdef@127.0.0.1:{_free_port()}")
    assert code == 2 and "tok-0123456789abcdef" not in err
    assert redact("in a traceback: tok-0123456789abcdef") == "in a traceback: ***"
