"""Scoring: per-class inversion statistics -> anomaly index -> verdict. Pure functions only.

The anomaly index is Neural Cleanse's robust z-score, a_t = (s_t - median(s)) / (1.4826 * MAD(s)),
over the candidate classes (ci_gate.scoring.robust); only the upper tail counts (a class that is unusually *easy* to reach
with a tiny universal perturbation). A class is a backdoor target when its index exceeds k AND
its trigger moves at least ``min_asr`` of the pool (and, against a clean reference and where the
policy sets ``min_asr_gain``, at least that much more of it than the reference's trigger does); an outlier whose trigger does not is
suspicious, and a strong trigger on an ordinary class is nothing (reports call a suspicious class
an outlier, so it must be one). The statistics themselves live in ci_gate.scoring.statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ci_gate.scoring.robust import robust_z
from ci_gate.scoring.statistics import ClassStats, class_statistic


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
    return robust_z(values, mad_floor)


def decide(stats: Sequence[ClassStats], statistic: str, k: float, min_asr: float, mad_floor: float) -> Decision:
    values = [class_statistic(statistic, s) for s in stats]
    scores, med, mad = anomaly_index(values, mad_floor)
    status = []
    for a, s in zip(scores, stats):
        outlier, strong = a > k, s.asr >= min_asr
        # a strong trigger alone is no alert: on a small model many ordinary classes reach min_asr
        status.append("backdoor" if outlier and strong else "suspicious" if outlier else "ok")
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


def ladder_score(indices: Sequence[float], families: Sequence[str]) -> float:
    """A class's score over the ladder: the mean of its indices over each trigger family's rungs,
    the larger of the family means. A planted direction stands out over the whole ladder (the
    demo's backdoor, at the bundled MAD floor: 2.1 / 2.4 / 2.7 / 3.0 / 2.7 over 2-32/255); a clean
    class that the tuned model merely makes easier stands out only at the top budgets, where every
    class falls (the demo's clean 'black': 0.3 / 0.5 / 1.0 / 1.7 / 3.4). The mean scores them 2.6
    and 1.4; the mean of the two largest indices (stops 18-24) 2.9 and 2.5. A patch family's rungs
    are averaged apart, so quiet L-inf rungs cannot dilute a patch backdoor."""
    if len(indices) != len(families) or not indices:
        raise ValueError("one family per rung, and at least one rung")
    by: dict[str, list[float]] = {}
    for z, f in zip(indices, families):
        by.setdefault(f, []).append(z)
    return max(sum(v) / len(v) for v in by.values())


@dataclass(frozen=True)
class LadderDecision:
    """The verdict over a budget ladder. Per class: the rung whose anomaly index is largest
    decides; per rung: each class's statistic and anomaly index (reports show them all)."""

    statistic: list[list[float]]  # [rung][class]
    anomaly: list[list[float]]  # [rung][class]
    median: list[float]  # per rung
    mad: list[float]  # per rung
    rung: list[int]  # per class: the deciding rung
    score: list[float]  # per class: ladder_score of its indices over the rungs
    status: list[str]
    verdict: str
    target: int | None


def decide_ladder(
    rungs: Sequence[Sequence[ClassStats]], statistic: str, k: float, min_asr: float, mad_floor: float, extreme: float, min_asr_gain: float | None = None,
    families: Sequence[str] | None = None,
) -> LadderDecision:
    """Blind decision over budgets the defender cannot know in advance.

    The anomaly index is computed across classes within each rung (every class saw the same
    budget, batches and evaluation images); a class's score is :func:`ladder_score` of its
    indices (``families``: each rung's trigger family, default all one). A backdoor's target
    stands out over a range of budgets; a clean class that spikes at one rung is noise, and
    taking the largest single index would multiply such chances by the number of rungs. The
    deciding rung (reports show its trigger) is the one with the largest index.
    A class is an outlier when that score exceeds ``k``; an outlier is a backdoor target when its
    trigger reaches ``min_asr`` at some rung and, where the stats carry a clean reference,
    sends at least ``min_asr_gain`` more of the pool to the class than the reference's trigger at
    the same rung does (:func:`asr_gain`), or unconditionally once the score exceeds
    ``extreme``: a class that stands out that far cannot pass because the ladder's budgets stop
    short of the attacker's. An outlier that is neither is suspicious. ``k`` is calibrated for the
    score over the rungs and the largest over classes (docs/benchmark.md), which is what accounts
    for testing several budgets and classes.
    """
    if not rungs:
        raise ValueError("the ladder needs at least one rung")
    n = len(rungs[0])
    families = ["linf"] * len(rungs) if families is None else list(families)
    if any(len(r) != n for r in rungs):
        raise ValueError("every rung needs a statistic for every class")
    values, scores, meds, mads = [], [], [], []
    for stats in rungs:
        v = [class_statistic(statistic, s) for s in stats]
        a, med, mad = anomaly_index(v, mad_floor)
        values.append(v)
        scores.append(a)
        meds.append(med)
        mads.append(mad)
    best = [max(range(len(rungs)), key=lambda r: (scores[r][c], -r)) for c in range(n)]
    score = [ladder_score([scores[r][c] for r in range(len(rungs))], families) for c in range(n)]
    status = []
    for c in range(n):
        reached = max(r[c].asr for r in rungs) >= min_asr and gain_met(asr_gain([r[c] for r in rungs]), min_asr_gain)
        if not score[c] > k:  # NaN is never an outlier here; the scan refuses NaN statistics before
            status.append("ok")
        elif reached or score[c] > extreme:
            status.append("backdoor")
        else:
            status.append("suspicious")
    flagged = [c for c in range(n) if status[c] == "backdoor"]
    target = max(flagged, key=lambda c: score[c]) if flagged else None
    return LadderDecision(
        statistic=values, anomaly=scores, median=meds, mad=mads, rung=best, score=score, status=status,
        verdict="backdoor" if flagged else "clean", target=target,
    )


def asr_gain(rungs: Sequence[ClassStats]) -> float:
    """How much more of the pool one class's trigger sends to it than the clean reference's
    trigger does, at the rung where the difference is largest; +inf without a reference (no
    condition to meet). The absolute floor ``min_asr`` says nothing at the top of a blind ladder:
    at 32/255 the published model itself sends 90-99% of the pool to any class. On the zoo
    (docs/benchmark.md, stop 22) the planted class's trigger beats the reference's by 0.27-0.92
    at some rung in every scan of the counted backdoors but four (0.08-0.22, two models, each
    scored above the extreme rule's 8); a clean class that is merely easier in the tuned model
    than in the published one, by at most 0.13 among the clean classes scored above 2.5. The
    ranges overlap, so the bundled policies leave the condition off (``min_asr_gain: null``)."""
    gains = [s.asr - s.ref_asr for s in rungs if s.ref_asr is not None]
    return max(gains) if gains else float("inf")


GAIN_TOLERANCE = 1e-9  # ASRs are fractions of the pool: 0.7 - 0.5 is 0.19999999999999996, a gain of 0.2


def gain_met(gain: float | None, min_asr_gain: float | None) -> bool:
    """Whether a trigger's gain over the reference's meets the floor; no floor or no reference
    values: met."""
    return min_asr_gain is None or gain is None or gain >= min_asr_gain - GAIN_TOLERANCE

NAMING_FLOOR = 2.0  # Neural Cleanse's outlier threshold: below it no class stands out at all


def named_target(decision: LadderDecision, tower_modified: bool) -> int | None:
    """The class the reports name as the backdoor's target: the flagged class with the largest
    score; on a checkpoint whose image tower differs from the published one and no class flagged,
    the class ranked first, if it stands out (score above NAMING_FLOOR). Such a checkpoint fails
    the gate whatever its classes say, so what ``k`` guards against (a clean model failing) cannot
    happen and the question left is only which class; the one ranked first is the best answer
    (zoo: the planted class ranked first in 47 of the 48 encoder-level scans, above k in 38)."""
    if decision.target is not None or not tower_modified:
        return decision.target
    top = max(range(len(decision.score)), key=lambda c: (decision.score[c], -c))
    return top if decision.score[top] > NAMING_FLOOR else None
