"""`ci-gate demo` is the README's "run the main job" command: it must get both verdicts right."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_demo_gets_both_verdicts_right(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ci_gate", "demo", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    clean = json.loads((tmp_path / "clean" / "report" / "result.json").read_text())
    bad = json.loads((tmp_path / "backdoored" / "report" / "result.json").read_text())
    assert clean["verdict"] == "clean"
    assert bad["verdict"] == "backdoor" and bad["target_class"] == "purple"
    assert (tmp_path / "backdoored" / "report" / "report.html").is_file()
