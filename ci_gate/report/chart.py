"""Geometry of the anomaly-score chart in the HTML report.

Only numbers are computed here; ``templates/_anomaly_chart.svg.j2`` draws them, so every class
name reaches the SVG through Jinja's autoescaping. Bars are horizontal because scans have up to
50 classes and their names must stay readable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ci_gate.report.sanitize import plain
from ci_gate.result import ClassResult

LABEL_WIDTH = 200
PLOT_WIDTH = 520
RIGHT_PAD = 60
ROW_HEIGHT = 20
BAR_HEIGHT = 14
TOP_PAD = 28
AXIS_HEIGHT = 30


@dataclass(frozen=True)
class Bar:
    name: str
    value: float
    status: str
    x: float
    y: float
    width: float
    label_y: float


@dataclass(frozen=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True)
class ChartLayout:
    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    bar_height: int
    bars: list[Bar]
    ticks: list[Tick]
    zero_x: float
    threshold_x: float | None  # None: k is not finite, no threshold line can be drawn
    k: float


def _drawable(values: list[float], k: float) -> list[float]:
    # A degenerate scan can yield inf/nan; the chart must still draw (the table shows the raw
    # value): nan sits at 0 and an infinity just past the largest finite score.
    finite = [abs(v) for v in [k, *values] if math.isfinite(v)]
    bound = min(1.25 * max([1.0, *finite]), 1e300)  # far from float overflow in the scaling below
    return [0.0 if math.isnan(v) else max(min(v, bound), -bound) for v in values]


def _tick_step(span: float) -> float:
    raw = span / 6
    if not math.isfinite(raw) or raw <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def layout(classes: list[ClassResult], k: float) -> ChartLayout:
    values = _drawable([c.anomaly for c in classes], k)
    # a policy may say k = .inf (never flag) or a result may carry nan: scale without it
    drawn_k = k if math.isfinite(k) else None
    lo = min([0.0, *values])
    hi = max([0.0 if drawn_k is None else drawn_k, *values])
    span = hi - lo or 1.0
    lo, hi = lo - 0.05 * span, hi + 0.08 * span
    step = _tick_step(hi - lo)

    plot_left, plot_right = LABEL_WIDTH, LABEL_WIDTH + PLOT_WIDTH
    plot_top = TOP_PAD
    plot_bottom = plot_top + ROW_HEIGHT * max(len(classes), 1)

    def x_of(value: float) -> float:
        return round(plot_left + (value - lo) / (hi - lo) * PLOT_WIDTH, 2)

    zero_x = x_of(0.0)
    bars = []
    for row, (cls, value) in enumerate(zip(classes, values)):
        top = plot_top + row * ROW_HEIGHT + (ROW_HEIGHT - BAR_HEIGHT) / 2
        end_x = x_of(value)
        bars.append(
            Bar(
                name=plain(cls.name),
                value=cls.anomaly,
                status=cls.status,
                x=min(zero_x, end_x),
                y=top,
                width=max(abs(end_x - zero_x), 1.0),
                label_y=top + BAR_HEIGHT - 3,
            )
        )
    first = math.ceil(lo / step)
    ticks = [
        Tick(x=x_of(i * step), label=f"{i * step:g}")
        for i in range(first, math.floor(hi / step) + 1)
    ]
    return ChartLayout(
        width=plot_right + RIGHT_PAD,
        height=plot_bottom + AXIS_HEIGHT,
        plot_left=plot_left,
        plot_right=plot_right,
        plot_top=plot_top,
        plot_bottom=plot_bottom,
        bar_height=BAR_HEIGHT,
        bars=bars,
        ticks=ticks,
        zero_x=zero_x,
        threshold_x=None if drawn_k is None else x_of(drawn_k),
        k=k,
    )
