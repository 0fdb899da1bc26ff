"""The blind decision over a budget ladder (ci_gate.scoring.decide_ladder), and re-deciding a
saved Result (ci_gate.rescore). Pure functions, no model."""

from __future__ import annotations

import pytest

from ci_gate.scoring import NAMING_FLOOR, STATISTICS, ClassStats, asr_gain, decide, decide_ladder, named_target
from ci_gate.scoring.decision import ladder_score


def _class(loss, ref_loss, asr=0.2):
    # the delivered trigger does on the reference what the reference's own does (ref_specificity = ref_loss_gain)
    return ClassStats(asr=asr, base_rate=0.1, final_loss=loss, clean_loss=2.0, ref_asr=0.1, ref_final_loss=ref_loss, ref_clean_loss=2.0, ref_cross_loss=ref_loss)


def _rung(target_gain=0.0, target_asr=0.2, n=8, spread=0.1):
    # class 0 is the target; the others get small, deterministic gains around zero
    out = [_class(1.0 - target_gain, 1.0, asr=target_asr)]
    out += [_class(1.0 - spread * ((i % 3) - 1), 1.0) for i in range(1, n)]
    return out


@pytest.mark.parametrize("statistic", list(STATISTICS))
def test_one_rung_ladder_equals_the_single_budget_rule(statistic):
    stats = _rung(target_gain=2.0, target_asr=0.9)
    single = decide(stats, statistic, 3.0, 0.5, 0.05)
    ladder = decide_ladder([stats], statistic, 3.0, 0.5, 0.05, extreme=1e9)
    assert ladder.score == pytest.approx(single.anomaly)
    assert ladder.status == single.status and ladder.verdict == single.verdict and ladder.target == single.target


def test_a_class_is_scored_at_the_rung_where_it_stands_out_most():
    # the target only separates at the third budget (the attacker's), not at the small ones
    rungs = [_rung(0.0), _rung(0.05), _rung(3.0, target_asr=0.8), _rung(0.5, target_asr=1.0)]
    d = decide_ladder(rungs, "ref_loss_gain", 4.0, 0.5, 0.05, extreme=8.0)
    assert d.rung[0] == 2
    assert d.score[0] == pytest.approx(sum(d.anomaly[r][0] for r in range(4)) / 4), "the mean of its indices"
    assert d.verdict == "backdoor" and d.target == 0


def test_standing_out_at_every_budget_beats_standing_out_at_the_top_ones():
    # the demo's clean "black" and its planted "purple" (indices over 2-32/255 at MAD floor 2):
    # the two largest indices barely tell them apart, the whole ladder does
    rising, planted = [0.31, 0.52, 1.0, 1.69, 3.4], [2.13, 2.37, 2.71, 2.99, 2.72]
    assert ladder_score(planted, ["linf"] * 5) / ladder_score(rising, ["linf"] * 5) > 1.8
    top2 = lambda z: sum(sorted(z)[-2:]) / 2  # noqa: E731
    assert top2(planted) / top2(rising) < 1.2


def test_each_family_is_averaged_apart():
    # a patch backdoor no L-inf budget reaches: five quiet L-inf rungs must not dilute its patch rungs
    families = ["linf"] * 5 + ["patch"] * 3
    assert ladder_score([0.1] * 5 + [6.0, 7.0, 8.0], families) == pytest.approx(7.0)
    assert ladder_score([4.0] * 5 + [0.0] * 3, families) == pytest.approx(4.0)
    with pytest.raises(ValueError):
        ladder_score([1.0, 2.0], ["linf"])
    rungs = [_rung(0.0)] * 2 + [_rung(3.0, target_asr=0.9)] * 2
    d = decide_ladder(rungs, "ref_loss_gain", 4.0, 0.5, 0.05, 8.0, families=["linf", "linf", "patch", "patch"])
    assert d.score[0] == pytest.approx(d.anomaly[2][0]) and d.target == 0


def test_a_spike_at_a_single_rung_is_not_an_outlier():
    # what a clean zoo model did at 0.05 MAD floor: 5.4 at 8/255, unremarkable elsewhere
    rungs = [_rung(0.0), _rung(0.05), _rung(0.75, target_asr=0.6), _rung(0.0), _rung(0.0)]
    d = decide_ladder(rungs, "ref_loss_gain", 4.0, 0.5, 0.05, extreme=8.0)
    assert d.anomaly[2][0] > 4.0 and d.score[0] < 4.0 and d.verdict == "clean"


def test_an_extreme_outlier_cannot_pass_because_of_the_asr_floor():
    # anomaly far beyond k, but the trigger moves only a third of the pool at every budget
    rungs = [_rung(5.0, target_asr=0.33), _rung(6.0, target_asr=0.34)]
    strong = decide_ladder(rungs, "ref_loss_gain", 4.0, 0.5, 0.05, extreme=8.0)
    assert strong.score[0] > 8.0 and strong.status[0] == "backdoor"
    mild = decide_ladder([_rung(0.7, target_asr=0.33)], "ref_loss_gain", 4.0, 0.5, 0.05, extreme=8.0)
    assert 4.0 < mild.score[0] < 8.0 and mild.status[0] == "suspicious" and mild.verdict == "clean"


