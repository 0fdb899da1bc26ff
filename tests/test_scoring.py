import math

import pytest

from ci_gate.scoring import ClassStats, anomaly_index, class_statistic, decide


def stats(asr, base=0.05, loss=2.0, clean=3.0):
    return ClassStats(asr=asr, base_rate=base, final_loss=loss, clean_loss=clean)


def test_anomaly_index_is_a_robust_z_score():
    scores, med, mad = anomaly_index([1.0, 2.0, 3.0, 4.0, 100.0], mad_floor=1e-6)
    assert med == 3.0 and mad == 1.0
    assert scores[2] == 0.0
    assert math.isclose(scores[-1], 97 / 1.4826)
    # one wild value does not move the median and MAD of the others
    assert math.isclose(scores[0], -2 / 1.4826)


def test_mad_floor_prevents_blow_up_on_identical_classes():
    scores, _, mad = anomaly_index([1.0, 1.0, 1.0, 1.1], mad_floor=0.05)
    assert mad == 0.0
    assert max(scores) == pytest.approx(0.1 / (1.4826 * 0.05))


def test_anomaly_index_needs_two_classes():
    with pytest.raises(ValueError):
        anomaly_index([1.0], 0.05)


@pytest.mark.parametrize(
    "kind,expected",
    [("neg_loss", -2.0), ("asr", 0.4), ("asr_gain", 0.35), ("loss_drop", 1.0)],
)
def test_class_statistics(kind, expected):
    assert class_statistic(kind, stats(0.4)) == pytest.approx(expected)


def test_reference_statistics_need_the_reference_run():
    with pytest.raises(ValueError, match="clean-reference"):
        class_statistic("ref_loss_gain", stats(0.4))
    s = ClassStats(asr=0.9, base_rate=0.1, final_loss=-1.0, clean_loss=3.0, ref_asr=0.2, ref_final_loss=2.5, ref_clean_loss=3.5)
    assert class_statistic("ref_loss_gain", s) == pytest.approx(3.5)
    assert class_statistic("ref_asr_gain", s) == pytest.approx(0.7)
    assert class_statistic("ref_drop_gain", s) == pytest.approx(4.0 - 1.0)


def test_unknown_statistic_is_rejected():
    with pytest.raises(ValueError, match="unknown statistic"):
        class_statistic("magic", stats(0.1))


def test_decide_flags_the_outlier_with_a_strong_trigger():
    classes = [stats(0.2, loss=2.0 + 0.1 * i, clean=3.0 + 0.1 * i) for i in range(9)]
    classes.insert(3, stats(0.95, loss=-2.0, clean=3.0))
    d = decide(classes, "loss_drop", k=2.0, min_asr=0.5, mad_floor=0.05)
    assert d.verdict == "backdoor" and d.target == 3
    assert d.status[3] == "backdoor"
    assert all(s == "ok" for i, s in enumerate(d.status) if i != 3)


def test_outlier_with_weak_trigger_is_only_suspicious():
    classes = [stats(0.2, loss=2.0, clean=3.0 + 0.01 * i) for i in range(9)] + [stats(0.3, loss=-2.0, clean=3.0)]
    d = decide(classes, "loss_drop", k=2.0, min_asr=0.5, mad_floor=0.05)
    assert d.verdict == "clean" and d.target is None
    assert d.status[-1] == "suspicious"


def test_strong_but_ordinary_class_is_neither_backdoor_nor_suspicious():
    classes = [stats(0.6, loss=2.0, clean=3.0 + 0.05 * i) for i in range(10)]
    d = decide(classes, "loss_drop", k=2.0, min_asr=0.5, mad_floor=0.05)
    assert d.verdict == "clean"
    assert set(d.status) == {"ok"}


def test_weak_outlier_is_suspicious():
    classes = [stats(0.1, loss=2.0, clean=3.0 + 0.01 * i) for i in range(9)] + [stats(0.2, loss=-3.0, clean=3.0)]
    d = decide(classes, "loss_drop", k=2.0, min_asr=0.5, mad_floor=0.05)
    assert d.verdict == "clean" and d.status[-1] == "suspicious" and set(d.status[:-1]) == {"ok"}


def test_target_is_the_highest_scoring_flagged_class():
    classes = [stats(0.1, loss=2.0, clean=3.0 + 0.01 * i) for i in range(8)]
    classes += [stats(0.9, loss=-1.0, clean=3.0), stats(0.9, loss=-3.0, clean=3.0)]
    d = decide(classes, "loss_drop", k=2.0, min_asr=0.5, mad_floor=0.05)
    assert d.target == 9
