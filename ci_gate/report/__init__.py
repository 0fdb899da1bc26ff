"""Reporters: turn a Result into report files (one module per format in ci_gate/report/formats/). Nothing here imports torch.

``render`` is the one entry point the scan and ``ci-gate report`` call. The output folder is
always a self-consistent bundle: when it differs from the result folder, the images the Result
names are copied along, so result.json, summary.md and the PNGs keep agreeing on relative paths.
"""

from __future__ import annotations

from pathlib import Path

from ci_gate.io import atomic_write_bytes
from ci_gate.report import artifacts
from ci_gate.report.formats import ReportInputs, file_names, format_names, reporters, unknown_formats
from ci_gate.report.markdown import SummaryLinks
from ci_gate.report.sarif import SarifLimitError
from ci_gate.result import Result

# The registry in ci_gate.report.formats, one module per format.
FILE_NAMES = file_names()
FORMATS = format_names()

__all__ = ["FILE_NAMES", "FORMATS", "SarifLimitError", "SummaryLinks", "render", "unknown_formats"]


def render(
    result: Result,
    result_dir: Path,
    formats: list[str],
    *,
    out_dir: Path | None = None,
    links: SummaryLinks = SummaryLinks(),
    source_root: Path | None = None,
) -> dict[str, Path]:
    """Write the requested formats; returns format -> file written.

    ``result_dir`` holds the artifacts the Result names; ``out_dir`` (default: result_dir) gets
    the reports. ``source_root`` turns an absolute checkpoint path into a repository-relative one
    in SARIF.
    """
    bad = unknown_formats(formats)
    if bad:
        raise ValueError(f"unknown report format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    result_dir = Path(result_dir)
    out_dir = Path(out_dir) if out_dir is not None else result_dir
    if out_dir.resolve() != result_dir.resolve():
        _copy_artifacts(result, result_dir, out_dir)

    inputs = ReportInputs(result_dir=result_dir, links=links, source_root=source_root)
    known = reporters()
    written: dict[str, Path] = {}
    for fmt in dict.fromkeys(formats):
        rep = known[fmt]
        path = out_dir / rep.file_name
        rep.write(result, inputs, path)
        written[fmt] = path
    return written


def _copy_artifacts(result: Result, result_dir: Path, out_dir: Path) -> None:
    for rel in artifacts.referenced_paths(result):
        data = artifacts.read_png(result_dir, rel)
        if data is not None:
            atomic_write_bytes(out_dir / rel, data)
