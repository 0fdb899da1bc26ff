"""ci_gate.scoring.robust: the one robust z-score, behind the gate's anomaly index and the
baselines' lower-tail index."""

import math

import pytest

from ci_gate.baselines.common import lower_tail_anomaly
from ci_gate.scoring import MAD_TO_SIGMA, anomaly_index, robust_z

VALUES = [0.1, 0.5, 0.2, 3.0, 0.3, 0.3]


def test_upper_tail_is_the_neural_cleanse_index():
    scores, med, mad = robust_z(VALUES, mad_floor=1e-6)
    assert med == 0.3 and mad == pytest.approx(0.15)
    assert scores == [(v - 0.3) / (MAD_TO_SIGMA * mad) for v in VALUES]
    assert max(range(len(VALUES)), key=scores.__getitem__) == 3 and scores[3] > 10


def test_lower_tail_mirrors_it_and_scores_the_median_zero_not_minus_zero():
    upper, med, mad = robust_z(VALUES, 1e-6)
    lower, med2, mad2 = robust_z(VALUES, 1e-6, tail="lower")
    assert (med2, mad2) == (med, mad)
    assert lower == [-u for u in upper]
    at_median = lower[VALUES.index(0.3)]
    assert at_median == 0.0 and math.copysign(1.0, at_median) == 1.0  # reports print "0.0"


def test_the_floor_bounds_the_scale():
    scores, _, mad = robust_z([1.0, 1.0, 1.0, 1.1], mad_floor=0.05)
    assert mad == 0.0
    assert scores[3] == pytest.approx(0.1 / (MAD_TO_SIGMA * 0.05))


def test_the_gate_and_the_baselines_use_it():
    assert anomaly_index(VALUES, 1e-3) == robust_z(VALUES, 1e-3)
    assert lower_tail_anomaly(VALUES) == robust_z(VALUES, 1e-12, tail="lower")[0]
    with pytest.raises(ValueError, match="at least two"):
        anomaly_index([1.0], 1e-3)
