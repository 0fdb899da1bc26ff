"""A checkpoint whose towers nobody can check (embedded, or a weights file it names, and no
--reference-weights) fails the default gate on its own: the checkpoint's author chose that, and
the reference-free statistic misses most encoder-level backdoors. Every reporter says so, and
the consumers that ship a model (ONNX export, MLflow promotion) refuse it. Factory results, no scan."""

from __future__ import annotations

import pytest

from ci_gate.policy import load_policy
from ci_gate.result import EncoderInfo, Result
from result_factory import make_result, unverified_ladder_result


def _unverified(tmp_path, answer: str | None = "fail") -> Result:
    clean = make_result(tmp_path, verdict="clean")
    det = clean.detection.model_copy(update={"unverified_towers": answer, "reference": "none"})
    return clean.model_copy(update={"encoder": EncoderInfo(status="unverified"), "detection": det})


@pytest.mark.parametrize(
    ("status", "answer", "fails"),
    [
        ("unverified", "fail", True),
        ("unverified", "warn", False),
        # a result from before schema 1.6 recorded no answer: it warned, and still does
        ("unverified", None, False),
        ("unmodified", "fail", False),
        ("not_embedded", "fail", False),
    ],
)
def test_only_an_unverified_tower_under_fail_fails_a_clean_scan(tmp_path, status, answer, fails):
    clean = make_result(tmp_path, verdict="clean")
    result = clean.model_copy(update={"encoder": EncoderInfo(status=status), "detection": clean.detection.model_copy(update={"unverified_towers": answer})})
    assert result.unverified_fails is fails
    assert result.gate_fails("backdoor") is fails and result.gate_fails("suspicious") is fails
    # 'never' keeps the job green whatever the finding, as it does for a modified tower
    assert result.gate_fails("never") is False


def test_bundled_policies_answer_unverified_towers():
    assert load_policy("default")[0].detection.unverified_towers == "fail"
    assert load_policy("strict")[0].detection.unverified_towers == "fail"
    assert load_policy("permissive")[0].detection.unverified_towers == "warn"


@pytest.mark.parametrize(("answer", "level"), [("fail", "error"), ("warn", "warning")])
def test_sarif_reports_cig004_at_the_policys_level(tmp_path, answer, level):
    from ci_gate.report.sarif import UNVERIFIED_RULE, build_sarif

    log = build_sarif(_unverified(tmp_path, answer))
    hits = [r for r in log["runs"][0]["results"] if r["ruleId"] == UNVERIFIED_RULE]
    assert [h["level"] for h in hits] == [level]
    assert "--reference-weights" in hits[0]["message"]["text"] or "published weights" in hits[0]["message"]["text"]
    rule = next(r for r in log["runs"][0]["tool"]["driver"]["rules"] if r["id"] == UNVERIFIED_RULE)
    assert rule["name"] == "unverified-encoder" and "--reference-weights" in rule["help"]["text"]
    # a tower that was checked raises no CIG004
    checked = _unverified(tmp_path / "checked", answer).model_copy(update={"encoder": EncoderInfo(status="unmodified", reference="pub.safetensors")})
    assert [r for r in build_sarif(checked)["runs"][0]["results"] if r["ruleId"] == UNVERIFIED_RULE] == []


def test_every_report_says_the_unverified_tower_fails_the_gate(tmp_path):
    from ci_gate.console import one_line
    from ci_gate.report.alerts import headline_warnings
    from ci_gate.report.html import render_html
    from ci_gate.report.markdown import summary_markdown

    failing, warned = _unverified(tmp_path / "f", "fail"), _unverified(tmp_path / "w", "warn")
    assert one_line(failing).startswith("UNVERIFIED_ENCODER ") and one_line(warned).startswith("CLEAN ")
    assert summary_markdown(failing).splitlines()[0].startswith("## :x: ci-gate: the checkpoint's encoders could not be verified")
    assert summary_markdown(warned).splitlines()[0].startswith("## :white_check_mark:")
    assert any("fails the gate on its own" in line for line in headline_warnings(failing))
    assert not any("fails the gate on its own" in line for line in headline_warnings(warned))
    page = render_html(failing, tmp_path / "f")
    assert 'class="banner backdoor"' in page and "could not be verified" in page
    assert 'class="banner clean"' in render_html(warned, tmp_path / "w")


def test_export_refuses_a_model_whose_towers_could_not_be_checked(tmp_path):
    from ci_gate.export.onnx import not_clean

    assert "unverified" in not_clean(_unverified(tmp_path / "f", "fail"))
    assert not_clean(_unverified(tmp_path / "w", "warn")) is None


def test_rescore_takes_the_answer_from_the_redeciding_policy(tmp_path):
    from ci_gate.rescore import rescore

    warned = unverified_ladder_result(tmp_path, gain=0.0)
    assert not warned.unverified_fails
    default, _ = load_policy("default")
    decided = rescore(warned, default)
    assert decided.verdict == "clean" and decided.detection.statistic == default.detection.absolute_statistic
    assert decided.detection.unverified_towers == "fail" and decided.unverified_fails and decided.gate_fails("backdoor")
    relaxed = default.model_copy(update={"detection": default.detection.model_copy(update={"unverified_towers": "warn"})})
    assert not rescore(warned, relaxed).gate_fails("backdoor")
