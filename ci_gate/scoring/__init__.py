"""Scoring: per-class inversion statistics -> anomaly index -> verdict. Pure functions only.

``statistics``: the registry of per-class statistics (where to change the anomaly score);
``robust``: the robust z-score (shared with the inversion baselines);
``decision``: the anomaly index across classes and the verdict rule.
"""

from ci_gate.scoring.decision import NAMING_FLOOR, Decision, LadderDecision, anomaly_index, asr_gain, decide, decide_ladder, named_target
from ci_gate.scoring.robust import MAD_TO_SIGMA, robust_z
from ci_gate.scoring.statistics import REFERENCE_STATISTICS, STATISTICS, ClassStats, Statistic, class_statistic

__all__ = ["MAD_TO_SIGMA", "NAMING_FLOOR", "asr_gain", "named_target", "REFERENCE_STATISTICS", "STATISTICS", "ClassStats", "Decision", "LadderDecision", "Statistic", "anomaly_index", "class_statistic", "decide", "decide_ladder", "robust_z"]
