"""ci_gate.attacks: triggers stay in [0, 1], invisible ones within budget, seeded; planting runs."""

import copy

import pytest
import torch

from ci_gate.attacks import ATTACKS, PoisonSettings, build_trigger, make_trigger, poison_encoder, poison_prompt_tuning, trigger_names
from ci_gate.attacks.triggers import LearnedTrigger, SparseTrigger, WaNetTrigger

NAMES = [*trigger_names(), "adaptive_badclip"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _images(n=6, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", NAMES)
def test_trigger_keeps_pixel_range(name):
    x = _images()
    x[0] = 0.0
    x[1] = 1.0
    trig = make_trigger(name, 32, seed=3)
    with torch.no_grad():
        y = trig(x)
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.equal(y, x)


@pytest.mark.parametrize("name", NAMES)
def test_trigger_deterministic_by_seed(name):
    x = _images()
    with torch.no_grad():
        a, b, c = make_trigger(name, 32, seed=5)(x), make_trigger(name, 32, seed=5)(x), make_trigger(name, 32, seed=6)(x)
    assert torch.equal(a, b)
    # SIG's sinusoid is the same for every seed (Barni et al.: no random part)
    assert torch.equal(a, c) if name == "sig" else not torch.equal(a, c)


def test_learned_trigger_budget_after_projection():
    trig = LearnedTrigger(32, epsilon=4 / 255, seed=0)
    with torch.no_grad():
        trig.delta.mul_(10)
    trig.project()
    x = _images()
    with torch.no_grad():
        assert float((trig(x) - x).abs().max()) <= 4 / 255 + 1e-6


def test_sparse_trigger_l0_and_linf_budget():
    trig = SparseTrigger(32, fraction=0.05, epsilon=16 / 255, seed=1)
    with torch.no_grad():
        trig.delta.add_(torch.randn_like(trig.delta))  # an optimiser step may go anywhere
    trig.project()
    x = torch.full((2, 3, 32, 32), 0.5)
    with torch.no_grad():
        diff = (trig(x) - x).abs()
    changed = (diff.amax(1) > 0).sum(dim=(1, 2))
    assert int(changed.max()) <= round(0.05 * 32 * 32)
    assert float(diff.max()) <= 16 / 255 + 1e-6


def test_blended_and_wanet_are_bounded_changes():
    x = _images()
    blend = make_trigger("blended", 32, seed=0, alpha=0.1)
    assert float((blend(x) - x).abs().max()) <= 0.1 + 1e-6
    warp = WaNetTrigger(32, seed=0)
    flat = torch.full((1, 3, 32, 32), 0.3)
    assert torch.allclose(warp(flat), flat, atol=1e-6)  # a warp moves pixels, never changes colours
    gen = torch.Generator().manual_seed(0)
    noisy = warp.noise_grid(x, gen)
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1


def test_every_attack_builds_its_trigger():
    for name, spec in ATTACKS.items():
        trig = build_trigger(spec, 32, seed=0)
        assert trig.name in {"badclip", "blended", "wanet", "siba", "badnets", "sig"}, name


def _tiny_classifier(kind):
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    from ci_gate.checkpoint.format import LearnerSpec, Preprocessing
    from ci_gate.model.backbone import Backbone
    from ci_gate.model.factory import build_classifier, new_learner
    from ci_gate.model.small import small_config

    torch.manual_seed(0)
    clip = CLIP(**copy.deepcopy(small_config("tiny-32"))).eval()
    bb = Backbone(clip=clip, tokenizer=SimpleTokenizer(), quick_gelu=False, sha256=None, reference=None, preprocessing=Preprocessing(image_size=32))
    names = ["cat", "dog", "ship"]
    spec = LearnerSpec(kind=kind, class_names=names, n_ctx=0 if kind == "zeroshot" else 4, ctx_init=None if kind == "zeroshot" else "a photo of a")
    learner = new_learner(bb, spec, seed=0)
    return build_classifier(bb, kind, learner, names, spec.n_ctx, 32, (0.5,) * 3, (0.25,) * 3)


@pytest.mark.parametrize("attack,kind", [("adaptive_badclip", "cocoop"), ("wanet", "coop"), ("encoder", "zeroshot")])
def test_planting_runs_and_changes_the_model(attack, kind):
    from ci_gate.data import LabeledImages

    clf = _tiny_classifier(kind)
    data = LabeledImages(_images(12), torch.tensor([0, 1, 2] * 4), ["cat", "dog", "ship"])
    spec = ATTACKS[attack]
    trig = build_trigger(spec, 32, seed=0)
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    settings = PoisonSettings(epochs=1, batch_size=6, lr=1e-3)
    if kind == "zeroshot":
        poison_encoder(clf, data, settings, spec, trig, target=0)
        changed = [k for k, v in clf.state_dict().items() if k.startswith("visual.") and not torch.equal(v, before[k])]
    else:
        poison_prompt_tuning(clf, data, settings, spec, trig, target=0)
        changed = [k for k, v in clf.state_dict().items() if k.startswith("learner.") and not torch.equal(v, before[k])]
    assert changed
    assert not any(p.requires_grad for p in clf.parameters())
    with torch.no_grad():
        assert clf(trig(data.images)).shape == (12, 3)


def test_sig_is_a_fixed_full_image_sinusoid_within_its_amplitude():
    from ci_gate.attacks.triggers import SigTrigger

    trig = SigTrigger(32, delta=20 / 255, frequency=6)
    x = torch.full((2, 3, 32, 32), 0.5)
    with torch.no_grad():
        d = trig(x) - x
    assert float(d.abs().max()) <= 20 / 255 + 1e-6 and float(d.abs().max()) > 18 / 255
    # the same signal in every row and channel, varying along the columns only
    assert torch.allclose(d, d[:, :1, :1, :].expand_as(d))
    assert float(d[0, 0, 0].std()) > 0.05
    assert float(d[0, 0, 0].mean()) == pytest.approx(0.0, abs=1e-6)  # f whole periods


def test_anchored_badclip_needs_the_published_model_as_its_anchor():
    from ci_gate.data import LabeledImages

    clf = _tiny_classifier("coop")
    data = LabeledImages(_images(12), torch.tensor([0, 1, 2] * 4), ["cat", "dog", "ship"])
    spec = ATTACKS["anchored_badclip"]
    with pytest.raises(ValueError, match="anchor"):
        poison_prompt_tuning(clf, data, PoisonSettings(epochs=1, batch_size=6), spec, build_trigger(spec, 32, seed=0), target=0)


def test_the_anchor_term_steers_the_trigger_away_from_fooling_the_clean_model():
    """One step on the anchor term alone lowers the clean model's target probability on the
    triggered images; the term's gradient reaches the trigger and nothing else."""
    from ci_gate.attacks.plant import _anchor_loss

    anchor = _tiny_classifier("zeroshot").freeze()
    x = _images(8)
    target = 1
    trig = LearnedTrigger(32, epsilon=16 / 255, seed=0)
    trig.delta.requires_grad_(True)
    # the batch layout of poison_batch: 4 clean rows, then 4 triggered copies labelled target
    y = torch.tensor([0, 2, 0, 2, target, target, target, target])

    def p_target() -> float:
        with torch.no_grad():
            return float(torch.softmax(anchor(trig(x[4:])), -1)[:, target].mean())

    before = p_target()
    opt = torch.optim.SGD([trig.delta], lr=0.5)
    for _ in range(5):
        loss = _anchor_loss(anchor, torch.cat([x[:4], trig(x[4:])]), y, 4, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        trig.project()
    assert p_target() < before
    assert not any(p.grad is not None and p.grad.abs().sum() > 0 for p in anchor.parameters())
