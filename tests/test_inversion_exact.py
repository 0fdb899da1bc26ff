"""The fast inversion equals the straightforward one (issue 5).

Each speed-up is checked against ``fast=False`` / ``invert_reference`` on small random-weight
models (tiny-32, CoOp and CoCoOp): truncated text, cached text features and class-token
embeddings, the shared per-image prefix, and several classes optimised in one batch. The
tolerances are float32 rounding, far below any change that matters, and the mutant tests show
that the same comparisons do fail on a real change (a non-causal tower, another batch order).
"""

from __future__ import annotations

import pytest
import torch

from ci_gate.bench.speed_run import candidate_names, random_classifier, random_pool
from ci_gate.checkpoint.format import OPENAI_MEAN, OPENAI_STD, LearnerSpec
from ci_gate.inversion import InversionSettings, base_rates, invert, invert_reference
from ci_gate.inversion.memory import CPU_CLASS_BATCH_CAP, activation_bytes_per_class, choose_class_batch, class_batch_for_budget
from ci_gate.learners import tuned_kinds
from ci_gate.model.factory import build_classifier, new_learner
from ci_gate.model.small import embedded_backbone, random_clip_state, small_config
from ci_gate.scoring import ClassStats, decide

# names whose prompts end at different positions (1 to 4 name tokens), in an order the EOS
# grouping has to permute: a missing un-permute would swap classes
N_CLASSES = 7
LOGIT_ATOL = 1e-4  # logits are ~10; float32 rounding differences are ~1e-6
STAT_ATOL = 1e-4
SETTINGS = InversionSettings(batch_size=16, seed=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=tuned_kinds())
def clf(request):
    return random_classifier("tiny-32", request.param, N_CLASSES, seed=0)


@pytest.fixture(scope="module")
def pool():
    return random_pool(32, 32, seed=1)


def _logits(clf, images, fast: bool) -> torch.Tensor:
    clf.freeze()
    with clf.running(fast=fast), torch.no_grad():
        return clf(images)


def test_names_span_several_eos_groups(clf):
    groups = clf.prompts.groups
    assert len(groups) >= 3, groups
    assert not torch.equal(clf.prompts.group_order, torch.arange(N_CLASSES))
    assert candidate_names(N_CLASSES) == clf.class_names


def test_fast_path_is_the_one_claimed(clf):
    assert clf.fast  # the default
    assert clf.text.causal and clf.text_length() == clf.prompts.fast_length < clf.text.context_length
    assert clf.shares_prefix == clf.learner.shares_prefix


def test_cached_class_token_embeddings_are_the_token_embeddings(clf):
    # PromptTokens embeds the class names once; the lookup is a gather, so the bits are equal
    prompts = clf.prompts
    cfg = small_config("tiny-32")
    _, backbone = embedded_backbone(cfg, random_clip_state(cfg, 0))
    full = backbone.clip.token_embedding(prompts.tokens)
    assert torch.equal(prompts.token_suffix, full[:, 1 + prompts.n_ctx :])
    for (a, b, s), suffix in zip(prompts.groups, prompts.group_suffixes()):
        cls = prompts.group_order[a:b]
        assert torch.equal(suffix, full[cls, 1 + prompts.n_ctx : 1 + prompts.n_ctx + s])
        assert bool((prompts.eos_index[cls] == prompts.n_ctx + s).all())  # each group ends at its EOS


def test_logits_equal_reference(clf, pool):
    ref, fast = _logits(clf, pool, fast=False), _logits(clf, pool, fast=True)
    assert ref.abs().max() > 1.0  # not a degenerate all-zero model
    torch.testing.assert_close(fast, ref, atol=LOGIT_ATOL, rtol=0)


def test_input_gradients_equal_reference(clf, pool):
    # inversion follows d loss / d image: the fast path must give the same gradient, not only logits
    weights = torch.randn(pool.shape[0], N_CLASSES, generator=torch.Generator().manual_seed(3))

    def grad(fast: bool) -> torch.Tensor:
        clf.freeze()
        with clf.running(fast=fast):
            x = pool.clone().requires_grad_(True)
            (clf(x) * weights).sum().backward()
            return x.grad

    ref, fast = grad(False), grad(True)
    assert ref.abs().max() > 0
    torch.testing.assert_close(fast, ref, atol=1e-5 * float(ref.abs().max()), rtol=1e-4)


