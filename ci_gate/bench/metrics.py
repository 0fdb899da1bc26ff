"""Detection metrics for the benchmark. Pure Python, no torch: tested directly.

- :func:`auroc`: model-level area under the ROC curve of a score where larger means "more likely
  backdoored" (Mann-Whitney U; ties count one half). ``nan`` when one class is missing.
- :func:`roc_curve`: the (FPR, TPR) points of that score, for the plot.
- :func:`detection_accuracy`: fraction of models whose verdict matches the truth.
- :func:`target_f1`: target-class F1 over all models. Each model contributes one decision: the
  class the detector names as the target (or none). A named class is a true positive when the
  model is backdoored with that target, a false positive otherwise (a flagged clean model or a
  wrong class); a backdoored model whose target was not named is a false negative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float:
    if len(scores) != len(positive):
        raise ValueError("scores and labels differ in length")
    pos = [_finite(s) for s, p in zip(scores, positive) if p]
    neg = [_finite(s) for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return math.nan
    wins = 0.0
    for p in pos:
        for n in neg:
            wins += 1.0 if p > n else 0.5 if p == n else 0.0
    return wins / (len(pos) * len(neg))


def _finite(x: float) -> float:
    """NaN scores rank lowest (a detector that produced nothing has not flagged anything)."""
    return -math.inf if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def roc_curve(scores: Sequence[float], positive: Sequence[bool]) -> list[tuple[float, float]]:
    """ROC points from (0, 0) to (1, 1), one step per distinct threshold."""
    n_pos = sum(1 for p in positive if p)
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return [(0.0, 0.0), (1.0, 1.0)]
    pairs = sorted(((_finite(s), bool(p)) for s, p in zip(scores, positive)), key=lambda sp: -sp[0])
    points = [(0.0, 0.0)]
    tp = fp = 0
    i = 0
    while i < len(pairs):
        thr = pairs[i][0]
        while i < len(pairs) and pairs[i][0] == thr:
            tp += pairs[i][1]
            fp += not pairs[i][1]
            i += 1
        points.append((fp / n_neg, tp / n_pos))
    return points


def detection_accuracy(flagged: Sequence[bool], positive: Sequence[bool]) -> float:
    if len(flagged) != len(positive):
        raise ValueError("verdicts and labels differ in length")
    if not flagged:
        return math.nan
    return sum(1 for f, p in zip(flagged, positive) if bool(f) == bool(p)) / len(flagged)


def target_f1(predicted: Sequence[int | None], truth: Sequence[int | None]) -> float:
    """``predicted[i]``: class named by the detector for model i (None: clean verdict);
    ``truth[i]``: the model's backdoor target (None: clean model)."""
    if len(predicted) != len(truth):
        raise ValueError("predictions and truth differ in length")
    tp = fp = fn = 0
    for p, t in zip(predicted, truth):
        if p is not None and p == t:
            tp += 1
        else:
            if p is not None:
                fp += 1
            if t is not None:
                fn += 1
    denom = 2 * tp + fp + fn
    return math.nan if denom == 0 else 2 * tp / denom


def confusion(flagged: Sequence[bool], positive: Sequence[bool]) -> dict[str, int]:
    out = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for f, p in zip(flagged, positive):
        out[("t" if bool(f) == bool(p) else "f") + ("p" if f else "n")] += 1
    return out


def fpr_upper_bound(false_positives: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a false-positive rate seen as ``false_positives``
    of ``n``: the rate p at which seeing that few has probability 1 - confidence (by bisection on
    the binomial CDF, so no SciPy). With 0 of n it is 1 - (1 - confidence)**(1/n), about 3/n."""
    if n <= 0 or not 0 <= false_positives <= n or not 0 < confidence < 1:
        raise ValueError("need 0 <= false_positives <= n, n > 0 and 0 < confidence < 1")
    if false_positives == n:
        return 1.0

    def cdf(p: float) -> float:
        return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(false_positives + 1))

    lo, hi = false_positives / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 1 - confidence else (lo, mid)
    return hi


def k_calibration(clean_max_scores: Sequence[float], ks: Sequence[float], confidence: float = 0.95) -> list[dict]:
    """Per threshold k: how many clean models score above it (a model's score is its largest
    class score over the budget ladder and over every scan seed, so the multiple testing over
    classes, rungs and seeds is inside the number) and the upper bound on the per-model
    false-positive rate that this many clean models support."""
    n = len(clean_max_scores)
    rows = []
    for k in ks:
        fp = sum(1 for s in clean_max_scores if s > k)
        rows.append({"k": k, "n": n, "false_positives": fp, "fpr": fp / n if n else math.nan,
                     "fpr_upper": fpr_upper_bound(fp, n, confidence) if n else math.nan, "confidence": confidence})
    return rows