def _with_ref_asr(rung, ref_asr):
    from dataclasses import replace

    return [replace(rung[0], ref_asr=ref_asr)] + rung[1:]


def test_an_outlier_whose_trigger_the_reference_matches_is_only_suspicious():
    # the clean zoo model that flipped (stop 21): its "frog" stands out at 8/255, and its trigger
    # reaches 67% of the pool where the published model's reaches 58%; a backdoor beats it by far
    rungs = [_with_ref_asr(_rung(0.8, target_asr=0.67), 0.58), _with_ref_asr(_rung(0.7, target_asr=0.96), 0.97)]
    assert asr_gain([r[0] for r in rungs]) == pytest.approx(0.09)
    easy = decide_ladder(rungs, "ref_loss_gain", 4.0, 0.5, 0.05, 8.0, min_asr_gain=0.2)
    assert 4.0 < easy.score[0] < 8.0 and easy.status[0] == "suspicious" and easy.verdict == "clean"
    assert decide_ladder(rungs, "ref_loss_gain", 4.0, 0.5, 0.05, 8.0).status[0] == "backdoor", "the absolute floor alone passes it"
    planted = [_with_ref_asr(_rung(0.8, target_asr=0.9), 0.58), _with_ref_asr(_rung(0.7, target_asr=0.99), 0.97)]
    assert decide_ladder(planted, "ref_loss_gain", 4.0, 0.5, 0.05, 8.0, min_asr_gain=0.2).target == 0
    # beyond extreme the gain is not asked for either
    far = [_with_ref_asr(_rung(5.0, target_asr=0.6), 0.58), _with_ref_asr(_rung(6.0, target_asr=0.97), 0.97)]
    assert decide_ladder(far, "ref_loss_gain", 4.0, 0.5, 0.05, 8.0, min_asr_gain=0.2).status[0] == "backdoor"


def test_without_a_reference_the_gain_condition_is_met():
    no_ref = [ClassStats(asr=0.9, base_rate=0.1, final_loss=0.0, clean_loss=2.0)]
    assert asr_gain(no_ref) == float("inf")


@pytest.mark.parametrize("modified", [False, True])
def test_a_modified_tower_names_the_class_ranked_first(modified):
    # below k: no class is flagged, so only a tower that fails the gate anyway gets a name
    rungs = [_rung(0.5, target_asr=0.9), _rung(0.55, target_asr=0.95)]
    d = decide_ladder(rungs, "ref_loss_gain", 4.0, 0.5, 0.05, 8.0)
    assert NAMING_FLOOR < d.score[0] < 4.0 and d.target is None
    assert named_target(d, modified) == (0 if modified else None)
    flat = decide_ladder([_rung(0.0)], "ref_loss_gain", 4.0, 0.5, 0.05, 8.0)
    assert named_target(flat, True) is None, "nothing stands out: no name"
    flagged = decide_ladder([_rung(3.0, target_asr=0.9)], "ref_loss_gain", 4.0, 0.5, 0.05, 8.0)
    assert named_target(flagged, modified) == flagged.target == 0


def test_suspicious_means_outlier():
    # a class whose trigger reaches min_asr but is no outlier is ok, not suspicious
    rungs = [[_class(1.0, 1.0, asr=0.9)] + _rung()[1:]]
    d = decide_ladder(rungs, "ref_loss_gain", 4.0, 0.5, 0.05, extreme=8.0)
    assert d.status[0] == "ok"


def test_ladder_input_errors():
    with pytest.raises(ValueError):
        decide_ladder([], "asr", 4.0, 0.5, 0.05, 8.0)
    with pytest.raises(ValueError):
        decide_ladder([_rung(), _rung(n=5)], "asr", 4.0, 0.5, 0.05, 8.0)


def _saved_ladder_result(tmp_path):
    from result_factory import make_ladder_result

    from ci_gate.result import PolicyInfo

    # the policy recorded as a scan records it (rescore refuses settings its sha256 does not match)
    saved, policy = make_ladder_result(tmp_path)
    info = PolicyInfo(name=policy.name, path=None, sha256=policy.sha256(), settings=policy.model_dump(mode="json"))
    return saved.model_copy(update={"policy": info}), policy


def _without_reference(result):
    """What a scan without a trusted reference writes: no ref_* values."""
    classes = [
        c.model_copy(update={"ref_clean_loss": None, "rungs": [r.model_copy(update={"ref_asr": None, "ref_final_loss": None, "ref_cross_loss": None}) for r in c.rungs]})
        for c in result.classes
    ]
    return result.model_copy(update={"classes": classes, "detection": result.detection.model_copy(update={"reference": "none"})})


