"""ci_gate.scoring: the clean-reference statistics (pure)."""

import pytest

from ci_gate.scoring import ClassStats, class_statistic, decide


def _stats(final, ref_final, asr=0.2, ref_asr=0.1, clean=1.0, ref_clean=1.0):
    return ClassStats(asr=asr, base_rate=0.1, final_loss=final, clean_loss=clean, ref_asr=ref_asr, ref_final_loss=ref_final, ref_clean_loss=ref_clean)


def test_reference_statistics_values():
    s = _stats(final=-2.0, ref_final=1.0, asr=0.9, ref_asr=0.3, clean=3.0, ref_clean=2.0)
    assert class_statistic("ref_loss_gain", s) == pytest.approx(3.0)
    assert class_statistic("ref_asr_gain", s) == pytest.approx(0.6)
    assert class_statistic("ref_drop_gain", s) == pytest.approx((3.0 + 2.0) - (2.0 - 1.0))


def test_reference_statistic_needs_reference():
    with pytest.raises(ValueError, match="clean-reference"):
        class_statistic("ref_loss_gain", ClassStats(asr=0.1, base_rate=0.1, final_loss=0.0))


def test_reference_cancels_classes_the_backbone_finds_easy():
    # class 0 is easy for the backbone itself (low loss in both): not anomalous under the
    # reference statistic, while class 2 became easy only in the delivered model
    stats = [_stats(-1.0, -0.9), _stats(1.0, 1.1), _stats(-1.0, 1.0, asr=0.95), _stats(1.2, 1.2), _stats(0.9, 1.0)]
    plain = decide(stats, "neg_loss", 2.0, 0.5, 0.05)
    ref = decide(stats, "ref_loss_gain", 2.0, 0.5, 0.05)
    assert plain.anomaly[0] == pytest.approx(plain.anomaly[2])
    assert ref.target == 2 and ref.verdict == "backdoor"
    assert ref.anomaly[0] < 2.0


def test_policy_accepts_reference_statistics():
    from ci_gate.policy import load_policy
    from ci_gate.scoring import REFERENCE_STATISTICS

    for stat in REFERENCE_STATISTICS:
        policy, _ = load_policy(None, overrides=[f"detection.statistic={stat}"])
        assert policy.detection.statistic == stat