def test_learner_gradients_equal_reference(clf, pool):
    # prompt tuning (tests' fixture models, repair, canary) trains through the fast path too
    labels = torch.arange(pool.shape[0]) % N_CLASSES
    params = list(clf.learner.parameters())

    def grads(fast: bool) -> list[torch.Tensor]:
        clf.invalidate_cache()  # training: nothing cached, the learner changes every step
        for p in params:
            p.requires_grad_(True)
        try:
            with clf.running(fast=fast):
                loss = torch.nn.functional.cross_entropy(clf(pool), labels)
                return [g.clone() for g in torch.autograd.grad(loss, params)]
        finally:
            for p in params:
                p.requires_grad_(False)
            clf.freeze()

    for ref, fast in zip(grads(False), grads(True)):
        assert ref.abs().max() > 0
        torch.testing.assert_close(fast, ref, atol=1e-5 * float(ref.abs().max()), rtol=1e-4)


@pytest.fixture(scope="module")
def inversions(clf, pool):
    """Reference, fast with all classes in one batch, and fast one class at a time."""
    ref = invert_reference(clf, pool, SETTINGS)
    ref_rates = _base_rates(clf, pool, fast=False)
    joint = invert(clf, pool, SETTINGS, class_batch=N_CLASSES)
    single = invert(clf, pool, SETTINGS, class_batch=1)
    fast_rates = _base_rates(clf, pool, fast=True)
    return {"ref": (ref, ref_rates), "joint": (joint, fast_rates), "single": (single, fast_rates)}


def _base_rates(clf, pool, fast: bool):
    clf.freeze()
    with clf.running(fast=fast):
        return base_rates(clf, pool)


def _decision(triggers, rates):
    rate, clean = rates
    stats = [ClassStats(asr=t.asr, base_rate=float(rate[t.index]), final_loss=t.final_loss, clean_loss=float(clean[t.index])) for t in triggers]
    return decide(stats, "loss_drop", 2.0, 0.5, 0.05)


def _assert_same_inversion(a, b, rates_a, rates_b):
    assert [t.index for t in a] == [t.index for t in b]
    for x, y in zip(a, b):
        assert abs(x.asr - y.asr) <= 1 / 32 + 1e-9, (x.index, x.asr, y.asr)  # at most one image flips
        assert abs(x.final_loss - y.final_loss) <= STAT_ATOL, (x.index, x.final_loss, y.final_loss)
        torch.testing.assert_close(x.delta, y.delta, atol=STAT_ATOL, rtol=0)
    torch.testing.assert_close(rates_a[1], rates_b[1], atol=STAT_ATOL, rtol=0)
    da, db = _decision(a, rates_a), _decision(b, rates_b)
    assert da.verdict == db.verdict and da.target == db.target and da.status == db.status
    assert max(abs(p - q) for p, q in zip(da.anomaly, db.anomaly)) <= 1e-3


@pytest.mark.parametrize("variant", ["joint", "single"])
def test_short_inversion_matches_reference(inversions, variant):
    ref, ref_rates = inversions["ref"]
    fast, fast_rates = inversions[variant]
    assert any(t.asr > 0 for t in ref)  # the triggers did something
    _assert_same_inversion(ref, fast, ref_rates, fast_rates)


def test_mutant_batch_order_is_caught(clf, pool, inversions):
    # The comparison above is tight enough to see a different optimisation trajectory.
    ref, rates = inversions["ref"]
    other = invert(clf, pool, InversionSettings(batch_size=16, seed=1), class_batch=N_CLASSES)
    with pytest.raises(AssertionError):
        _assert_same_inversion(ref, other, rates, rates)


