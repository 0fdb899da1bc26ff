"""``verify --fail-on`` is a policy override: result.json and the reports record what fails the gate.

The scan itself is stubbed (it needs a model); everything around it is the real command.
"""

from __future__ import annotations

import json

import pytest

from ci_gate.cli import main
from result_factory import stub_scan as install_stub_scan


@pytest.fixture
def stub_scan(monkeypatch):
    return install_stub_scan(monkeypatch, "backdoor")


def _verify(tmp_path, *extra: str) -> int:
    out = tmp_path / "out"
    argv = ["verify", str(tmp_path / "m.safetensors"), "--pool", str(tmp_path / "pool"), "--out", str(out), "--quiet", *extra]
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


@pytest.mark.parametrize(("fail_on", "code"), [("never", 0), ("suspicious", 1), ("backdoor", 1)])
def test_fail_on_is_recorded_in_the_result_and_reports(tmp_path, stub_scan, capsys, fail_on, code):
    assert _verify(tmp_path, "--fail-on", fail_on) == code
    assert stub_scan["policy"].report.fail_on == fail_on
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    assert saved["policy"]["settings"]["report"]["fail_on"] == fail_on
    assert f"(fail-on: {fail_on})" in (tmp_path / "out" / "summary.md").read_text()
    assert f"(fail-on: {fail_on})" in (tmp_path / "out" / "report.html").read_text()


def test_fail_on_changes_the_policy_hash_like_set_does(tmp_path, stub_scan, capsys):
    _verify(tmp_path, "--fail-on", "never")
    via_flag = stub_scan["policy"].sha256()
    _verify(tmp_path, "--set", "report.fail_on=never")
    assert stub_scan["policy"].sha256() == via_flag
    _verify(tmp_path)
    assert stub_scan["policy"].sha256() != via_flag


def test_flag_wins_over_set(tmp_path, stub_scan, capsys):
    assert _verify(tmp_path, "--set", "report.fail_on=backdoor", "--fail-on", "never") == 0
    assert stub_scan["policy"].report.fail_on == "never"


def test_bad_fail_on_is_a_usage_error(tmp_path, stub_scan, capsys):
    assert _verify(tmp_path, "--fail-on", "sometimes") == 2
    assert "--fail-on" in capsys.readouterr().err
