"""The order every report lists classes in: most anomalous first."""

from __future__ import annotations

import math

from ci_gate.result import ClassResult


def by_anomaly(classes: list[ClassResult]) -> list[ClassResult]:
    # NaN (a degenerate scan) sorts last rather than poisoning the comparison.
    return sorted(classes, key=lambda c: (math.isnan(c.anomaly), -c.anomaly if not math.isnan(c.anomaly) else 0.0, c.index))
