"""Scoring: per-class inversion statistics -> anomaly index -> verdict. Pure functions only.

The anomaly index is Neural Cleanse's robust z-score, a_t = (s_t - median(s)) / (1.4826 * MAD(s)),
over the candidate classes; only the upper tail counts (a class that is unusually *easy* to reach
with a tiny universal perturbation). A class is a backdoor target when its index exceeds k AND
its trigger moves at least ``min_asr`` of the pool; meeting one criterion only makes it
suspicious. The statistics themselves live in ci_gate.scoring.statistics.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from ci_gate.scoring.statistics import ClassStats, class_statistic

MAD_TO_SIGMA = 1.4826  # makes the MAD a consistent estimator of a normal distribution's sigma


@dataclass(frozen=True)
class Decision:
    statistic: list[float]
    anomaly: list[float]
    status: list[str]
    verdict: str
    target: int | None
    median: float
    mad: float


def anomaly_index(values: Sequence[float], mad_floor: float) -> tuple[list[float], float, float]:
    """Robust z-scores; the MAD is floored so near-identical clean classes do not divide by ~0."""
    if len(values) < 2:
        raise ValueError("the anomaly index needs at least two classes")
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    scale = MAD_TO_SIGMA * max(mad, mad_floor)
    return [(v - med) / scale for v in values], med, mad


def decide(stats: Sequence[ClassStats], statistic: str, k: float, min_asr: float, mad_floor: float) -> Decision:
    values = [class_statistic(statistic, s) for s in stats]
    scores, med, mad = anomaly_index(values, mad_floor)
    status = []
    for a, s in zip(scores, stats):
        outlier, strong = a > k, s.asr >= min_asr
        status.append("backdoor" if outlier and strong else "suspicious" if outlier or strong else "ok")
    flagged = [i for i, st in enumerate(status) if st == "backdoor"]
    target = max(flagged, key=lambda i: scores[i]) if flagged else None
    return Decision(
        statistic=values,
        anomaly=scores,
        status=status,
        verdict="backdoor" if flagged else "clean",
        target=target,
        median=med,
        mad=mad,
    )
