"""fine_tune's block schedule and trigger refresh, without training a model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ci_gate.data import LabeledImages
from ci_gate.repair import core
from ci_gate.repair.core import AdditiveTrigger, FineTuneSettings, fine_tune


@pytest.fixture
def recorded(monkeypatch):
    calls = []

    def fake_tune(classifier, data, settings, trigger=None, log=None):
        calls.append((settings.epochs, len(data), settings.seed))
        return classifier

    monkeypatch.setattr(core, "tune", fake_tune)
    return calls


def _data(n: int = 12) -> LabeledImages:
    return LabeledImages(torch.rand(n, 3, 4, 4), torch.arange(n) % 3, ["a", "b", "c"])


def test_single_block_is_the_papers_repair(recorded):
    trig = AdditiveTrigger(torch.full((3, 4, 4), 0.1))
    used = fine_tune(object(), _data(), [trig], FineTuneSettings(epochs=20, refresh_blocks=4))
    assert recorded == [(20, 24, 0)], "without a refresher the blocks setting is ignored"
    assert used == [trig]


def test_refresh_blocks_split_the_epochs_and_add_triggers(recorded):
    seen = []

    def refresh(classifier, block):
        seen.append(block)
        return [AdditiveTrigger(torch.full((3, 4, 4), 0.01 * (block + 1)), f"refreshed:{block + 1}")]

    trig = AdditiveTrigger(torch.full((3, 4, 4), 0.1))
    used = fine_tune(object(), _data(), [trig], FineTuneSettings(epochs=10, refresh_blocks=4, seed=5), refresh=refresh)
    assert [e for e, _, _ in recorded] == [2, 3, 2, 3] and sum(e for e, _, _ in recorded) == 10
    assert seen == [0, 1, 2], "no refresh after the last block"
    assert len(used) == 4 and used[0] is trig
    # the triggered copies stay one set's worth, shared by the triggers used so far
    assert [n for _, n, _ in recorded] == [24, 24, 24, 24]
    assert [s for _, _, s in recorded] == [5, 6, 7, 8]


def test_refresher_inverts_each_target_on_the_other_classes_for_at_least_the_scans_steps(monkeypatch):
    got = []

    def fake_invert(classifier, images, settings, classes=None, **kw):
        got.append({"n": len(images), "epochs": settings.epochs, "seed": settings.seed, "classes": classes})
        return [SimpleNamespace(index=classes[0], delta=torch.zeros(3, 4, 4), asr=0.0, final_loss=0.0)]

    monkeypatch.setattr(core, "invert", fake_invert)
    train = LabeledImages(torch.rand(150, 3, 4, 4), torch.arange(150) % 3, ["a", "b", "c"])
    refresh = core.trigger_refresher(train, [2], core.InversionSettings(batch_size=32, epochs=1, seed=7))
    out = refresh(object(), 1)
    assert [t.name for t in out] == ["refreshed:2:2"] and isinstance(out[0], AdditiveTrigger)
    assert got == [{"n": 100, "epochs": 8, "seed": 9, "classes": [2]}]  # 4 batches/epoch -> 8 epochs >= 32 steps
    # a second repair round follows the first target as well as the class the re-scan flagged
    got.clear()
    out = core.trigger_refresher(train, [2, 0], core.InversionSettings(batch_size=32, epochs=1, seed=7))(object(), 0)
    assert [t.name for t in out] == ["refreshed:1:2", "refreshed:1:0"]
    assert [g["classes"] for g in got] == [[2], [0]] and [g["n"] for g in got] == [100, 100]
