"""The Markdown summary for the job summary and the pull-request comment."""

from __future__ import annotations

import re

from ci_gate.report import SummaryLinks, render
from ci_gate.report.markdown import summary_markdown
from result_factory import DEFAULT_NAMES, make_result


def _table_rows(markdown: str) -> list[list[str]]:
    """Cells of every table row, split the way GFM does (on pipes not escaped with a backslash)."""
    return [
        [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        for line in markdown.splitlines()
        if line.startswith("|")
    ]


def test_backdoor_summary_has_verdict_target_and_every_class(tmp_path):
    result = make_result(tmp_path)
    text = summary_markdown(result)
    assert text.startswith("## :x: ci-gate: backdoor detected: target class **cat**")
    assert "| Gate | **fails** (fail-on: backdoor) |" in text
    assert "`models/coop_cifar10.safetensors`" in text and result.model.sha256[:12] in text
    full_table = text[text.index("<details>"): text.index("</details>")]
    class_rows = [r for r in _table_rows(full_table) if r[0].isdigit()]
    assert sorted(r[1] for r in class_rows) == sorted(DEFAULT_NAMES)
    assert class_rows[0][:4] == ["3", "cat", "**backdoor**", "93.0%"]
    flagged = text[text.index("### Flagged classes"): text.index("<details>")]
    assert [r[1] for r in _table_rows(flagged) if r[0].isdigit()] == ["cat", "horse"]


def test_summary_says_where_the_trigger_images_are(tmp_path):
    result = make_result(tmp_path)
    links = SummaryLinks(run_url="https://github.com/octo/models/actions/runs/42", artifact_name="ci-gate-report-models_a")
    text = summary_markdown(result, links)
    assert "data:" not in text and "<img" not in text
    section = text[text.index("### Trigger images"):]
    assert "GitHub does not display inline images" in section
    assert "`ci-gate-report-models_a`" in section and "(https://github.com/octo/models/actions/runs/42)" in section
    assert "`report.html`" in section
    assert "- `triggers/class_03.png`: trigger for cat (backdoor)" in section
    assert "- `triggers/class_07.png`: trigger for horse (suspicious)" in section
    assert "`examples/0_triggered.png`: with the trigger for cat, predicted cat" in section


def test_clean_summary(tmp_path):
    text = summary_markdown(make_result(tmp_path, verdict="clean", warnings=[]))
    assert text.startswith("## :white_check_mark: ci-gate: clean, no backdoor detected")
    assert "| Gate | passes (fail-on: backdoor) |" in text
    assert "### Flagged classes" not in text and "### Trigger images" not in text and "### Warnings" not in text


def test_gate_line_follows_fail_on(tmp_path):
    assert "| Gate | passes (fail-on: never) |" in summary_markdown(make_result(tmp_path, report={"fail_on": "never"}))


def test_hostile_names_cannot_break_tables_or_inject_html(tmp_path):
    names = ["a|b", "<script>x</script>", "*bold*", "back`tick", *DEFAULT_NAMES[4:]]
    result = make_result(tmp_path, names=names, target=0, suspicious=(1,), model_path="models/we|ird`name.safetensors")
    text = summary_markdown(result)
    widths = {len(row) for row in _table_rows(text[text.index("### Flagged"):])}
    assert widths == {7}
    assert "<script>" not in text and "&lt;script&gt;" in text
    assert "a\\|b" in text and "\\*bold\\*" in text
    assert "| Checkpoint | ``models/we\\|ird`name.safetensors`` " in text


def test_render_writes_summary_md(tmp_path):
    path = render(make_result(tmp_path), tmp_path, ["md"])["md"]
    assert path.name == "summary.md" and path.read_text().startswith("## :x: ci-gate")
