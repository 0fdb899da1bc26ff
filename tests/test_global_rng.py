"""Randomness goes through explicit torch.Generators: a scan, prompt tuning (clean and poisoned)
and pretraining neither depend on torch's global generator nor leave it changed (issue 17)."""

import copy
import json

import pytest
import torch

from tiny_scan import build

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"pool__min_images": 8, "pool__max_images": 8, "inversion__batch_size": 8, "inversion__epochs": 1, "device": "cpu"}


def _twice(run):
    """``run()`` after two different seedings of the global generator: its outputs, and whether
    the global state after each run is the one before it."""
    outs, kept = [], []
    for seed in (11, 12):
        torch.manual_seed(seed)
        before = torch.random.get_rng_state()
        outs.append(run())
        kept.append(torch.equal(torch.random.get_rng_state(), before))
    return outs, kept


def test_a_scan_neither_reads_nor_changes_the_global_generator(tmp_path):
    import ci_gate

    ckpt, pool = build(tmp_path, kind="cocoop")

    def scan():
        res = ci_gate.verify(ckpt, pool=pool, **TINY)
        return json.dumps([res.verdict, [(c.name, c.statistic, c.anomaly, c.asr, c.final_loss) for c in res.classes]])

    (a, b), kept = _twice(scan)
    assert kept == [True, True]
    assert a == b


@pytest.mark.parametrize("poisoned", [False, True])
def test_tuning_neither_reads_nor_changes_the_global_generator(poisoned):
    from ci_gate.attacks import make_trigger
    from ci_gate.bench.speed_run import random_classifier, random_pool
    from ci_gate.data import LabeledImages
    from ci_gate.tuning import TuneSettings, tune

    data = LabeledImages(random_pool(12, 32, seed=4), torch.tensor([0, 1, 2] * 4), ["c0", "c1", "c2"])
    start = random_classifier("tiny-32", "cocoop", 3, seed=0)

    def run():
        clf = copy.deepcopy(start)
        trig = make_trigger("badclip", 32, seed=1, epsilon=16 / 255) if poisoned else None
        tune(clf, data, TuneSettings(epochs=1, batch_size=6, seed=3, target=1 if poisoned else None, poison_rate=0.3), trigger=trig)
        return {k: v.clone() for k, v in clf.learner.state_dict().items()}

    (a, b), kept = _twice(run)
    assert kept == [True, True]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["ctx"], start.learner.state_dict()["ctx"])  # it did train


def test_pretraining_neither_reads_nor_changes_the_global_generator():
    from open_clip.model import CLIP
    from open_clip.tokenizer import SimpleTokenizer

    from ci_gate.bench.speed_run import random_pool
    from ci_gate.data import LabeledImages
    from ci_gate.model.small import small_config
    from ci_gate.rng import global_rng
    from ci_gate.tuning.pretrain import PretrainSettings, pretrain_clip

    with global_rng(0):
        start = CLIP(**small_config("tiny-32"))
    data = LabeledImages(random_pool(16, 32, seed=5), torch.arange(16) % 4, ["red", "green", "blue", "grey"])
    tok = SimpleTokenizer()

    def run():
        clip = pretrain_clip(copy.deepcopy(start), tok, data, PretrainSettings(epochs=1, batch_size=8, seed=0))
        return torch.cat([p.flatten() for p in clip.parameters()])

    (a, b), kept = _twice(run)
    assert kept == [True, True]
    assert torch.equal(a, b)


def test_global_rng_seeds_a_fork_and_restores_the_callers_state():
    from ci_gate.rng import global_rng

    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    with global_rng(3):
        inside = torch.rand(4)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(3)
    assert torch.equal(inside, torch.rand(4))  # seeded exactly as torch.manual_seed seeds
    torch.manual_seed(5)
    with global_rng():
        torch.rand(4)
    assert torch.equal(torch.random.get_rng_state(), before)
