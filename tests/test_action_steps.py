"""Run the action's shell steps for real: a pull request where verify finds a backdoor, repair
succeeds and auto-commit is on. GitHub is the local fake server; `ci-gate verify` and
`ci-gate repair` are stand-ins (they need a GPU model), every other step runs the real CLI.

`if:` conditions are not evaluated here (test_action_yml.py checks them); the scenario is one in
which every step runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from github_fake import FakeGitHub
from test_github_api import parse_github_output

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TOKEN = "ghs_actionStepsT0ken"

# verify/repair stand-ins; everything else goes to the real CLI (which starts without torch, see
# test_cli_startup.py).
SHIM = """#!/bin/bash
if [ "$1" = verify ]; then
  out=""; prev=""; for a in "$@"; do [ "$prev" = --out ] && out="$a"; prev="$a"; done
  case "$2" in
    */repaired/*) log=reverify; verdict=clean; code=0 ;;
    *) log=verify; verdict=backdoor; code=1 ;;
  esac
  printf '%s\\n' "$@" > "$CI_GATE_TEST_LOG.$log"
  "$PYTHON" -c "import sys; sys.path.insert(0, '$TESTS'); from pathlib import Path; from result_factory import saved_result; saved_result(Path(sys.argv[1]), model_path='models/coop.safetensors', verdict=sys.argv[2])" "$out" "$verdict"
  exit $code
fi
if [ "$1" = repair ]; then
  printf '%s\\n' "$@" > "$CI_GATE_TEST_LOG.repair"
  out=""; prev=""; for a in "$@"; do [ "$prev" = --out ] && out="$a"; prev="$a"; done
  mkdir -p "$(dirname "$out")" && printf 'repaired\\0' > "$out"
  exit 0
fi
exec "$PYTHON" -m ci_gate "$@"
"""


def _expressions(fake: FakeGitHub, inputs: dict[str, str], outputs: dict[str, dict[str, str]]):
    context = {
        "github.server_url": "https://github.com",
        "github.repository": fake.repo,
        "github.run_id": "42",
        "github.event.pull_request.head.sha || github.sha": FakeGitHub.BASE_SHA,
        "github.head_ref || github.ref_name": "feature",
        "github.event.pull_request.number": "5",
    }

    def evaluate(expr: str) -> str:
        expr = expr.strip()
        if m := re.fullmatch(r"inputs\.([\w-]+)", expr):
            return inputs[m.group(1)]
        if m := re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expr):
            return outputs.get(m.group(1), {}).get(m.group(2), "")
        return context[expr]  # a KeyError here means action.yml grew an expression this test must learn

    return lambda text: re.sub(r"\$\{\{(.*?)\}\}", lambda m: evaluate(m.group(1)), text)


def _run_steps(tmp_path: Path, fake: FakeGitHub, shim: str, overrides: dict[str, str], only: set[str] | None = None):
    """Runs the action's shell steps in order (all of them, or those in ``only``); returns the
    outputs and exit code of each step, their stdout, and the job summary file."""
    workspace = tmp_path / "ws"
    (workspace / "models").mkdir(parents=True)
    (workspace / "models" / "coop.safetensors").write_bytes(b"original")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ci-gate").write_text(shim)
    (bin_dir / "ci-gate").chmod(0o755)

    action = yaml.safe_load((REPO / "action.yml").read_text())
    inputs = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
    inputs.update(overrides)
    # the CLI is reached by the absolute path the setup step outputs, never through PATH (which
    # holds no ci-gate here)
    outputs: dict[str, dict[str, str]] = {"setup": {"artifact-name": "ci-gate-report-models_coop.safetensors", "ci-gate": str(bin_dir / "ci-gate")}}
    substitute = _expressions(fake, inputs, outputs)
    summary = tmp_path / "step_summary"
    codes, stdout = {}, {}
    for step in action["runs"]["steps"]:
        sid = step.get("id", step["name"])
        # setup pip-installs the action (test_action_yml.py runs prepare); cache and upload-artifact are GitHub's
        if "run" not in step or sid in ("prepare", "setup"):
            continue
        if only is not None and sid not in only:
            continue
        output_file = tmp_path / f"output_{sid.replace(' ', '_')}"
        env = {
            "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": sys.executable,
            "PYTHONPATH": str(REPO), "TESTS": str(TESTS), "CI_GATE_TEST_LOG": str(tmp_path / "log"),
            "GITHUB_OUTPUT": str(output_file), "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_WORKSPACE": str(workspace),
            "GITHUB_REPOSITORY": fake.repo, "GITHUB_API_URL": fake.url, "GITHUB_SHA": "b" * 40,
            "GITHUB_REF": "refs/pull/5/merge", "RUNNER_TEMP": str(tmp_path),
        }
        env.update({k: substitute(str(v)) for k, v in step.get("env", {}).items()})
        # GitHub runs bash steps with -e and pipefail
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", step["run"]], cwd=workspace, env=env, capture_output=True, text=True, timeout=120)
        codes[sid] = done.returncode
        stdout[sid] = done.stdout
        outputs[sid] = parse_github_output(output_file.read_text()) if output_file.exists() else {}
    return workspace, outputs, codes, stdout, summary


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_pull_request_with_backdoor_repair_and_auto_commit(tmp_path):
    fake = FakeGitHub(TOKEN).start()
    try:
        fake.refs["refs/heads/feature"] = FakeGitHub.BASE_SHA
        workspace, outputs, codes, stdout, summary = _run_steps(
            tmp_path, fake, SHIM,
            {"checkpoint": "models/coop.safetensors", "repair": "true", "clean-data": "/data/clean", "auto-commit": "true",
             "token": TOKEN, "extra-args": "--set detection.k=2.5", "fail-on": "suspicious",
             "backbone-weights": "/weights/vit-b-16.safetensors"},
        )
    finally:
        fake.stop()
    for sid, text in stdout.items():
        assert "::warning::" not in text and "::error::could not" not in text, (sid, text)

    verify_args = (tmp_path / "log.verify").read_text().split("\n")
    assert verify_args[:2] == ["verify", "models/coop.safetensors"]
    assert "--display-path" in verify_args and "detection.k=2.5" in verify_args
    assert verify_args[verify_args.index("--fail-on") + 1] == "suspicious"
    assert verify_args[verify_args.index("--backbone-weights") + 1] == "/weights/vit-b-16.safetensors"
    assert outputs["verify"]["exit-code"] == "1" and outputs["verify"]["outcome"] == "fail"
    assert outputs["publish"]["verdict"] == "backdoor" and outputs["publish"]["target-class"] == "cat"
    assert (workspace / outputs["publish"]["report-html"]).is_file()
    assert "`ci-gate-report-models_coop.safetensors`" in (workspace / outputs["publish"]["report-md"]).read_text()
    assert summary.read_text().startswith("## :x: ci-gate: backdoor detected")

    [upload] = fake.sarifs.values()
    assert upload["request"]["ref"] == "refs/pull/5/merge"
    assert upload["sarif"]["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "models/coop.safetensors"
    [comment] = fake.comments[5]
    assert comment["body"].startswith("<!-- ci-gate key=models/coop.safetensors -->\n## :x: ci-gate")

    repair_args = (tmp_path / "log.repair").read_text().split("\n")
    assert repair_args[:2] == ["repair", "models/coop.safetensors"] and "--clean-data" in repair_args
    assert repair_args[repair_args.index("--backbone-weights") + 1] == "/weights/vit-b-16.safetensors"
    assert "report.fail_on=suspicious" in repair_args
    assert "detection.k=2.5" in repair_args  # extra-args reach repair's scans as verify's
    # the repaired model is verified again, under the same gate settings, before it is committed
    repaired = outputs["repair"]["candidate"]
    reverify_args = (tmp_path / "log.reverify").read_text().split("\n")
    assert reverify_args[:2] == ["verify", repaired]
    assert reverify_args[reverify_args.index("--fail-on") + 1] == "suspicious" and "detection.k=2.5" in reverify_args
    assert reverify_args[reverify_args.index("--display-path") + 1] == "models/coop.safetensors"
    assert outputs["reverify"]["repaired-checkpoint"] == repaired
    [pr] = fake.pulls
    assert (pr["head"], pr["base"]) == ("ci-gate/repair/feature", "feature")
    head = fake.refs["refs/heads/ci-gate/repair/feature"]
    assert fake.commits[head]["parents"] == [{"sha": FakeGitHub.BASE_SHA}]
    assert outputs["commit"]["pr-url"] == pr["html_url"]
    assert codes["Gate"] == 1  # the job ends with verify's exit code
    for path in tmp_path.rglob("output_*"):
        assert TOKEN not in path.read_text()


# verify stand-ins that fail without a verdict: a crash (exit 3, after leaving a stale
# result.json that says "clean") and bad input (exit 2)
CRASH_SHIM = """#!/bin/bash
if [ "$1" = verify ]; then
  out=""; prev=""; for a in "$@"; do [ "$prev" = --out ] && out="$a"; prev="$a"; done
  "$PYTHON" -c "import sys; sys.path.insert(0, '$TESTS'); from pathlib import Path; from result_factory import saved_result; saved_result(Path(sys.argv[1]), model_path='models/coop.safetensors', verdict='clean')" "$out"
  if [ "$CI_GATE_TEST_CODE" = 3 ]; then
    log="$RUNNER_TEMP/ci-gate-crash-abc123.log"
    printf 'Traceback (most recent call last):\\nOverflowError: cannot convert float infinity to integer\\n' > "$log"
    echo "ci-gate: internal error: OverflowError: cannot convert float infinity to integer (traceback in $log)" >&2
  else
    echo "ci-gate: error: --set detection.k=.inf: bad value for 'detection.k': Input should be a finite number" >&2
  fi
  exit "$CI_GATE_TEST_CODE"
fi
exec "$PYTHON" -m ci_gate "$@"
"""


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
@pytest.mark.parametrize(("code", "outcome", "title"), [(3, "tool-failure", "tool failure"), (2, "bad-input", "bad input or configuration")])
def test_a_run_without_a_verdict_is_reported_as_such(tmp_path, code, outcome, title):
    fake = FakeGitHub(TOKEN).start()
    try:
        shim = CRASH_SHIM.replace("$CI_GATE_TEST_CODE", str(code))
        workspace, outputs, codes, stdout, summary = _run_steps(
            tmp_path, fake, shim, {"checkpoint": "models/coop.safetensors", "token": TOKEN}, only={"verify", "publish", "Gate"},
        )
    finally:
        fake.stop()
    assert outputs["verify"] == {"exit-code": str(code), "outcome": outcome}
    # the stale result.json that says "clean" is not published: no verdict, no reports
    assert outputs["publish"] == {} and "no reports are published" in stdout["publish"]
    assert not (workspace / "ci-gate-report" / "report.sarif").exists()
    text = summary.read_text()
    assert text.startswith(f"## :warning: ci-gate: {title} (exit code {code})")
    assert "\n    ci-gate: " in text  # the CLI's one line, quoted as a code block
    crash_copy = workspace / "ci-gate-report" / "ci-gate-crash.log"
    if code == 3:
        # the report folder must stay one that the next verify may replace: the step removes its
        # own copy before it runs verify again
        verify = next(s for s in yaml.safe_load((REPO / "action.yml").read_text())["runs"]["steps"] if s.get("id") == "verify")
        assert verify["run"].index('rm -f "$OUT_DIR/ci-gate-crash.log"') < verify["run"].index('"$CI_GATE" "${args[@]}"')
        assert "not a verdict on the model" in text and "OverflowError" in crash_copy.read_text()
    else:
        assert "was not scanned" in text and not crash_copy.exists()
    assert codes["Gate"] == code  # the job fails with verify's own code
    assert f"::error::ci-gate: {title} (exit code {code})" in stdout["Gate"]
