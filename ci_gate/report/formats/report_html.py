"""report.html: one self-contained page (images inlined) for a person reviewing the scan."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ci_gate.report.formats import ReportInputs, Reporter

if TYPE_CHECKING:
    from ci_gate.result import Result


def write(result: Result, inputs: ReportInputs, path: Path) -> None:
    from ci_gate.io import atomic_write_text
    from ci_gate.report.html import render_html  # jinja2: only when an HTML report is written

    atomic_write_text(path, render_html(result, inputs.result_dir))


REPORTER = Reporter("html", "report.html", write, "a self-contained HTML page with the triggers inlined")
