"""The Markdown summary for the job summary and the pull-request comment: short, and within
GitHub's comment limit whatever the checkpoint holds."""

from __future__ import annotations

import re

from ci_gate.github.comments import MAX_BODY_CHARS, comment_body
from ci_gate.report import SummaryLinks, render
from ci_gate.report.markdown import TOP_K, summary_markdown
from ci_gate.result import EncoderInfo, TensorChange
from result_factory import DEFAULT_NAMES, make_result

MAX_LINES = 15


def _table_rows(markdown: str) -> list[list[str]]:
    """Cells of every table row, split the way GFM does (on pipes not escaped with a backslash)."""
    return [
        [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]


def _class_rows(markdown: str) -> list[list[str]]:
    return [r for r in _table_rows(markdown) if r[0].isdigit()]


def test_backdoor_summary_has_verdict_score_and_the_top_classes(tmp_path):
    result = make_result(tmp_path)
    text = summary_markdown(result)
    lines = text.splitlines()
    assert lines[0] == "## :x: ci-gate: backdoor detected: target class **cat**"
    assert lines[1].startswith("| Gate | **fails** (fail-on: backdoor), policy default")
    assert "| Score | cat: anomaly index 6.40, best trigger ASR 93.0% (k = 2, min ASR 50.0%); 1 suspicious |" in text
    assert "`models/coop_cifar10.safetensors`" in text and result.model.sha256[:12] in text
    assert "| Encoders | the published weights (pinned SHA-256 checked) |" in text
    rows = _class_rows(text)
    assert [r[:4] for r in rows] == [["3", "cat", "**backdoor**", "6.40"], ["7", "horse", "**suspicious**", "2.60"], ["4", "deer", "ok", "0.60"]]
    assert f"| Class (top {TOP_K} of {len(DEFAULT_NAMES)}) |" in text
    assert len(lines) <= MAX_LINES


def test_summary_points_at_the_full_report_without_listing_files(tmp_path):
    result = make_result(tmp_path)
    links = SummaryLinks(run_url="https://github.com/octo/models/actions/runs/42", artifact_name="ci-gate-report-models_a")
    text = summary_markdown(result, links)
    assert "data:" not in text and "<img" not in text
    assert "triggers/" not in text and "examples/" not in text  # the report bundle's files are not listed
    assert text.splitlines()[-1] == (
        "Full report with the trigger images and all 10 classes: `report.html` in the workflow artifact "
        "`ci-gate-report-models_a` ([workflow run](https://github.com/octo/models/actions/runs/42))."
    )
    assert summary_markdown(result).splitlines()[-1].endswith("`report.html` in the report folder.")


def test_clean_summary(tmp_path):
    text = summary_markdown(make_result(tmp_path, verdict="clean", warnings=[]))
    assert text.startswith("## :white_check_mark: ci-gate: clean, no backdoor detected")
    assert "| Gate | passes (fail-on: backdoor)" in text
    assert "suspicious" not in text and "| Warnings |" not in text
    assert len(text.splitlines()) <= MAX_LINES - 1


def test_a_class_that_is_no_outlier_is_not_suspicious_in_the_summary(tmp_path):
    # a result.json from the older rule: suspicious on trigger ASR alone, anomaly -0.72
    result = make_result(tmp_path, verdict="clean", warnings=[])
    stale = result.model_copy(update={"classes": [c.model_copy(update={"status": "suspicious", "asr": 0.7, "anomaly": -0.72}) if c.index == 1 else c for c in result.classes]})
    text = summary_markdown(stale)
    assert "**suspicious**" not in text and "; 1 suspicious" not in text
    assert "| Warnings | 1 class marked suspicious in result.json" in text and "is no outlier \\(anomaly index not above k = 2\\) and shown as ok: automobile -0.72 |" in text


def test_warnings_are_one_row(tmp_path):
    text = summary_markdown(make_result(tmp_path, warnings=["first <b>one</b>", "second", "third"]))
    assert "| Warnings | first &lt;b&gt;one&lt;/b&gt; (and 2 more in the full report) |" in text


def test_gate_line_follows_fail_on(tmp_path):
    assert "| Gate | passes (fail-on: never)" in summary_markdown(make_result(tmp_path, report={"fail_on": "never"}))


def test_hostile_names_cannot_break_tables_or_inject_html(tmp_path):
    names = ["a|b", "<script>x</script>", "*bold*", "back`tick", *DEFAULT_NAMES[4:]]
    result = make_result(tmp_path, names=names, target=0, suspicious=(1,), model_path="models/we|ird`name.safetensors")
    text = summary_markdown(result)
    class_table = text[text.index("| # |"):]
    assert {len(row) for row in _table_rows(class_table)} == {7}
    assert {len(row) for row in _table_rows(text[: text.index("| # |")])} == {2}
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "a\\|b" in text
    assert "| Checkpoint | ``models/we\\|ird`name.safetensors`` " in text


def test_worst_case_stays_short_and_within_the_comment_limit(tmp_path):
    # 3,000 classes with 10,000-character names full of characters that escaping expands, 200 long
    # warnings, a modified encoder with a hostile tensor name: still one short comment.
    names = [f"{i}@#<|" * 2000 for i in range(3000)]
    result = make_result(tmp_path, names=names, suspicious=tuple(range(4, 60)), with_images=False, warnings=["@<x>|#1 " * 2000] * 200,
                         model_path="models/" + "`@#|" * 3000 + ".safetensors")
    change = TensorChange(name="`|@<" * 3000, max_abs=0.5, rel_l2=0.1)
    result = result.model_copy(update={"encoder": EncoderInfo(status="modified", reference="#1 @x " * 3000, n_tensors=9, n_changed=1, changed=[change])})
    text = summary_markdown(result, SummaryLinks(run_url="https://github.com/o/r/actions/runs/1", artifact_name="a" * 300))
    assert len(text.splitlines()) <= MAX_LINES
    body = comment_body(text, key="models/" + "x" * 500)
    assert len(body) <= MAX_BODY_CHARS and "truncated" not in body
    assert len(text) < 20_000


def test_modified_encoder_is_in_one_row(tmp_path):
    change = TensorChange(name="visual.proj", max_abs=0.25, rel_l2=0.0123)
    result = make_result(tmp_path, verdict="clean", with_images=False, warnings=[])
    result = result.model_copy(update={"encoder": EncoderInfo(status="modified", reference="published.safetensors", n_tensors=120, n_changed=3, changed=[change])})
    text = summary_markdown(result)
    assert text.startswith("## :x: ci-gate: the checkpoint's encoders were modified")
    assert ("| Encoders | **embedded and modified**: 3 of 120 tensors differ from `published.safetensors`, "
            "largest `visual.proj` (max abs. 0.2500, relative 0.0123) |") in text
    assert "| Gate | **fails**" in text


def test_render_writes_summary_md(tmp_path):
    path = render(make_result(tmp_path), tmp_path, ["md"])["md"]
    assert path.name == "summary.md" and path.read_text().startswith("## :x: ci-gate")
