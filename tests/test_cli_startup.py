"""The CLI starts without torch: `--help`, the report and the GitHub steps never import it.

torch and open_clip take seconds to import; only the commands that run a model (verify, convert,
demo, repair) may load them, and only when they run. Each check runs in a fresh interpreter,
since this test session has long since imported torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from result_factory import saved_result

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "torchvision", "safetensors", "numpy")

# Runs each argv through ci_gate.cli.main in one process, then reports exit codes and which heavy
# modules got imported.
PROBE = """
import json, sys
from ci_gate.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit as exc:
        codes.append(exc.code)
print(json.dumps({"codes": codes, "heavy": sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)}))
"""


def _probe(*argvs: list[str], cwd: Path) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argvs), json.dumps(HEAVY)],
        cwd=cwd, capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_help_does_not_import_torch(tmp_path):
    probe = _probe(["--help"], ["verify", "--help"], ["convert", "--help"], ["report", "--help"], ["github", "--help"], cwd=tmp_path)
    assert probe == {"codes": [0, 0, 0, 0, 0], "heavy": []}


def test_policy_schema_and_precommit_help_do_not_import_torch(tmp_path):
    probe = _probe(["policy", "schema", "--out", str(tmp_path / "schema.json")], ["precommit", "--help"], cwd=tmp_path)
    assert probe == {"codes": [0, 0], "heavy": []}


def test_report_and_github_outputs_do_not_import_torch(tmp_path):
    result_json = saved_result(tmp_path / "scan")
    probe = _probe(
        ["report", str(result_json), "--format", "html,sarif,md"],
        ["github", "outputs", str(result_json), "--github-output", str(tmp_path / "out.txt")],
        cwd=tmp_path,
    )
    assert probe == {"codes": [0, 0], "heavy": []}
    assert (tmp_path / "scan" / "report.html").is_file() and (tmp_path / "out.txt").read_text().startswith("verdict<<")


def test_report_format_help_lists_every_format():
    from ci_gate.commands.report import FORMATS_HELP
    from ci_gate.report import FORMATS

    assert FORMATS_HELP.split(",") == list(FORMATS)


def test_usage_errors_exit_2_without_a_traceback(tmp_path):
    # exit 1 means "the gate fails"; a mistyped flag in a workflow must not read as a backdoor
    done = [
        subprocess.run([sys.executable, "-m", "ci_gate", *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
        for argv in (["verify", "x.safetensors", "--bogus"], ["report"], ["no-such-command"])
    ]
    assert [d.returncode for d in done] == [2, 2, 2], [d.stderr for d in done]
    assert all("Traceback" not in d.stderr for d in done)
    assert "--bogus" in done[0].stderr and "result_json" in done[1].stderr.lower()
