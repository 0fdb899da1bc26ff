"""The robust z-score: the one anomaly index the gate and the inversion baselines share. Pure."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Literal

MAD_TO_SIGMA = 1.4826  # makes the MAD a consistent estimator of a normal distribution's sigma


def robust_z(values: Sequence[float], mad_floor: float, tail: Literal["upper", "lower"] = "upper") -> tuple[list[float], float, float]:
    """(scores, median, MAD): (v - median) / (1.4826 * max(MAD, mad_floor)) per value.

    ``tail="lower"`` scores (median - v) instead, so that unusually *small* values score high
    (Neural Cleanse's trigger sizes). It is written as its own subtraction, not as a negated upper
    score: a value at the median then scores 0.0, not -0.0, and reports print the same digits as
    before. The floor keeps near-identical values from dividing by about zero.
    """
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    scale = MAD_TO_SIGMA * max(mad, mad_floor)
    if tail == "lower":
        return [(med - v) / scale for v in values], med, mad
    return [(v - med) / scale for v in values], med, mad