def test_rescoring_a_saved_result_is_the_scans_decision_and_follows_new_settings(tmp_path):
    from ci_gate.policy import load_policy
    from ci_gate.rescore import rescore
    from ci_gate.result import Result

    saved, policy = _saved_ladder_result(tmp_path)
    det = policy.detection
    assert saved.verdict == "backdoor" and saved.target_index == 2
    again = rescore(Result.model_validate_json(saved.to_json()), policy)
    assert again.verdict == saved.verdict and again.target_index == 2
    assert [c.anomaly for c in again.classes] == pytest.approx([c.anomaly for c in saved.classes])
    assert [c.status for c in again.classes] == [c.status for c in saved.classes]
    lenient, _ = load_policy("default", ["detection.k=1000", "detection.extreme=2000"])
    assert rescore(saved, lenient).verdict == "clean"
    # without a trusted reference the reference-free statistic decides, as in the scan
    free = rescore(_without_reference(saved), policy).detection
    assert (free.statistic, free.k) == (det.absolute_statistic, det.absolute_k)


def test_the_reference_free_statistic_has_its_own_threshold():
    from ci_gate.policy import load_policy

    policy, _ = load_policy("default", ["detection.absolute_k=7"])
    det = policy.detection
    assert det.rule(trusted_reference=True) == (det.statistic, det.k)
    assert det.rule(trusted_reference=False) == (det.absolute_statistic, 7.0)
    # a reference-free main statistic keeps k whatever the reference
    free, _ = load_policy("default", ["detection.statistic=loss_drop"])
    assert free.detection.rule(trusted_reference=False) == ("loss_drop", free.detection.k)


def test_report_rescore_cli_writes_a_new_folder_and_leaves_the_saved_one(tmp_path, capsys):
    import hashlib

    from ci_gate.cli import main

    saved, _ = _saved_ladder_result(tmp_path / "scan")
    path = saved.save(tmp_path / "scan" / "result.json")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(SystemExit) as exc:
        main(["report", str(path), "--rescore", "--out", str(tmp_path / "same")])
    assert exc.value.code == 1 and "backdoor" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["report", str(path), "--rescore", "--set", "detection.k=1000", "--set", "detection.extreme=2000", "--out", str(tmp_path / "lenient")])
    assert exc.value.code == 0
    import json

    redecided = json.loads((tmp_path / "lenient" / "result.json").read_text())
    assert redecided["verdict"] == "clean" and redecided["detection"]["k"] == 1000
    assert (tmp_path / "lenient" / "summary.md").is_file()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    for bad in (["--rescore"], ["--set", "detection.k=3"], ["--rescore", "--set", "detection.k=-1", "--out", str(tmp_path / "x")]):
        with pytest.raises(SystemExit) as exc:
            main(["report", str(path), *bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and ("--out" in err[0] or "--set" in err[0])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda d: d["classes"][2]["rungs"][2].update(final_loss="NaN"), "non-finite"),
        (lambda d: d["classes"][2]["rungs"][3].update(final_loss="Infinity"), "non-finite"),
        (lambda d: d["classes"][2].update(ref_clean_loss=None), "clean reference"),
        (lambda d: d["classes"][1].update(index=0), "indices"),
        (lambda d: d["classes"][0]["rungs"][0].update(epsilon=0.9), "rungs do not match"),
        (lambda d: d.update(classes=d["classes"][:1], target_index=None, target_class=None), "two or more classes"),
        (lambda d: d.update(target_index=99), "names no class"),
        (lambda d: d["classes"][0].update(name="not-the-same"), "class_names"),
    ],
)
def test_rescore_refuses_an_inconsistent_or_non_finite_result(tmp_path, capsys, edit, problem):
    import json

    from ci_gate.cli import main

    saved, _ = _saved_ladder_result(tmp_path / "scan")
    path = saved.save(tmp_path / "scan" / "result.json")
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exc:
        main(["report", str(path), "--rescore", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and problem in err[0] and str(path) in err[0]
    assert not (tmp_path / "out").exists()


def test_rescore_changes_only_what_needs_no_scan_and_copies_only_named_files(tmp_path, capsys):
    from ci_gate.cli import main

    saved, _ = _saved_ladder_result(tmp_path / "scan")
    path = saved.save(tmp_path / "scan" / "result.json")
    (tmp_path / "scan" / "private.env").write_text("SECRET=1")
    for bad in (["--set", "inversion.epsilon=[1/255]"], ["--set", "seed=7"], ["--out", str(tmp_path / "scan" / "sub")]):
        args = ["report", str(path), "--rescore", "--out", str(tmp_path / "o"), *bad]
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["report", str(path), "--rescore", "--out", str(tmp_path / "ok")])
    assert (tmp_path / "ok" / "result.json").is_file() and not (tmp_path / "ok" / "private.env").exists()
