"""Scoring: per-class inversion statistics -> anomaly index -> verdict. Pure functions only.

The anomaly index is Neural Cleanse's robust z-score, a_t = (s_t - median(s)) / (1.4826 * MAD(s)),
over the candidate classes; only the upper tail counts (a class that is unusually *easy* to reach
with a tiny universal perturbation). A class is a backdoor target when its index exceeds k AND
its trigger moves at least ``min_asr`` of the pool; meeting one criterion only makes it
suspicious. This module is where to change the statistic.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MAD_TO_SIGMA = 1.4826  # makes the MAD a consistent estimator of a normal distribution's sigma
REFERENCE_STATISTICS = ("ref_loss_gain", "ref_asr_gain", "ref_drop_gain")


@dataclass(frozen=True)
class ClassStats:
    asr: float
    base_rate: float
    final_loss: float
    clean_loss: float = 0.0  # mean margin loss of the clean pool for this class
    # clean reference: the same backbone with hand-written prompts ("a photo of a {class}."),
    # inverted with the same settings and pool; None when no reference was run
    ref_asr: float | None = None
    ref_final_loss: float | None = None
    ref_clean_loss: float | None = None


@dataclass(frozen=True)
class Decision:
    statistic: list[float]
    anomaly: list[float]
    status: list[str]
    verdict: str
    target: int | None
    median: float
    mad: float


def class_statistic(kind: str, stats: ClassStats) -> float:
    """Larger means the class is easier to force with the universal trigger."""
    if kind == "neg_loss":
        return -stats.final_loss
    if kind == "asr":
        return stats.asr
    if kind == "asr_gain":
        return stats.asr - stats.base_rate
    if kind == "loss_drop":
        # how far the trigger moves the margin; a class the pool already leans towards has a low
        # clean loss and so gains little, which cancels naturally easy classes
        return stats.clean_loss - stats.final_loss
    if kind in REFERENCE_STATISTICS:
        if stats.ref_final_loss is None or stats.ref_asr is None or stats.ref_clean_loss is None:
            raise ValueError(f"statistic {kind!r} needs the clean-reference inversion (ref_* fields)")
        if kind == "ref_loss_gain":
            # how much lower the delivered model's inversion loss is than the hand-written-prompt
            # model's on the same backbone: the backdoor makes its target easier than CLIP itself
            return stats.ref_final_loss - stats.final_loss
        if kind == "ref_asr_gain":
            return stats.asr - stats.ref_asr
        if kind == "ref_drop_gain":
            return (stats.clean_loss - stats.final_loss) - (stats.ref_clean_loss - stats.ref_final_loss)
    raise ValueError(f"unknown statistic {kind!r}")


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
