"""CLI conventions of issue 15: bundled policy names with or without `.yaml`, `--format json
--output -|FILE` (stdout then carries only the result), progress lines off a terminal, and shell
completion.

The scan itself is stubbed where only what verify prints and writes is under test (it needs a
model; test_precommit.py runs real scans); the stub drives the real progress callback the way
ci_gate.inversion does. Everything around it is the real command.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from ci_gate.cli import main
from ci_gate.console import ProgressLines, progress_line, scan_progress
from ci_gate.policy import load_policy
from ci_gate.resources import policies_dir
from result_factory import stub_scan as install_stub_scan

REPO = Path(__file__).resolve().parents[1]


# --- bundled policy names -------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["strict", "strict.yaml", "strict.yml"])
def test_a_bundled_policy_is_found_by_name_with_or_without_suffix(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)  # no strict.yaml here: the design card's `--policy strict.yaml`
    policy, folder = load_policy(spec)
    assert policy.name == "strict" and policy.report.fail_on == "suspicious"
    assert folder == policies_dir().resolve()


def test_a_bundled_name_wins_over_a_local_file_a_path_reads_the_file(tmp_path, monkeypatch):
    # a pull request can add the file: it must not replace the policy the workflow names
    monkeypatch.chdir(tmp_path)
    (tmp_path / "strict.yaml").write_text("version: 1\nname: mine\n")
    assert load_policy("strict.yaml")[0].name == "strict"
    assert load_policy("strict")[0].name == "strict"
    assert load_policy("./strict.yaml")[0].name == "mine"


# --- verify --format json --output ----------------------------------------------------------

@pytest.fixture
def stub_scan(monkeypatch):
    return install_stub_scan(monkeypatch, "clean")


def _verify(tmp_path: Path, *extra: str) -> int:
    argv = ["verify", str(tmp_path / "m.safetensors"), "--pool", str(tmp_path / "pool"), "--out", str(tmp_path / "out"), *extra]
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


@pytest.mark.parametrize("verdict", ["clean", "backdoor"])
def test_format_json_puts_exactly_the_result_on_stdout(tmp_path, stub_scan, capsys, verdict):
    stub_scan["verdict"] = verdict
    assert _verify(tmp_path, "--format", "json", "--policy", "strict.yaml") == (1 if verdict == "backdoor" else 0)
    out, err = capsys.readouterr()
    # one JSON document, the very text of result.json (so `ci-gate report` reads it too)
    assert out == (tmp_path / "out" / "result.json").read_text(encoding="utf-8")
    assert json.loads(out)["verdict"] == verdict
    # the human summary went to stderr instead
    assert ("BACKDOOR DETECTED" if verdict == "backdoor" else "CLEAN") in err and "results:" in err
    assert stub_scan["policy"].name == "strict"


def test_format_json_with_quiet_keeps_the_one_line_on_stderr(tmp_path, stub_scan, capsys):
    assert _verify(tmp_path, "--format", "json", "--output", "-", "--quiet") == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["verdict"] == "clean"
    assert err.startswith("CLEAN max_anomaly=") and err.count("\n") == 1


def test_output_file_is_written_and_stdout_stays_empty(tmp_path, stub_scan, capsys):
    target = tmp_path / "results" / "scan.json"
    assert _verify(tmp_path, "--format", "json", "--output", str(target)) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert target.read_text(encoding="utf-8") == (tmp_path / "out" / "result.json").read_text(encoding="utf-8")
    assert [p.name for p in target.parent.iterdir()] == ["scan.json"]  # atomic: no staging file left
    assert "CLEAN" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output", "x.json"], "ci-gate: error: --output: writes the machine-readable result: use it with --format json"),
        (["--format", "yaml"], "ci-gate: error: --format: expected text or json, got 'yaml'"),
        (["--format", "json", "--output", "{out}/result.json"], "is inside the report folder"),
        (["--format", "json", "--output", "{ckpt}"], "is the input checkpoint"),
        (["--format", "json", "--output", "{tmp}"], "is a folder"),
        # the pool is an input too: a .tar pool was overwritten by the JSON after the scan
        (["--pool", "{tmp}/ood.tar", "--format", "json", "--output", "{tmp}/ood.tar"], "is the OOD pool"),
        (["--format", "json", "--output", "{tmp}/pool/scan.json"], "is the OOD pool"),
    ],
)
def test_bad_output_arguments_exit_2_before_any_scan(tmp_path, stub_scan, capsys, args, message):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(b"not touched")
    args = [a.format(out=tmp_path / "out", ckpt=ckpt, tmp=tmp_path) for a in args]
    assert _verify(tmp_path, *args) == 2
    out, err = capsys.readouterr()
    assert message in err and err.count("\n") == 1 and out == ""
    assert "policy" not in stub_scan  # refused before the scan
    assert ckpt.read_bytes() == b"not touched"


# --- progress -------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_a_line_goes_out_once_per_interval():
    buffer = io.StringIO()
    clock = FakeClock()
    with scan_progress(Console(file=buffer, force_terminal=False), enabled=True, interval=5.0, clock=clock) as update:
        assert isinstance(update, ProgressLines)
        for t, done in ((1, 5), (6, 50), (7, 60), (13, 75)):
            clock.now = 100.0 + t
            update(done, 100, 4)
    assert buffer.getvalue().splitlines() == [
        "ci-gate: inverting triggers: class 3 of 4 (50%), 6s elapsed, ETA 6s",
        "ci-gate: inverting triggers: class 4 of 4 (75%), 13s elapsed, ETA 4s",
    ]


def test_the_eta_comes_from_the_rate_since_the_first_report_not_from_model_loading():
    buffer = io.StringIO()
    clock = FakeClock()
    update = ProgressLines(Console(file=buffer, force_terminal=False), 5.0, clock)
    clock.now += 60  # a minute loading the model and the pool before inversion reports at all
    update(0, 100, 10)
    clock.now += 10
    update(20, 100, 10)  # 2 steps a second: 40 s to go
    clock.now += 40
    update(100, 100, 10)
    assert buffer.getvalue().splitlines() == [
        "ci-gate: inverting triggers: class 1 of 10 (0%), 1m00s elapsed, ETA unknown",
        "ci-gate: inverting triggers: class 3 of 10 (20%), 1m10s elapsed, ETA 40s",
        "ci-gate: inverting triggers: class 10 of 10 (100%), 1m50s elapsed, ETA 0s",
    ]


def test_progress_line_formats():
    assert progress_line(0, 10, 5, 3.0, None) == "ci-gate: inverting triggers: class 1 of 5 (0%), 3s elapsed, ETA unknown"
    assert progress_line(10, 10, 5, 3725.0, 0.0) == "ci-gate: inverting triggers: class 5 of 5 (100%), 1h02m05s elapsed, ETA 0s"
    assert progress_line(1, 4, None, 65.0, 195.0) == "ci-gate: inverting triggers: step 1 of 4 (25%), 1m05s elapsed, ETA 3m15s"


def test_a_terminal_gets_the_bar_and_disabled_gets_nothing():
    with scan_progress(Console(file=io.StringIO(), force_terminal=True), enabled=True) as update:
        assert update is not None and not isinstance(update, ProgressLines)
        update(1, 2, 1)
    with scan_progress(Console(file=io.StringIO(), force_terminal=False), enabled=False) as update:
        assert update is None


def test_verify_prints_progress_lines_to_stderr_and_quiet_does_not(tmp_path, stub_scan, capsys):
    assert _verify(tmp_path, "--format", "json", "--progress-interval", "0") == 0
    out, err = capsys.readouterr()
    json.loads(out)  # progress never reaches stdout
    lines = [line for line in err.splitlines() if line.startswith("ci-gate: inverting triggers:")]
    assert [line.split(" (")[0] for line in lines] == [f"ci-gate: inverting triggers: class {i} of 4" for i in (2, 3, 4, 4)]
    assert _verify(tmp_path, "--quiet", "--progress-interval", "0") == 0
    out, err = capsys.readouterr()
    assert stub_scan["progress"] is None and "inverting" not in out + err
    assert out.startswith("CLEAN ") and out.count("\n") == 1


# --- shell completion -----------------------------------------------------------------------

def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ci_gate", *args], capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **env})


def test_shell_completion_is_on_and_names_the_ci_gate_command():
    # the script `ci-gate --show-completion bash` prints; asked through the completion variable,
    # since --show-completion picks the shell from the parent process (pytest-xdist's is python)
    script = _cli({"_CI_GATE_COMPLETE": "source_bash"})
    assert script.returncode == 0 and "complete -o default -F _ci_gate_completion ci-gate" in script.stdout
    # what bash asks while the user types `ci-gate verify --fo<TAB>` and `ci-gate policy <TAB>`
    words = _cli({"_CI_GATE_COMPLETE": "complete_bash", "COMP_WORDS": "ci-gate verify --fo", "COMP_CWORD": "2"})
    assert words.returncode == 0 and words.stdout.split() == ["--format"]
    words = _cli({"_CI_GATE_COMPLETE": "complete_bash", "COMP_WORDS": "ci-gate policy ", "COMP_CWORD": "2"})
    assert words.stdout.split() == ["schema"]
