"""ci_gate.bench.metrics: pure detection metrics (no models)."""

import math

import pytest

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
