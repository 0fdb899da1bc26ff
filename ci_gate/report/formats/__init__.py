"""Report formats, one module each. A module defines ``REPORTER``; list it in ``_MODULES``.

A reporter has a format name (what ``report.formats`` in a policy and ``--format`` take), the
file it writes into the report folder, and one write function that reads the versioned Result
plus the folder holding the artifacts (trigger and example PNGs) the Result names. The policy
model, the policy schema, ``ci-gate report --format``, the report folder's list of own entries
and the Action outputs all take their format lists from here, so a new format is one module.

This package and the modules it lists import nothing heavy: the policy and the CLI's help list
the formats, and a reporter's renderer (jinja2 for HTML) loads when it writes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ci_gate.plugins import registered

if TYPE_CHECKING:
    from ci_gate.report.markdown import SummaryLinks
    from ci_gate.result import Result

# Registry order is the order of the policy's default formats, of the schema's enum and of --help.
_MODULES = ("result_json", "report_html", "report_sarif", "summary_md")


@dataclass(frozen=True)
class ReportInputs:
    """What a reporter may read besides the Result."""

    result_dir: Path  # holds the artifacts (triggers/, examples/) the Result names by relative path
    links: SummaryLinks  # the workflow run and artifact a summary links to, when known
    source_root: Path | None = None  # makes an absolute checkpoint path repository-relative (SARIF)


@dataclass(frozen=True)
class Reporter:
    name: str  # the format name in policies and on the command line
    file_name: str  # what it writes into the report folder
    write: Callable[[Result, ReportInputs, Path], None]  # writes the report to the given path, atomically
    description: str


def reporters() -> dict[str, Reporter]:
    """Every registered reporter by format name, in registry order."""
    return registered(__name__, _MODULES, "REPORTER", Reporter)


def format_names() -> tuple[str, ...]:
    return tuple(reporters())


def file_names() -> dict[str, str]:
    """Format name -> the file it writes."""
    return {name: rep.file_name for name, rep in reporters().items()}


def unknown_formats(formats: Iterable[str]) -> list[str]:
    known = reporters()
    return [f for f in formats if f not in known]


def reporter(name: str) -> Reporter:
    known = reporters()
    if name not in known:
        raise ValueError(f"unknown report format {name!r}; choose from {', '.join(known)}")
    return known[name]
