"""The self-contained HTML report: one file, every image inlined, no scripts, opens offline."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2
import markupsafe

from ci_gate.report import artifacts
from ci_gate.report.alerts import best_asr, headline_warnings, reported
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
# Result warnings shown in the verdict banner (the headline warnings always are).
BANNER_WARNINGS = 5


@dataclass(frozen=True)
class TriggerView:
    cls: ClassResult
    image: str | None
    epsilon: float | None  # the budget the trigger image was written at
    gain: float | None  # how much the image magnifies the perturbation (artifacts.trigger_gain)


def _trigger_view(result: Result, cls: ClassResult, result_dir: Path) -> TriggerView:
    # A result without per-class budgets (one-budget scans before the ladder) had a single epsilon.
    eps = cls.epsilon if cls.epsilon is not None else (result.detection.epsilons[0] if len(result.detection.epsilons) == 1 else None)
    eps = artifacts.shown_epsilon(eps, cls.family)
    gain = artifacts.trigger_gain(eps) if eps else None
    return TriggerView(cls, artifacts.png_data_uri(result_dir, cls.trigger_png), eps, gain)


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


def _budget(epsilon: float | None, family: str = "linf") -> str:
    return artifacts.budget_label(epsilon, family)


def _missing_note(rel: str) -> markupsafe.Markup:
    # Markup.format escapes the path; visible() first, as _finalize does for plain strings
    return markupsafe.Markup("Report: image <code>{}</code> is missing or not a PNG inside the result folder.").format(visible(rel, TEXT_LIMIT))


# An inlined image as artifacts.png_data_uri writes it: nothing but base64 after the prefix.
_DATA_URI_VALUE = re.compile(re.escape(DATA_URI) + r"[A-Za-z0-9+/]*={0,2}")


def _finalize(value):
    # Every {{ expression }} passes here before autoescaping: names and paths from the checkpoint
    # lose their control and bidi characters (a U+202E in a class name would reorder the page).
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        # only a real data URI skips visible() (whose length limit would cut the image); a class
        # name or path that merely starts with the prefix is text like any other
        if _DATA_URI_VALUE.fullmatch(value):
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
    env.filters["budget"] = _budget
    env.filters["best_asr"] = best_asr
    return env


def _context(result: Result, result_dir: Path) -> dict:
    result = reported(result)
    ranked = by_anomaly(result.classes)
    shown = result.flagged + result.suspicious
    settings = report_settings(result)
    return {
        "result": result,
        "settings": settings,
        "gate_fails": result.gate_fails(settings["fail_on"]),
        "headline": headline_warnings(result),
        "ranked": ranked,
        "chart": layout(ranked, result.detection.k),
        "triggers": [_trigger_view(result, c, result_dir) for c in shown],
        "examples": [
            ExampleView(
                e,
                artifacts.png_data_uri(result_dir, e.clean_png),
                artifacts.png_data_uri(result_dir, e.triggered_png),
            )
            for e in result.examples
        ],
        # the banner lists the first few; past BANNER_WARNINGS a section at the end lists them all
        "notes": [*result.warnings, *(_missing_note(rel) for rel in artifacts.missing_artifacts(result, result_dir))],
        "banner_limit": BANNER_WARNINGS,
    }


def render_html(result: Result, result_dir: Path) -> str:
    return _environment().get_template(TEMPLATE).render(**_context(result, result_dir))
