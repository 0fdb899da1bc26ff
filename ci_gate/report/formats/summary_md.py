"""summary.md: the Markdown summary a pull-request comment and the job summary show."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ci_gate.report.formats import ReportInputs, Reporter

if TYPE_CHECKING:
    from ci_gate.result import Result


def write(result: Result, inputs: ReportInputs, path: Path) -> None:
    from ci_gate.io import atomic_write_text
    from ci_gate.report.markdown import summary_markdown

    atomic_write_text(path, summary_markdown(result, inputs.links))


REPORTER = Reporter("md", "summary.md", write, "a Markdown summary for pull-request comments and job summaries")
