"""ci_gate.accuracy: the one clean-accuracy / attack-success-rate pair."""

import math

import pytest
import torch

from ci_gate.accuracy import accuracy, attack_success_rate, clean_accuracy, predictions, trigger_asr
from ci_gate.data import LabeledImages

pytestmark = pytest.mark.usefixtures("one_thread")


def test_accuracy_is_the_fraction_of_right_predictions():
    assert accuracy(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])) == 0.75
    assert math.isnan(accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)))


def test_attack_success_rate_counts_the_target_and_is_nan_without_images():
    assert attack_success_rate(torch.tensor([3, 3, 1, 0]), target=3) == 0.5
    assert math.isnan(attack_success_rate(torch.tensor([], dtype=torch.long), target=3))


@pytest.fixture(scope="module")
def model():
    from ci_gate.bench.speed_run import random_classifier, random_pool

    clf = random_classifier("tiny-32", "coop", 4, seed=0)
    clf.freeze()
    images = random_pool(24, 32, seed=2)
    with torch.no_grad():
        logits = clf(images)
    return clf, images, logits


def test_the_model_measures_use_the_pure_ones(model):
    clf, images, logits = model
    labels = torch.arange(24) % 4
    data = LabeledImages(images, labels, ["c0", "c1", "c2", "c3"])
    assert torch.equal(predictions(clf, images, batch_size=5), logits.argmax(1))
    assert clean_accuracy(clf, data) == accuracy(logits.argmax(1), labels)
    # the perturbation is applied to the images of the other classes only
    target = int(logits.argmax(1).mode().values)
    pred = logits.argmax(1)[labels != target]
    assert trigger_asr(clf, data, lambda x: x, target) == attack_success_rate(pred, target) == float((pred == target).float().mean())
    assert math.isnan(trigger_asr(clf, LabeledImages(images[:3], torch.zeros(3, dtype=torch.long), data.class_names), lambda x: x, 0))


def test_only_the_checkpoints_own_classes_count(model):
    clf, images, logits = model
    # a data set that names three classes: the fourth column is a policy extra, never predicted
    data = LabeledImages(images, torch.arange(24) % 3, ["c0", "c1", "c2"])
    assert clean_accuracy(clf, data) == accuracy(logits[:, :3].argmax(1), data.labels)
