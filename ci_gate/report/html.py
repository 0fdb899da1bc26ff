"""The self-contained HTML report: one file, every image inlined, no scripts, opens offline."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import jinja2
import markupsafe

from ci_gate.report import artifacts
from ci_gate.report.chart import layout
from ci_gate.report.ordering import by_anomaly
from ci_gate.report.sanitize import visible
from ci_gate.report.settings import report_settings
from ci_gate.resources import templates_dir
from ci_gate.result import ClassResult, Example, Result

TEMPLATE = "report.html.j2"
DATA_URI = "data:image/png;base64,"
# Longer texts (a 10,000-character class name) are cut, with their length, for display.
TEXT_LIMIT = 2000


@dataclass(frozen=True)
class TriggerView:
    cls: ClassResult
    image: str | None


@dataclass(frozen=True)
class ExampleView:
    example: Example
    clean: str | None
    triggered: str | None


def _num(value: float, digits: int = 3) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.{digits}f}"


def _pct(value: float) -> str:
    return "nan" if math.isnan(value) else f"{100 * value:.1f}%"


def _finalize(value):
    # Every {{ expression }} passes here before autoescaping: names and paths from the checkpoint
    # lose their control and bidi characters (a U+202E in a class name would reorder the page).
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        if value.startswith(DATA_URI):
            return value
        return visible(value, TEXT_LIMIT)
    return value


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=True,
        finalize=_finalize,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    return env


def _context(result: Result, result_dir: Path) -> dict:
    ranked = by_anomaly(result.classes)
    shown = result.flagged + result.suspicious
    settings = report_settings(result)
    return {
        "result": result,
        "settings": settings,
        "gate_fails": result.gate_fails(settings["fail_on"]),
        "ranked": ranked,
        "chart": layout(ranked, result.detection.k),
        "triggers": [TriggerView(c, artifacts.png_data_uri(result_dir, c.trigger_png)) for c in shown],
        "examples": [
            ExampleView(
                e,
                artifacts.png_data_uri(result_dir, e.clean_png),
                artifacts.png_data_uri(result_dir, e.triggered_png),
            )
            for e in result.examples
        ],
        "missing": artifacts.missing_artifacts(result, result_dir),
    }


def render_html(result: Result, result_dir: Path) -> str:
    return _environment().get_template(TEMPLATE).render(**_context(result, result_dir))
