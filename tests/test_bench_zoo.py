"""The benchmark zoo's recipe and the detection benchmark's scan cache (no model is trained)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ci_gate.bench import detection
from ci_gate.bench.zoo import TASK_RECIPE, ZooModel, entry, profile_entries
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


def test_scan_policy_follows_the_task_budget():
    base, _ = load_policy("default", overrides=["device=cpu"])
    for ds, recipe in TASK_RECIPE.items():
        p = detection.scan_policy(base, ds)
        assert p.inversion.epsilon == pytest.approx(recipe["eps255"] / 255)
        assert p.detection == base.detection and p.pool == base.pool
    assert base.inversion.epsilon == pytest.approx(4 / 255), "the bundled default is not modified"


def _model(tmp_path: Path) -> ZooModel:
    return ZooModel(
        id="m", dataset="cifar10", learner="cocoop", attack=None, target=None, target_name=None, seed=0, shots=1,
        class_names=["a", "b"], clean_acc=0.5, asr=None, implanted=None, train_s=0.0, path=str(tmp_path / "m.safetensors"),
    )


def test_scan_cache_reuses_baselines_when_only_the_inversion_changed(tmp_path, monkeypatch):
    calls = {"ci": 0, "ref": 0, "baseline": 0}

    def fake_ci(model, policy, pool_path, out, published=None):
        calls["ci"] += 1
        return {"verdict": "clean", "target": None, "score": 0.0, "seconds": 0.0, "epsilon": policy.inversion.epsilon, "classes": []}

    def fake_ref(model, policy, images, pristine=None):
        calls["ref"] += 1
        return {"classes": [], "seconds": 0.0}

    def fake_baseline(fn, model, images, settings):
        calls["baseline"] += 1
        return {"verdict": "clean", "target": None, "score": 0.0, "seconds": 0.0, "classes": []}

    monkeypatch.setattr(detection, "_ci_scan", fake_ci)
    monkeypatch.setattr(detection, "_reference", fake_ref)
    monkeypatch.setattr(detection, "_baseline", fake_baseline)
    base, _ = load_policy("default", overrides=["device=cpu"])
    profile = detection.PROFILES["quick"]
    model = _model(tmp_path)
    import torch

    images = torch.zeros(1, 3, 4, 4)
    first = detection.scan_model(model, base, "pool", images, profile, tmp_path)
    assert calls == {"ci": 1, "ref": 1, "baseline": 2}
    again = detection.scan_model(model, base, "pool", images, profile, tmp_path)
    assert calls == {"ci": 1, "ref": 1, "baseline": 2} and again == first
    wider = detection.scan_policy(base, "tin20")
    assert detection.scan_model(model, wider, "pool", images, profile, tmp_path, cached_only=True) is None
    rescanned = detection.scan_model(model, wider, "pool", images, profile, tmp_path)
    assert calls == {"ci": 2, "ref": 2, "baseline": 2}, "baselines do not depend on CI's budget"
    assert rescanned.ci["epsilon"] == pytest.approx(wider.inversion.epsilon)
    saved = json.loads((tmp_path / "models" / "m.json").read_text())
    assert saved["key"]["inversion"]["epsilon"] == pytest.approx(wider.inversion.epsilon)
    detection.scan_model(model, base, "pool", images, detection.PROFILES["full"], tmp_path)
    assert calls["baseline"] == 4, "a new baseline budget reruns the baselines"
