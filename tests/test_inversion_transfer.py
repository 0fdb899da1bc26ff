"""ci_gate.inversion.transfer: a class's triggers measured on another classifier (the input of
the ref_specificity statistic), and that statistic end to end on a toy backdoor."""

import pytest
import torch
from torch import nn

from ci_gate.inversion import InversionSettings, eval_subset, invert, transfer
from ci_gate.inversion.patch import PatchSettings, invert_patch
from ci_gate.scoring import STATISTICS, ClassStats, class_statistic

pytestmark = pytest.mark.usefixtures("one_thread")


class _Linear(nn.Module):
    """Logits linear in the image, with an optional planted direction for class 1."""

    def __init__(self, seed: int, backdoor: torch.Tensor | None = None):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.randn(4, 3 * 8 * 8, generator=gen) * 0.05
        self.backdoor = backdoor
        self.mean = torch.zeros(3)
        self.logit_scale = torch.tensor(100.0)
        self.n_classes = 4

    def freeze(self):
        return self

    def forward(self, x):
        logits = x.flatten(1) @ self.w.T
        if self.backdoor is not None:
            logits[:, 1] = logits[:, 1] + 40 * (x.flatten(1) @ self.backdoor)
        return logits


def _images(n=48):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 0.8 + 0.1


def test_triggers_measured_on_their_own_classifier_repeat_the_inversions_numbers():
    clf, images = _Linear(0), _images()
    settings = InversionSettings(ladder=(2 / 255, 8 / 255), batch_size=16, eval_images=32)
    found = invert(clf, images, settings, class_batch=3)
    again = transfer(clf, eval_subset(images, settings), found, class_batch=3)
    for t in found:
        for rung, (asr, loss) in zip(t.rungs, again[t.index]):
            assert asr == pytest.approx(rung.asr) and loss == pytest.approx(rung.final_loss, rel=1e-5, abs=1e-5)
    patch = PatchSettings(areas=(0.05,), steps=3, batch_size=16, eval_images=32)
    found = invert_patch(clf, images, patch)
    held_out = eval_subset(images, InversionSettings(eval_images=32, seed=patch.seed))
    again = transfer(clf, held_out, found, class_batch=2)
    for t in found:
        assert again[t.index][0][1] == pytest.approx(t.rungs[0].final_loss, rel=1e-5, abs=1e-5)


def test_a_planted_direction_makes_its_class_specific_to_the_delivered_model():
    # the delivered model = the reference plus a direction only class 1 answers: its trigger for
    # class 1 works on it and much less on the reference; other classes' triggers transfer
    images = _images()
    direction = torch.randn(3 * 8 * 8, generator=torch.Generator().manual_seed(9))
    direction = direction / direction.norm()
    reference, delivered = _Linear(0), _Linear(0, backdoor=direction)
    settings = InversionSettings(ladder=(4 / 255, 16 / 255), batch_size=16, eval_images=32)
    mine, theirs = invert(delivered, images, settings, class_batch=4), invert(reference, images, settings, class_batch=4)
    cross = transfer(reference, eval_subset(images, settings), mine, class_batch=4)
    spec = []
    for t, r in zip(mine, theirs):
        top = t.rungs[-1]
        stats = ClassStats(asr=top.asr, base_rate=0.0, final_loss=top.final_loss, ref_asr=r.rungs[-1].asr, ref_final_loss=r.rungs[-1].final_loss, ref_clean_loss=0.0, ref_cross_loss=cross[t.index][-1][1])
        spec.append(class_statistic("ref_specificity", stats))
    assert max(range(4), key=lambda c: spec[c]) == 1
    assert spec[1] > 5 * max(abs(v) for c, v in enumerate(spec) if c != 1)


def test_a_statistic_that_needs_the_transfer_refuses_stats_without_it():
    old = ClassStats(asr=0.5, base_rate=0.1, final_loss=1.0, clean_loss=2.0, ref_asr=0.2, ref_final_loss=2.0, ref_clean_loss=2.5)
    assert STATISTICS["ref_specificity"].needs_transfer and STATISTICS["ref_specificity"].needs_reference
    with pytest.raises(ValueError, match="ref_cross_loss"):
        class_statistic("ref_specificity", old)
    assert class_statistic("ref_loss_gain", old) == pytest.approx(1.0)
