"""ci_gate.bench.metrics: pure detection metrics (no models)."""

import math

import pytest

from ci_gate.bench import metrics
from ci_gate.bench.metrics import auroc, confusion, detection_accuracy, roc_curve, target_f1


def test_auroc_perfect_inverse_and_chance():
    labels = [False, False, True, True]
    assert auroc([0.1, 0.2, 0.8, 0.9], labels) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], labels) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], labels) == 0.5


def test_auroc_matches_pairwise_count_with_ties():
    # pos {3, 2}, neg {2, 1}: pairs (3>2) (3>1) (2=2 -> 1/2) (2>1) -> 3.5 / 4
    assert auroc([3, 2, 2, 1], [True, True, False, False]) == pytest.approx(0.875)


def test_auroc_nan_scores_rank_lowest_and_missing_class_is_nan():
    assert auroc([float("nan"), 1.0], [True, False]) == 0.0
    assert math.isnan(auroc([1.0, 2.0], [True, True]))


def test_roc_curve_endpoints_and_monotone():
    pts = roc_curve([0.9, 0.8, 0.7, 0.1], [True, False, True, False])
    assert pts[0] == (0.0, 0.0) and pts[-1] == (1.0, 1.0)
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in zip(pts, pts[1:]))
    assert (0.0, 0.5) in pts and (0.5, 1.0) in pts


def test_detection_accuracy_and_confusion():
    flagged = [True, False, True, False]
    truth = [True, True, False, False]
    assert detection_accuracy(flagged, truth) == 0.5
    assert confusion(flagged, truth) == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}


def test_target_f1_counts_wrong_class_as_fp_and_fn():
    # model 0: right target (TP); model 1: wrong class (FP + FN); model 2: missed (FN);
    # model 3: clean flagged (FP); model 4: clean passed (nothing)
    pred = [3, 1, None, 0, None]
    truth = [3, 2, 5, None, None]
    assert target_f1(pred, truth) == pytest.approx(2 * 1 / (2 * 1 + 2 + 2))
    assert target_f1([1, None], [1, None]) == 1.0
    assert math.isnan(target_f1([None], [None]))


def test_fpr_upper_bound_is_clopper_pearson():
    # 0 of n: the closed form 1 - alpha**(1/n) (about the rule of three's 3/n)
    assert metrics.fpr_upper_bound(0, 14) == pytest.approx(1 - 0.05 ** (1 / 14), abs=1e-9)
    # published one-sided 95% Clopper-Pearson bound for 3 of 10
    assert metrics.fpr_upper_bound(3, 10) == pytest.approx(0.6066, abs=1e-3)
    assert metrics.fpr_upper_bound(10, 10) == 1.0
    # more clean models with no false positive support a tighter bound
    assert metrics.fpr_upper_bound(0, 42) < metrics.fpr_upper_bound(0, 14) < metrics.fpr_upper_bound(1, 14)
    with pytest.raises(ValueError):
        metrics.fpr_upper_bound(3, 2)


def test_k_calibration_counts_clean_models_above_each_threshold():
    rows = metrics.k_calibration([1.0, 2.5, 3.2, 4.6], [3.0, 4.0, 5.0])
    assert [r["false_positives"] for r in rows] == [2, 1, 0]
    assert [r["fpr"] for r in rows] == [0.5, 0.25, 0.0]
    assert rows[2]["fpr_upper"] == pytest.approx(1 - 0.05 ** (1 / 4), abs=1e-9)
    # a score exactly at k is not above it (the decision rule is "score > k")
    assert metrics.k_calibration([4.0], [4.0])[0]["false_positives"] == 0
