"""action.yml: well-formed, wired to the CLI, and safe against script injection through inputs."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ACTION = REPO / "action.yml"
CONSTRAINTS = REPO / "action-constraints.txt"


@pytest.fixture(scope="module")
def action() -> dict:
    return yaml.safe_load(ACTION.read_text())


def test_inputs_and_outputs(action):
    expected_inputs = {
        "checkpoint", "policy", "pool", "output-dir", "fail-on", "upload-sarif", "repair", "clean-data",
        "auto-commit", "branch", "python", "extra-args", "backbone-weights",
    }
    assert expected_inputs <= set(action["inputs"])
    assert action["inputs"]["checkpoint"]["required"] is True
    assert action["inputs"]["policy"]["default"] == "default"
    assert {"verdict", "target-class", "report-html", "report-sarif", "report-md", "result-json", "exit-code", "outcome"} <= set(action["outputs"])
    assert action["outputs"]["outcome"]["value"] == "${{ steps.verify.outputs.outcome }}"


def test_outputs_and_conditions_reference_existing_steps(action):
    steps = action["runs"]["steps"]
    ids = {s["id"] for s in steps if "id" in s}
    text = ACTION.read_text()
    referenced = set(re.findall(r"steps\.([\w-]+)\.(?:outputs|outcome)", text))
    assert referenced <= ids, referenced - ids
    used_inputs = set(re.findall(r"inputs\.([\w-]+)", text))
    assert used_inputs <= set(action["inputs"]), used_inputs - set(action["inputs"])


def test_scripts_never_splice_expressions_into_shell_code(action):
    for step in action["runs"]["steps"]:
        if "run" in step:
            assert "${{" not in step["run"], f"step {step['name']!r}: pass values through env instead"
            assert step["shell"] == "bash"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_scripts_are_valid_bash(action):
    for step in action["runs"]["steps"]:
        if "run" in step:
            done = subprocess.run(["bash", "-n"], input=step["run"], text=True, capture_output=True)
            assert done.returncode == 0, f"{step['name']}: {done.stderr}"


def test_flow_installs_itself_verifies_publishes_and_exits_with_verifys_code(action):
    steps = action["runs"]["steps"]
    names = [s.get("id") or s.get("uses") or s["name"] for s in steps]
    assert (
        names.index("setup") < names.index("verify") < names.index("publish") < names.index("repair")
        < names.index("reverify") < names.index("commit")
    )
    setup = next(s for s in steps if s.get("id") == "setup")["run"]
    assert 'pip install' in setup and '"$GITHUB_ACTION_PATH"' in setup
    assert any(s.get("uses", "").startswith("actions/upload-artifact@") for s in steps)
    joined = "\n".join(s.get("run", "") for s in steps)
    for command in ('"$CI_GATE" github upload-sarif', '"$CI_GATE" github comment', '"$CI_GATE" github outputs', '"$CI_GATE" report'):
        assert command in joined
    # the repaired checkpoint is committed only when the action verified it again and it passed
    # (a push with the workflow token starts no new run that could check it)
    commit = next(s for s in steps if s.get("id") == "commit")
    assert "steps.reverify.outputs.repaired-checkpoint != ''" in commit["if"]
    reverify = next(s for s in steps if s.get("id") == "reverify")
    assert reverify["run"].lstrip().startswith("set -uo pipefail\nargs=(verify \"$CANDIDATE\"")
    assert 'if [ "$code" -eq 0 ]; then\n  echo "repaired-checkpoint=$CANDIDATE"' in reverify["run"]
    last = steps[-1]
    assert last["if"] == "always()" and "steps.verify.outputs.exit-code" in last["env"]["CODE"]
    assert 'exit "$code"' in last["run"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.parametrize(
    ("code", "exit_code", "message"),
    [
        ("0", 0, "ci-gate: gate passes"),
        ("1", 1, "::error::ci-gate: gate fails (backdoor detected or policy violated)"),
        ("2", 2, "::error::ci-gate: bad input or configuration (exit code 2)"),
        ("3", 3, "::error::ci-gate: tool failure (exit code 3): an internal error, not a verdict on the model"),
        ("141", 141, "::error::ci-gate: tool failure: verify did not finish (exit code 141)"),
        ("", 3, "::error::ci-gate: tool failure: verify did not run"),
    ],
)
def test_the_gate_step_tells_a_crash_from_a_backdoor(action, code, exit_code, message):
    gate = action["runs"]["steps"][-1]
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", gate["run"]], env={"CODE": code, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == exit_code
    assert done.stdout.strip() == message or done.stdout.startswith(message), done.stdout
    if exit_code != 1:
        assert "backdoor detected" not in done.stdout


def _step(action: dict, sid: str) -> dict:
    return next(s for s in action["runs"]["steps"] if s.get("id") == sid)


def test_third_party_actions_are_pinned_by_commit_sha():
    # zizmor's unpinned-uses: a tag can be moved to other code; a full commit SHA cannot. The
    # comment names the release the SHA is, for people and for Dependabot.
    lines = [line.strip() for line in ACTION.read_text().splitlines() if re.match(r"\s*(?:- )?uses:", line)]
    assert lines, "action.yml uses no actions at all?"
    for line in lines:
        assert re.fullmatch(r"(?:- )?uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+", line), line


def test_the_venv_stays_off_the_callers_path(action):
    steps = action["runs"]["steps"]
    for step in steps:
        run = step.get("run", "")
        assert "GITHUB_PATH" not in run, step["name"]
        # every call goes through the absolute path the setup step outputs
        assert not re.search(r"(?m)^\s*(?:\{ )?ci-gate\b", run), step["name"]
        if '"$CI_GATE"' in run:
            assert step["env"]["CI_GATE"] == "${{ steps.setup.outputs.ci-gate }}", step["name"]
    assert 'echo "ci-gate=$venv/bin/ci-gate" >> "$GITHUB_OUTPUT"' in _step(action, "setup")["run"]
    assert sum('"$CI_GATE"' in s.get("run", "") for s in steps) >= 6


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_the_install_is_constrained_by_a_shipped_file(action):
    from packaging.requirements import Requirement

    setup = _step(action, "setup")["run"]
    assert 'PIP_CONSTRAINT="$GITHUB_ACTION_PATH/action-constraints.txt"' in setup
    pins = _pins()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    # every runtime dependency is pinned, at a version pyproject allows, except the runner's torch
    for spec in project["project"]["dependencies"] + project["build-system"]["requires"]:
        req = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name == "torch":
            continue
        assert name in pins, f"{name} is not pinned in {CONSTRAINTS.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(req.specifier))
    assert not {"torch", "torchvision"} & set(pins) and not any(n.startswith("nvidia-") for n in pins)


def test_the_pip_cache_is_restored_before_the_install_and_keyed_on_the_constraints(action):
    steps = action["runs"]["steps"]
    [cache] = [s for s in steps if s.get("uses", "").startswith("actions/cache@")]
    order = [s.get("id") or s.get("uses") for s in steps]
    assert order.index("prepare") < order.index(cache["uses"]) < order.index("setup")
    assert cache["with"] == {"path": "${{ steps.prepare.outputs.cache-dir }}", "key": "${{ steps.prepare.outputs.cache-key }}"}
    assert _step(action, "setup")["env"]["PIP_CACHE_DIR"] == cache["with"]["path"]


def _run_prepare(action: dict, tmp_path: Path, python: str) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    from test_github_api import parse_github_output

    output = tmp_path / "github_output"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": python, "GITHUB_ACTION_PATH": str(REPO), "GITHUB_OUTPUT": str(output),
           "RUNNER_TEMP": str(tmp_path), "RUNNER_OS": "Linux", "RUNNER_ARCH": "X64"}
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", _step(action, "prepare")["run"]], env=env,
                          capture_output=True, text=True, timeout=60)
    return done, (parse_github_output(output.read_text()) if output.exists() else {})


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("sha256sum") is None, reason="bash or sha256sum not installed")
def test_the_prepare_step_computes_the_cache_key_from_the_constraints(action, tmp_path):
    done, outputs = _run_prepare(action, tmp_path, sys.executable)
    assert done.returncode == 0, done.stderr
    digest = hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()[:16]
    py = "%d.%d" % sys.version_info[:2]
    assert outputs == {"cache-dir": f"{tmp_path}/ci-gate-pip-cache", "cache-key": f"ci-gate-pip-Linux-X64-py{py}-{digest}"}
    # a Python the pins do not support stops here, with one line saying so, before any install
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/bash\ncase \"$2\" in *print*) echo 3.10 ;; *) exit 1 ;; esac\n")
    old.chmod(0o755)
    (tmp_path / "github_output").unlink()
    done, outputs = _run_prepare(action, tmp_path, str(old))
    assert done.returncode == 2 and outputs == {}
    assert "::error::ci-gate: the action's pinned dependencies (action-constraints.txt) need Python 3.11 or newer" in done.stdout
