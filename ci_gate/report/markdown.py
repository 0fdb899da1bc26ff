"""The Markdown summary for $GITHUB_STEP_SUMMARY and the pull-request comment.

Short enough to read in a pull request: the verdict, the gate, the top-scoring class, the
encoder check, the top classes, and one line saying where the full report is. GitHub's Markdown
drops data: images, so the triggers are only in report.html (uploaded as a workflow artifact).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ci_gate.report import sanitize
from ci_gate.report.alerts import best_asr, reported
from ci_gate.report.artifacts import budget_label
from ci_gate.report.ordering import by_anomaly
from ci_gate.report.settings import report_settings
from ci_gate.result import ClassResult, Result


@dataclass(frozen=True)
class SummaryLinks:
    """Where the report bundle lives, when the caller knows (the workflow run and artifact name)."""

    run_url: str | None = None
    artifact_name: str | None = None


def escape(text: str) -> str:
    """Class names and paths come from the checkpoint author: keep them from forming Markdown or
    HTML, mentioning people or linking anywhere (ci_gate/report/sanitize.py)."""
    return sanitize.markdown(text)


def code(text: str, in_table: bool = True) -> str:
    """A code span that survives any content: the fence is longer than any backtick run inside.
    Code spans show text literally (no mention, link or HTML), but control characters would
    still reach a terminal that displays the file: those are made visible first."""
    text = sanitize.visible(text, sanitize.DISPLAY_LIMIT)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    span = f"{fence}{pad}{text.replace(chr(10), ' ')}{pad}{fence}"
    # GFM splits table cells on "|" before it parses code spans, even inside them.
    return span.replace("|", "\\|") if in_table else span


def _num(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%" if math.isfinite(value) else str(value)


# The summary is posted as a pull-request comment: a glance, not the report. The per-class table,
# every warning and the images are in report.html.
TOP_K = 3


def _budget(epsilon: float | None, family: str = "linf") -> str:
    return "-" if epsilon is None else budget_label(epsilon, family)


def _class_rows(classes: list[ClassResult], total: int) -> list[str]:
    rows = [
        f"| # | Class (top {len(classes)} of {total}) | Status | Anomaly | Best trigger ASR | Base rate | Scored at |",
        "|--:|---|---|--:|--:|--:|--:|",
    ]
    for c in classes:
        status = f"**{c.status}**" if c.status != "ok" else c.status
        rows.append(
            f"| {c.index} | {escape(c.name)} | {status} | {_num(c.anomaly)} | {_pct(best_asr(c))} | {_pct(c.base_rate)} "
            f"| {_budget(c.epsilon, c.family)} |"
        )
    return rows


def _score_line(result: Result, ranked: list[ClassResult]) -> str:
    det = result.detection
    rule = f"k = {det.k:g}, min ASR {_pct(det.min_asr)}" + ("" if det.min_asr_gain is None else f", min gain over the published model {_pct(det.min_asr_gain)}")
    if result.target_index is not None:
        top = result.target
    else:
        top = ranked[0]
    line = f"{escape(top.name)}: anomaly index {_num(top.anomaly)}, best trigger ASR {_pct(best_asr(top))} ({rule})"
    if result.suspicious:
        line += f"; {len(result.suspicious)} suspicious"
    return line


def _encoder_cell(result: Result) -> str:
    enc = result.encoder
    if not enc.modified:
        return _ENCODER_TEXT[enc.status]
    worst = enc.changed[0] if enc.changed else None
    largest = (
        f", largest {code(worst.name)} (max abs. {_num(worst.max_abs, 4)}, relative {_num(worst.rel_l2, 4)})" if worst else ""
    )
    arch = f"; architecture: {escape('; '.join(enc.architecture_changes))}" if enc.architecture_changes else ""
    return f"{_ENCODER_TEXT['modified']}: {enc.n_changed} of {enc.n_tensors} tensors differ from {code(enc.reference or '?')}{largest}{arch}"


def _warnings_cell(result: Result) -> str:
    first = escape(result.warnings[0])
    more = f" (and {len(result.warnings) - 1} more in the full report)" if len(result.warnings) > 1 else ""
    return f"{first}{more}"


def _report_line(result: Result, links: SummaryLinks) -> str:
    where = "in the report folder"
    if links.artifact_name:
        where = f"in the workflow artifact {code(links.artifact_name, in_table=False)}"
        if links.run_url:
            where += f" ([workflow run]({links.run_url}))"
    # GitHub's Markdown shows no inline images: the triggers are in the self-contained HTML page
    return f"Full report with the trigger images and all {len(result.classes)} classes: `report.html` {where}."


_ENCODER_TEXT = {
    "not_embedded": "the published weights (pinned SHA-256 checked)",
    "unmodified": "embedded, identical to the published weights",
    "modified": "**embedded and modified**",
    "unverified": "embedded, **unverified** (no published weights given)",
}


def summary_markdown(result: Result, links: SummaryLinks = SummaryLinks()) -> str:
    """At most 15 lines whatever the scan (the class table is the top TOP_K), and far below
    GitHub's 65,536-character comment limit: every author-chosen text is length-bounded."""
    result = reported(result)
    settings = report_settings(result)
    gate_fails = result.gate_fails(settings["fail_on"])
    if result.verdict == "backdoor":
        target = f": target class **{escape(result.target_class)}**" if result.target_class is not None else ""
        title = f"## :x: ci-gate: backdoor detected{target}"
    elif result.encoder.modified:
        likely = f"; likely target class **{escape(result.target_class)}** (ranked first)" if result.target_class is not None else ""
        title = f"## :x: ci-gate: the checkpoint's encoders were modified{likely}"
    elif result.unverified_fails:
        title = "## :x: ci-gate: the checkpoint's encoders could not be verified (nothing published to check them against)"
    else:
        title = "## :white_check_mark: ci-gate: clean, no backdoor detected"
    model, policy = result.model, result.policy
    ranked = by_anomaly(result.classes)
    lines = [
        title,
        # the gate is the table's header row: one line less, and what a reviewer reads first
        f"| Gate | {'**fails**' if gate_fails else 'passes'} (fail-on: {escape(settings['fail_on'])}), policy {escape(policy.name)} (sha256 {code(policy.sha256[:12])}) |",
        "|---|---|",
    ]
    if ranked:
        lines.append(f"| Score | {_score_line(result, ranked)} |")
    lines += [
        # the digests too: a result.json fed to `ci-gate report` is anybody's text, field by field
        f"| Checkpoint | {code(model.path)} (sha256 {code(model.sha256[:12])}), {escape(model.learner_label)}, {len(model.class_names)} classes; "
        f"scanned in {result.timings.total_s:.1f} s on {escape(result.device)} over {result.pool.n_images} pool images |",
        f"| Encoders | {_encoder_cell(result)} |",
    ]
    if result.warnings:
        lines.append(f"| Warnings | {_warnings_cell(result)} |")
    lines.append("")
    if ranked:
        lines += [*_class_rows(ranked[:TOP_K], len(ranked)), ""]
    lines.append(_report_line(result, links))
    return "\n".join(lines) + "\n"
