"""result.json: the versioned Result itself, which every other format is rendered from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ci_gate.report.formats import ReportInputs, Reporter

if TYPE_CHECKING:
    from ci_gate.result import Result


def write(result: Result, inputs: ReportInputs, path: Path) -> None:
    result.save(path)


REPORTER = Reporter("json", "result.json", write, "the Result as versioned JSON")
