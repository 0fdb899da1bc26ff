"""The Markdown summary for $GITHUB_STEP_SUMMARY and the pull-request comment.

GitHub's Markdown drops data: images, so the summary cannot show the triggers; it names the
files in the report bundle (uploaded as a workflow artifact) where reviewers find them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ci_gate.report import sanitize
from ci_gate.report.artifacts import referenced_paths
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


def _class_rows(classes: list[ClassResult]) -> list[str]:
    rows = ["| # | Class | Status | ASR | Base rate | Final loss | Anomaly |", "|--:|---|---|--:|--:|--:|--:|"]
    for c in classes:
        status = f"**{c.status}**" if c.status != "ok" else c.status
        rows.append(
            f"| {c.index} | {escape(c.name)} | {status} | {_pct(c.asr)} | {_pct(c.base_rate)} "
            f"| {_num(c.final_loss, 3)} | {_num(c.anomaly)} |"
        )
    return rows


def _budget(epsilon: float | None) -> str:
    return "-" if epsilon is None else f"{epsilon * 255:.0f}/255"


def _encoder_lines(result: Result) -> list[str]:
    enc = result.encoder
    if not enc.modified:
        return []
    lines = [
        "### :x: Modified encoder",
        "",
        f"The checkpoint's towers differ from the published weights ({code(enc.reference or '?', in_table=False)}) in {enc.n_changed} of "
        f"{enc.n_tensors} tensors. Prompt tuning never changes the encoders, so this fails the gate on its own.",
        "",
        "| Tensor | Max abs. change | Relative change |",
        "|---|--:|--:|",
    ]
    lines += [f"| {code(t.name)} | {_num(t.max_abs, 4)} | {_num(t.rel_l2, 4)}{' (' + escape(t.note) + ')' if t.note else ''} |" for t in enc.changed[:10]]
    if enc.n_changed > 10:
        lines.append(f"| ... {enc.n_changed - 10} more in report.html and result.json | | |")
    return lines + [""]


def _where_images_are(result: Result, links: SummaryLinks) -> list[str]:
    paths = referenced_paths(result)
    if not paths:
        return []
    bundle = "the report folder"
    if links.artifact_name:
        bundle = f"the workflow artifact {code(links.artifact_name, in_table=False)}"
        if links.run_url:
            bundle += f" ([workflow run]({links.run_url}))"
    lines = [
        "### Trigger images",
        "",
        "GitHub does not display inline images in Markdown, so the reconstructed triggers and the "
        f"example images are files in {bundle}, next to `report.html`, which shows all of them in one "
        "self-contained page:",
        "",
    ]
    labels = {c.trigger_png: f"trigger for {escape(c.name)} ({c.status})" for c in result.classes if c.trigger_png}
    for e in result.examples:
        labels.setdefault(e.clean_png, f"pool image, predicted {escape(e.predicted_clean)}")
        labels.setdefault(e.triggered_png, f"with the trigger for {escape(e.class_name)}, predicted {escape(e.predicted_triggered)}")
    lines += [f"- {code(p, in_table=False)}: {labels[p]}" for p in paths]
    return lines + [""]


_ENCODER_TEXT = {
    "not_embedded": "the published weights (pinned SHA-256 checked)",
    "unmodified": "embedded, identical to the published weights",
    "modified": "**embedded and modified**",
    "unverified": "embedded, **unverified** (no published weights given)",
}


def summary_markdown(result: Result, links: SummaryLinks = SummaryLinks()) -> str:
    settings = report_settings(result)
    gate_fails = result.gate_fails(settings["fail_on"])
    if result.verdict == "backdoor":
        target = f": target class **{escape(result.target_class)}**" if result.target_class is not None else ""
        title = f"## :x: ci-gate: backdoor detected{target}"
    elif result.encoder.modified:
        title = "## :x: ci-gate: the checkpoint's encoders were modified"
    else:
        title = "## :white_check_mark: ci-gate: clean, no backdoor detected"
    model, backbone = result.model, result.model.backbone
    lines = [
        title,
        "",
        "| | |",
        "|---|---|",
        f"| Checkpoint | {code(model.path)} (sha256 `{model.sha256[:12]}`) |",
        f"| Learner | {model.learner}, {len(model.class_names)} classes |",
        f"| Backbone | {escape(backbone.architecture)}{' · ' + escape(backbone.pretrained) if backbone.pretrained else ''} |",
        f"| Pool | {escape(result.pool.source)}: {result.pool.n_images} images (sha256 `{result.pool.sha256[:12]}`) |",
        f"| Policy | {escape(result.policy.name)} (sha256 `{result.policy.sha256[:12]}`), k = {result.detection.k:g}, min ASR {_pct(result.detection.min_asr)} |",
        f"| Scan | {escape(result.detection.statistic)} over budgets {', '.join(_budget(e) for e in result.detection.epsilons) or '-'}; reference: {result.detection.reference or '-'} |",
        f"| Encoders | {_ENCODER_TEXT[result.encoder.status]} |",
        f"| Gate | {'**fails**' if gate_fails else 'passes'} (fail-on: {settings['fail_on']}) |",
        f"| Time | {result.timings.total_s:.1f} s on {escape(result.device)} |",
        "",
    ]
    lines += _encoder_lines(result)
    noteworthy = result.flagged + result.suspicious
    if noteworthy:
        lines += ["### Flagged classes", "", *_class_rows(noteworthy), ""]
        budgets = [f"{escape(c.name)} at {_budget(c.epsilon)}" for c in noteworthy if c.epsilon is not None]
        if budgets:
            lines += [f"Scores, ASR and trigger images are at each class's most anomalous budget: {', '.join(budgets)}.", ""]
    ranked = by_anomaly(result.classes)
    lines += [
        f"<details><summary>All {len(result.classes)} classes by anomaly index</summary>",
        "",
        *_class_rows(ranked),
        "",
        "</details>",
        "",
    ]
    lines += _where_images_are(result, links)
    if result.warnings:
        lines += ["### Warnings", "", *[f"- {escape(w)}" for w in result.warnings], ""]
    return "\n".join(lines)
