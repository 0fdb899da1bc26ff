"""Every registered prompt learner keeps the interface's promises (ci_gate.learners).

Parametrized over the registry, so a new learner is checked by adding its module: its tensors
round-trip through a checkpoint with the same logits, the header-only shape check accepts what
it writes and refuses a wrong shape, its Dassl import (when it has one) is the inverse of what it
stores, and nothing in it touches the caller's global random state.
"""

from __future__ import annotations

import pytest
import torch

from ci_gate.bench.speed_run import candidate_names, random_pool
from ci_gate.checkpoint.format import MAX_CTX_WIDTH, OPENAI_MEAN, OPENAI_STD, LearnerSpec
from ci_gate.learners import DASSL_KINDS, KINDS, learner_class, tuned_kinds
from ci_gate.learners.base import Learner
from ci_gate.model.factory import build_classifier, new_learner
from ci_gate.model.small import embedded_backbone, random_clip_state, small_config

pytestmark = pytest.mark.usefixtures("one_thread")
NAMES = candidate_names(5)


@pytest.fixture(scope="module")
def backbone():
    cfg = small_config("tiny-32")
    return embedded_backbone(cfg, random_clip_state(cfg, 0))[1]


def _spec(kind: str) -> LearnerSpec:
    tuned = learner_class(kind).tensors_required
    return LearnerSpec(kind=kind, class_names=NAMES, n_ctx=4 if tuned else 0, ctx_init=None)


def _classifier(backbone, kind: str, learner: Learner):
    return build_classifier(backbone, kind, learner, NAMES, _spec(kind).n_ctx, 32, OPENAI_MEAN, OPENAI_STD).eval()


def test_registry_lists_each_module_once_under_its_own_kind():
    assert len(set(KINDS)) == len(KINDS) and "zeroshot" in KINDS and {"coop", "cocoop"} <= set(tuned_kinds())
    for kind in KINDS:
        cls = learner_class(kind)
        assert issubclass(cls, Learner) and cls.kind == kind and cls.title
    with pytest.raises(KeyError, match="unknown learner kind 'lora'"):
        learner_class("lora")


@pytest.mark.parametrize("kind", KINDS)
def test_tensors_round_trip_with_the_same_logits(backbone, kind):
    cls = learner_class(kind)
    spec = _spec(kind)
    fresh = new_learner(backbone, spec, seed=3)
    tensors = fresh.named_tensors()
    assert set(tensors) == cls.expected_tensors(spec)
    cls.check_shapes(spec, {k: tuple(v.shape) for k, v in tensors.items()}, MAX_CTX_WIDTH)
    again = cls.from_tensors(backbone, spec, {k: v.clone() for k, v in tensors.items()})
    images = random_pool(4, 32, seed=1)
    with torch.no_grad():
        a, b = _classifier(backbone, kind, fresh)(images), _classifier(backbone, kind, again)(images)
    assert a.shape == (4, len(NAMES)) and a.abs().max() > 0.1
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("kind", tuned_kinds())
def test_fresh_learners_are_seeded_and_leave_the_global_rng_alone(backbone, kind):
    spec = _spec(kind)
    state = torch.random.get_rng_state()
    a = new_learner(backbone, spec, seed=1).named_tensors()
    assert torch.equal(torch.random.get_rng_state(), state)
    b = new_learner(backbone, spec, seed=1).named_tensors()
    c = new_learner(backbone, spec, seed=2).named_tensors()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("kind", tuned_kinds())
def test_header_check_refuses_a_context_of_the_wrong_length(backbone, kind):
    cls = learner_class(kind)
    spec = _spec(kind)
    shapes = {k: tuple(v.shape) for k, v in new_learner(backbone, spec, seed=0).named_tensors().items()}
    wrong = dict(shapes, ctx=(spec.n_ctx + 1, *shapes["ctx"][1:]))
    with pytest.raises(ValueError, match="ctx has shape"):
        cls.check_shapes(spec, wrong, MAX_CTX_WIDTH)


@pytest.mark.parametrize("kind", DASSL_KINDS)
def test_dassl_import_keeps_exactly_the_learners_tensors(backbone, kind):
    cls = learner_class(kind)
    spec = _spec(kind)
    tensors = new_learner(backbone, spec, seed=0).named_tensors()
    state = {**{k: v.half() for k, v in tensors.items()}, "token_prefix": torch.zeros(5, 1, 8), "token_suffix": torch.zeros(5, 3, 8)}
    claimed = [k for k in DASSL_KINDS if learner_class(k).dassl_claims(frozenset(state))]
    assert claimed[-1] == kind, claimed  # auto-detection picks this learner
    got = cls.dassl_import(state)
    assert set(got.tensors) == cls.expected_tensors(spec.model_copy(update={"options": got.options}))
    assert set(got.used) == set(state) and got.token_suffix.shape == (5, 3, 8)
    assert cls.Options.model_validate(got.options) is not None and cls.dassl_signature


@pytest.mark.parametrize("kind", KINDS)
def test_options_refuse_unknown_keys(kind):
    with pytest.raises(ValueError, match="options"):
        LearnerSpec(kind=kind, class_names=NAMES, n_ctx=4, options={"no_such_setting": 1})
