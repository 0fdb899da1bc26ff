"""action.yml: well-formed, wired to the CLI, and safe against script injection through inputs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ACTION = Path(__file__).resolve().parents[1] / "action.yml"


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
    setup = steps[0]["run"]
    assert 'pip install' in setup and '"$GITHUB_ACTION_PATH"' in setup
    assert any(s.get("uses", "").startswith("actions/upload-artifact@") for s in steps)
    joined = "\n".join(s.get("run", "") for s in steps)
    for command in ("ci-gate github upload-sarif", "ci-gate github comment", "ci-gate github outputs", "ci-gate report"):
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