def test_mutant_non_causal_tower_is_caught_and_refused():
    # Without a causal mask every position also sees the padding after EOS, so truncation changes
    # the features: the logit comparison catches it, and the encoder refuses to truncate.
    cfg = small_config("tiny-32")
    cfg["text_cfg"]["no_causal_mask"] = True
    _, backbone = embedded_backbone(cfg, random_clip_state(cfg, 0))
    names = candidate_names(N_CLASSES)
    learner = new_learner(backbone, LearnerSpec(kind="cocoop", class_names=names), seed=0)
    clf = build_classifier(backbone, "cocoop", learner, names, 4, 32, OPENAI_MEAN, OPENAI_STD)
    images = random_pool(4, 32, seed=2)
    assert not clf.text.causal and not clf.text.shares_prefix
    assert clf.text_length() == clf.text.context_length and not clf.shares_prefix
    full = _logits(clf, images, fast=False)
    torch.testing.assert_close(_logits(clf, images, fast=True), full, atol=LOGIT_ATOL, rtol=0)
    clf.text.causal = True  # pretend, to force truncation on the non-causal tower
    forced = _logits(clf, images, fast=True)
    assert (forced - full).abs().max() > 100 * LOGIT_ATOL


def test_bf16_autocast_keeps_the_verdict(clf, pool, inversions):
    # The GPU runs in bf16; CPU autocast runs the same casts, so the tolerance is checked here.
    ref, ref_rates = inversions["ref"]
    with clf.running(autocast_dtype=torch.bfloat16):
        low = invert(clf, pool, SETTINGS, class_batch=N_CLASSES)
        low_rates = _base_rates(clf, pool, fast=True)
    da, db = _decision(ref, ref_rates), _decision(low, low_rates)
    assert da.verdict == db.verdict and da.target == db.target
    # 0.1 in the model's own logit units; recorded losses are at the canonical logit scale
    from ci_gate.inversion.optimize import CANONICAL_LOGIT_SCALE

    assert max(abs(a.final_loss - b.final_loss) for a, b in zip(ref, low)) < 0.1 * CANONICAL_LOGIT_SCALE / float(clf.logit_scale)


def test_memory_bound_is_linear_and_respects_the_budget(clf):
    per = activation_bytes_per_class(clf, 32)
    assert activation_bytes_per_class(clf, 64) == 2 * per
    assert class_batch_for_budget(per, 3 * per + 1, 50) == 3
    assert class_batch_for_budget(per, per // 2, 50) == 1  # never zero
    assert class_batch_for_budget(1, 1 << 40, 7) == 7
    assert class_batch_for_budget(per, 23 * per, 50) == 17  # 17 + 17 + 16, not 23 + 23 + 4
    assert choose_class_batch(clf, 32, N_CLASSES, torch.device("cpu"), cpu_budget_bytes=2 * per) == 2
    assert choose_class_batch(clf, 32, N_CLASSES, torch.device("cpu"), cpu_budget_bytes=1 << 40) == CPU_CLASS_BATCH_CAP
    if clf.learner.shares_prefix:  # the shared prefix runs far fewer text tokens than 77 per class
        with clf.running(fast=False):
            assert activation_bytes_per_class(clf, 32) > 5 * per


def test_channels_last_resnet_tower_gives_the_same_logits():
    # tune_for() switches convolutional towers to channels-last on CUDA; the layout must not change
    # the numbers (checked on the CPU by forcing the flag)
    cfg = small_config("tiny-32")
    cfg["vision_cfg"] = {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8}
    _, backbone = embedded_backbone(cfg, random_clip_state(cfg, 0))
    names = candidate_names(4)
    learner = new_learner(backbone, LearnerSpec(kind="coop", class_names=names), seed=0)
    clf = build_classifier(backbone, "coop", learner, names, 4, 32, OPENAI_MEAN, OPENAI_STD)
    images = random_pool(4, 32, seed=2)
    assert not clf.tune_for(torch.device("cpu")).channels_last
    plain = _logits(clf, images, fast=True)
    clf.channels_last = True
    clf.visual.to(memory_format=torch.channels_last)
    torch.testing.assert_close(_logits(clf, images, fast=True), plain, atol=LOGIT_ATOL, rtol=0)


def test_progress_reaches_its_total_when_rungs_outnumber_batches(clf, pool):
    # 32 images in batches of 16: 2 batches for 5 rungs, so the batches cycle (one step per rung)
    settings = InversionSettings(batch_size=16, seed=0, ladder=(2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255))
    seen = []
    invert(clf, pool, settings, classes=[0, 1], class_batch=2, progress=lambda done, total, n: seen.append((done, total)))
    assert seen[-1][0] == seen[-1][1] == 5 * 2
    assert all(done <= total for done, total in seen)
