"""report.sarif: SARIF 2.1.0 for GitHub code scanning (alerts on the checkpoint file)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ci_gate.report.formats import ReportInputs, Reporter

if TYPE_CHECKING:
    from ci_gate.result import Result


def write(result: Result, inputs: ReportInputs, path: Path) -> None:
    from ci_gate.io import atomic_write_bytes
    from ci_gate.report.sarif import render_sarif

    atomic_write_bytes(path, render_sarif(result, inputs.source_root))


REPORTER = Reporter("sarif", "report.sarif", write, "SARIF 2.1.0 for code scanning")
