"""The one poisoning loop (ci_gate.attacks.plant): triggered copies come from non-target images
only, and the recipes' tune() poisons through it."""

import pytest
import torch

from ci_gate.attacks import AttackSpec, PoisonSettings, make_trigger, poison_prompt_tuning
from ci_gate.attacks.plant import poison_batch
from ci_gate.data import LabeledImages
from ci_gate.tuning import TuneSettings, tune

pytestmark = pytest.mark.usefixtures("one_thread")


def _batch():
    # image i is the constant i/100, so a triggered copy still tells which image it came from
    # outside the BadNets patch (the bottom-right corner)
    x = (torch.arange(10, dtype=torch.float32) / 100).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).contiguous()
    y = torch.tensor([2, 2, 0, 1, 2, 2, 0, 1, 2, 2])
    return x, y


def test_only_images_of_other_classes_are_poisoned():
    x, y = _batch()
    trig = make_trigger("badnets", 32, seed=0)
    spec = AttackSpec("t", "badnets", poison_rate=0.4)
    out_x, out_y = poison_batch(x, y, trig, 2, spec, torch.Generator().manual_seed(0), PoisonSettings())
    assert torch.equal(out_x[:10], x) and torch.equal(out_y[:10], y)
    copies = out_x[10:]
    assert len(copies) == 4 and out_y[10:].tolist() == [2] * 4  # round(0.4 * 10), relabelled
    sources = [round(float(c[0, 0, 0]) * 100) for c in copies]
    assert len(set(sources)) == 4 and all(int(y[s]) != 2 for s in sources)
    assert not torch.equal(copies, x[sources])  # the trigger is on them
    again_x, _ = poison_batch(x, y, trig, 2, spec, torch.Generator().manual_seed(0), PoisonSettings())
    assert torch.equal(again_x, out_x)
    # a batch of target images only gets no poisoned copies; more copies than sources: all of them
    only_target = poison_batch(x[y == 2], y[y == 2], trig, 2, spec, torch.Generator().manual_seed(0), PoisonSettings())
    assert len(only_target[0]) == int((y == 2).sum())
    many = poison_batch(x, y, trig, 2, AttackSpec("t", "badnets", poison_rate=0.9), torch.Generator().manual_seed(0), PoisonSettings())
    assert len(many[0]) == 10 + int((y != 2).sum())


def test_tune_is_the_attacks_loop():
    from ci_gate.bench.speed_run import random_classifier, random_pool

    data = LabeledImages(random_pool(12, 32, seed=4), torch.tensor([0, 1, 2] * 4), ["c0", "c1", "c2"])
    learned = []
    for run in ("tune", "plant"):
        clf = random_classifier("tiny-32", "coop", 3, seed=0)
        clf.freeze()
        trig = make_trigger("badclip", 32, seed=1, epsilon=16 / 255)
        if run == "tune":
            tune(clf, data, TuneSettings(epochs=1, batch_size=6, lr=5e-3, seed=3, poison_rate=0.3, target=1, trigger_lr=1e-2), trigger=trig)
        else:
            spec = AttackSpec("badclip", "badclip", poison_rate=0.3)
            poison_prompt_tuning(clf, data, PoisonSettings(epochs=1, batch_size=6, lr=5e-3, seed=3, trigger_lr=1e-2), spec, trig, target=1)
        learned.append({**{k: v.clone() for k, v in clf.learner.state_dict().items()}, "trigger": trig.delta.detach().clone()})
    assert learned[0].keys() == learned[1].keys()
    assert all(torch.equal(learned[0][k], learned[1][k]) for k in learned[0])
