"""action.yml's export step (input export-onnx): runs only after a clean verify, exports, attests,
and leaves the attested file in the uploaded report folder; a failed attestation leaves no file.

`ci-gate` is a stand-in that records its arguments (the real export and attest run in-process in
test_export_onnx.py; test_action_cli.py checks every flag the step passes exists).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from test_github_api import parse_github_output

ACTION = Path(__file__).resolve().parents[1] / "action.yml"

SHIM = """#!/bin/bash
printf '%s\\n' "$@" > "$LOG.$1"
if [ "$1" = export ]; then
  out=""; prev=""; for a in "$@"; do [ "$prev" = --onnx ] && out="$a"; prev="$a"; done
  mkdir -p "$(dirname "$out")" && printf 'onnx' > "$out"
  exit 0
fi
exit "$ATTEST_CODE"
"""


@pytest.fixture(scope="module")
def step() -> dict:
    [export] = [s for s in yaml.safe_load(ACTION.read_text())["runs"]["steps"] if s.get("id") == "export"]
    return export


def run_step(step: dict, tmp_path: Path, export_onnx: str, verify_code: str, attest_code: int = 0):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "ci-gate").write_text(SHIM)
    (bin_dir / "ci-gate").chmod(0o755)
    output = tmp_path / "output"
    env = {
        # the step calls the venv's ci-gate by the path the setup step outputs, never through PATH
        "PATH": "/usr/bin:/bin", "CI_GATE": str(bin_dir / "ci-gate"), "LOG": str(tmp_path / "log"), "ATTEST_CODE": str(attest_code),
        "GITHUB_OUTPUT": str(output), "EXPORT_ONNX": export_onnx, "VERIFY_CODE": verify_code,
        "CHECKPOINT": "models/coop.safetensors", "OUT_DIR": "ci-gate-report", "BACKBONE_WEIGHTS": "/w/b.safetensors",
    }
    assert set(step["env"]) <= set(env)  # the test sets every variable the step reads
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", step["run"]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    outputs = parse_github_output(output.read_text()) if output.exists() else {}
    return done, outputs


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_the_step_runs_only_for_a_clean_verify_with_the_input_set(step, tmp_path):
    assert step["if"] == "inputs.export-onnx == 'true' && steps.publish.outputs.verdict == 'clean'"
    for export_onnx, verify_code in (("false", "0"), ("true", "1"), ("true", "2")):
        done, outputs = run_step(step, tmp_path, export_onnx, verify_code)
        assert (done.returncode, outputs) == (0, {})
        assert not list(tmp_path.glob("log.*"))


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_export_then_attest_then_output(step, tmp_path):
    done, outputs = run_step(step, tmp_path, "true", "0")
    assert done.returncode == 0, done.stderr
    onnx = "ci-gate-report/onnx/coop.onnx"
    assert outputs == {"onnx-model": onnx} and (tmp_path / onnx).is_file()
    export = (tmp_path / "log.export").read_text().splitlines()
    assert export[:2] == ["export", "models/coop.safetensors"]
    assert export[export.index("--onnx") + 1] == onnx and export[export.index("--result") + 1] == "ci-gate-report/result.json"
    assert export[export.index("--backbone-weights") + 1] == "/w/b.safetensors"
    attest = (tmp_path / "log.attest").read_text().splitlines()
    assert attest[:2] == ["attest", onnx] and attest[attest.index("--checkpoint") + 1] == "models/coop.safetensors"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_a_failed_attestation_uploads_no_file_and_fails_the_step(step, tmp_path):
    done, outputs = run_step(step, tmp_path, "true", "0", attest_code=1)
    assert done.returncode == 1 and outputs == {}
    assert "::error::ci-gate: the ONNX export or its attestation failed (exit code 1)" in done.stdout
    assert not (tmp_path / "ci-gate-report/onnx/coop.onnx").exists()
