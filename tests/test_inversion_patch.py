"""ci_gate.inversion.patch: the mask-and-pattern family the scan adds on a modified image tower."""

import pytest
import torch
from torch import nn

from ci_gate.inversion.optimize import Rung
from ci_gate.inversion.patch import PatchSettings, apply_patch, invert_patch, project_area, shown_delta

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("area", [0.01, 0.05, 0.3])
def test_projection_keeps_the_mask_in_range_and_under_its_area(area):
    gen = torch.Generator().manual_seed(0)
    mask = torch.randn(4, 1, 16, 16, generator=gen) * 2
    out = project_area(mask, area)
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert (out.flatten(1).sum(1) <= area * 256 + 1e-3).all()
    # a projection: applying it again changes nothing, and a mask already inside is kept
    torch.testing.assert_close(project_area(out, area), out, atol=1e-5, rtol=0)
    inside = torch.zeros(1, 1, 16, 16)
    inside[..., :2, :2] = 0.5
    torch.testing.assert_close(project_area(inside, area), inside)


def test_a_full_mask_replaces_the_image_and_an_empty_one_keeps_it():
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    pattern = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(apply_patch(x, torch.zeros(1, 1, 8, 8), pattern), x)
    torch.testing.assert_close(apply_patch(x, torch.ones(1, 1, 8, 8), pattern), pattern.expand(3, -1, -1, -1))
    rung = Rung(epsilon=1.0, delta=shown_delta(torch.ones(1, 8, 8), pattern[0]), asr=0, final_loss=0, family="patch", mask=torch.ones(1, 8, 8), pattern=pattern[0])
    torch.testing.assert_close(rung.apply(x), pattern.expand(3, -1, -1, -1))


class _CornerBackdoor(nn.Module):
    """Class 1 when the bottom-right 2x2 corner is white (a BadNets-like backdoor), else class 0
    (slightly): what the patch family exists to find and the L-inf family cannot reach."""

    def __init__(self):
        super().__init__()
        self.mean = torch.zeros(3)
        self.logit_scale = torch.tensor(100.0)
        self.n_classes = 3

    def freeze(self):
        return self

    def forward(self, x):
        corner = x[..., -2:, -2:].mean(dim=(1, 2, 3))
        return torch.stack([torch.full_like(corner, 0.5), 8 * (corner - 0.75), torch.zeros_like(corner)], dim=1)


def test_the_patch_family_finds_a_corner_patch_within_its_area():
    images = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 0.5
    clf = _CornerBackdoor()
    out = invert_patch(clf, images, PatchSettings(areas=(0.02, 0.04), steps=30, batch_size=16, eval_images=32))
    by = {t.index: t for t in out}
    assert [r.family for r in by[1].rungs] == ["patch", "patch"] and [r.epsilon for r in by[1].rungs] == [0.02, 0.04]
    found = by[1].rungs[-1]
    assert found.asr == 1.0
    assert float(found.mask.sum()) <= 0.04 * 256 + 1e-3
    # the mask sits on the corner the backdoor reads
    assert float(found.mask[..., -2:, -2:].sum()) > 0.5 * float(found.mask.sum())
    assert by[2].rungs[-1].asr < 0.5  # nothing opens class 2
    # seeded: the same inputs give the same masks
    again = invert_patch(clf, images, PatchSettings(areas=(0.02, 0.04), steps=30, batch_size=16, eval_images=32))
    torch.testing.assert_close(again[1].rungs[-1].mask, found.mask)
