"""The benchmark zoo's recipe and the detection benchmark's scan cache (no model is trained)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ci_gate.bench import detection
from ci_gate.bench.zoo import ASR_IMPLANTED, CLEAN_TRANSFER_MAX, TASK_RECIPE, ZooModel, entry, implanted, profile_entries
from ci_gate.policy import load_policy


def test_full_profile_meets_the_issue_sizes():
    entries = profile_entries("full")
    ids = [e.id for e in entries]
    assert len(ids) == len(set(ids)), "zoo ids must be unique (they key the cache)"
    assert len(entries) >= 40
    assert sum(e.attack is None for e in entries) >= 10
    assert {e.dataset for e in entries} == {"cifar10", "tin20"}
    # several seeds and target classes per attack
    badclip = [e for e in entries if e.attack == "badclip" and e.learner == "cocoop" and e.dataset == "cifar10"]
    assert len({e.target for e in badclip}) >= 4
    assert set(e.id for e in profile_entries("quick")) <= set(ids)
    # CoOp backdoors beside their clean twins of the same learner, on both datasets
    for ds in ("cifar10", "tin20"):
        csc = [e for e in entries if e.learner == "coop_csc" and e.dataset == ds]
        assert sum(e.attack is None for e in csc) >= 4 and len({e.target for e in csc if e.attack == "anchored_badclip"}) >= 4


def test_a_zoo_learner_builds_its_learner_kind_with_its_setup():
    from ci_gate.bench.zoo import LEARNER_KIND, LEARNER_SETUP
    from ci_gate.checkpoint.format import LearnerSpec
    from ci_gate.learners import tuned_kinds

    for name, kind in LEARNER_KIND.items():
        assert kind in tuned_kinds()
        spec = LearnerSpec(kind=kind, class_names=["cat", "dog"], **LEARNER_SETUP[name])
        assert spec.kind == kind
    assert LEARNER_SETUP["coop_csc"]["options"] == {"csc": True}


def test_learned_trigger_budget_is_part_of_the_id():
    e = entry("tin20", "cocoop", "badclip", 1)
    assert e.eps255 == TASK_RECIPE["tin20"]["eps255"]
    assert f"-eps{e.eps255}-" in e.id
    fixed = entry("cifar10", "cocoop", "blended", 0)
    assert fixed.eps255 is None and "-eps" not in fixed.id
    # bench repair --eps255: another budget is another cached model, fixed triggers ignore it
    low = entry("cifar10", "cocoop", "badclip", 0, eps255=8)
    assert low.eps255 == 8 and low.id != entry("cifar10", "cocoop", "badclip", 0).id
    assert entry("cifar10", "cocoop", "blended", 0, eps255=8) == fixed


def test_the_benchmark_scans_with_the_bundled_default_policy_unchanged():
    # no per-task, per-attack or per-budget setting: the benchmark measures the gate users run
    import inspect

    src = inspect.getsource(detection.run)
    assert 'load_policy("default")' in src
    assert not hasattr(detection, "scan_policy")
    default, _ = load_policy("default")
    assert len(default.inversion.epsilon) >= 3 and default.inversion.epsilon[-1] == pytest.approx(32 / 255)


def _model(tmp_path: Path, **kw) -> ZooModel:
    fields = dict(
        id="m", dataset="cifar10", learner="cocoop", attack=None, target=None, target_name=None, seed=0, shots=1,
        class_names=["a", "b"], clean_acc=0.5, asr=None, implanted=None, train_s=0.0, path=str(tmp_path / "m.safetensors"),
    )
    return ZooModel(**(fields | kw))


def test_a_trigger_that_fools_clean_models_is_not_counted_as_a_backdoor(tmp_path):
    assert implanted(0.95, 0.10)
    assert not implanted(0.95, CLEAN_TRANSFER_MAX)  # a universal adversarial perturbation of the backbone
    assert not implanted(ASR_IMPLANTED - 0.01, 0.0)  # too weak
    assert not implanted(0.95, None)  # not measured: never counted
    uni = _model(tmp_path, attack="badclip", target=1, asr=0.95, clean_asr=0.88, implanted=False)
    assert uni.backdoored and uni.universal
    weak = _model(tmp_path, attack="badclip", target=1, asr=0.60, clean_asr=0.55, implanted=False)
    assert not weak.universal
    ok = _model(tmp_path, attack="badclip", target=1, asr=0.95, clean_asr=0.05, implanted=True)
    assert not ok.universal


def test_full_profile_has_three_budgets_and_three_fixed_trigger_families_that_implant():
    entries = profile_entries("full")
    assert {e.eps255 for e in entries if e.attack == "badclip" and e.dataset == "cifar10"} >= {8, 12, 16}
    # encoder-level Blended, BadNets and SIG implant on the benchmark backbone (docs/benchmark.md)
    fixed = {e.attack for e in entries if e.learner == "zeroshot" and e.seed > 0}
    assert {"encoder", "encoder_badnets", "encoder_sig"} <= fixed


def test_budget_comes_from_the_zoo_id(tmp_path):
    e = entry("cifar10", "cocoop", "badclip", 0, eps255=8)
    assert detection.budget255(_model(tmp_path, id=e.id)) == 8
    assert detection.budget255(_model(tmp_path, id=entry("cifar10", "cocoop", None, 0).id)) is None


def test_summary_breakdown_and_flips_are_pure_functions():
    rows = [
        {"positive": False, "flagged": False, "target_pred": None, "target_true": None, "score": 1.0, "attack": "clean"},
        {"positive": False, "flagged": True, "target_pred": 2, "target_true": None, "score": 5.0, "attack": "clean"},
        {"positive": True, "flagged": True, "target_pred": 3, "target_true": 3, "score": 9.0, "attack": "badclip"},
        {"positive": True, "flagged": False, "target_pred": None, "target_true": 1, "score": 2.0, "attack": "badclip"},
    ]
    s = detection.summary(rows)
    assert s["n"] == 4 and s["accuracy"] == pytest.approx(0.5)
    assert s["confusion"] == {"tp": 1, "fp": 1, "tn": 1, "fn": 1}
    assert s["auroc"] == pytest.approx(0.75)
    b = detection.breakdown(rows, "attack")
    assert b["clean"]["correct"] == 1 and b["clean"]["max_clean_score"] == 5.0
    assert b["badclip"]["target_right"] == 1
    assert detection.flips({"a": {0: True, 1: True}, "b": {0: True, 1: False}, "c": {0: False}}) == ["b"]


def test_ci_scan_reuses_a_saved_result_only_for_the_same_policy_and_pool(tmp_path, monkeypatch):
    from result_factory import FactoryScan, saved_result

    import ci_gate.scan as scan
    from ci_gate.result import load_result

    calls = []

    def fake_scan(req, progress=None, shard=None):
        calls.append(req)
        path = saved_result(tmp_path / "made" / str(len(calls)), verdict="clean", with_images=False)
        res = json.loads(path.read_text())
        res["policy"]["sha256"] = req.policy.sha256()
        res["policy"]["settings"] = req.policy.model_dump(mode="json")
        res["pool"]["source"] = req.pool
        res["detection"]["reference"] = "published"
        res["detection"]["epsilons"] = [4 / 255]
        for c in res["classes"]:  # one rung with every input a statistic reads
            c["ref_clean_loss"] = 2.0
            c["rungs"] = [{"epsilon": 4 / 255, "asr": c["asr"], "final_loss": c["final_loss"], "ref_asr": 0.1, "ref_final_loss": 1.0, "ref_cross_loss": 1.0, "statistic": 0.0, "anomaly": 0.0}]
        path.write_text(json.dumps(res))
        return FactoryScan(load_result(path), [])

    monkeypatch.setattr(scan, "scan", fake_scan)
    policy, _ = load_policy("default")
    model = _model(tmp_path)
    published = tmp_path / "pub.safetensors"
    detection.ci_scan(model, policy, "pool", tmp_path, "published", 0, published)
    assert len(calls) == 1 and calls[0].reference_weights == published
    detection.ci_scan(model, policy, "pool", tmp_path, "published", 0, published)
    assert len(calls) == 1
    # another threshold is a re-decision of the saved scan, not a new scan
    stricter = policy.model_copy(update={"detection": policy.detection.model_copy(update={"k": 1.0})})
    assert detection.scan_key(stricter) == detection.scan_key(policy)
    detection.ci_scan(model, stricter, "pool", tmp_path, "published", 0, published)
    assert len(calls) == 1
    detection.ci_scan(model, policy, "other-pool", tmp_path, "published", 0, published)
    assert len(calls) == 2
    detection.ci_scan(model, policy, "pool", tmp_path, "none", 1, published)
    assert len(calls) == 3 and calls[-1].reference_weights is None and calls[-1].policy.seed == 1
    assert calls[-1].policy.detection == policy.detection and calls[-1].policy.inversion == policy.inversion
    # a scan saved under an older schema is scanned again: 1.5 added each trigger's loss on the
    # reference (ref_cross_loss), an input the older files lack
    saved = tmp_path / "scans" / "m" / "published-s0" / "result.json"
    fresh = json.loads(saved.read_text())
    assert fresh["pool"]["source"] == "other-pool"  # the last published seed-0 scan
    for version in ("1.2", "1.3", "1.4"):
        n = len(calls)
        saved.write_text(json.dumps(dict(fresh, schema_version=version)))
        detection.ci_scan(model, policy, "other-pool", tmp_path, "published", 0, published)
        assert len(calls) == n + 1
