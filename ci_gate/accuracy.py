"""Clean accuracy and attack success rate: the one pair every recipe, repair, canary and
benchmark measures a model with.

:func:`accuracy` and :func:`attack_success_rate` are pure (predicted labels in, a fraction out);
:func:`clean_accuracy` and :func:`trigger_asr` run a classifier to get those predictions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ci_gate.data import LabeledImages
from ci_gate.model.classifier import PromptedClassifier

Perturb = Callable[[torch.Tensor], torch.Tensor]  # images in [0, 1] -> images in [0, 1]


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of predictions equal to their labels (NaN for none)."""
    return float((predicted == labels).float().mean())


def attack_success_rate(predicted: torch.Tensor, target: int) -> float:
    """Fraction of predictions (on triggered images whose true class is not ``target``) that are
    ``target``; NaN when there are none, as no rate was measured."""
    if len(predicted) == 0:
        return float("nan")
    return float((predicted == target).float().mean())


def predictions(classifier: PromptedClassifier, images: torch.Tensor, n_columns: int | None = None, batch_size: int = 256) -> torch.Tensor:
    """Argmax over the first ``n_columns`` logits, on the CPU. The checkpoint's own classes come
    first; policy extras (scanned, never deployed) come after and must not count against clean
    accuracy."""
    device = classifier.mean.device
    out = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            logits = classifier(chunk.to(device))
            out.append(logits[:, :n_columns].argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def clean_accuracy(classifier: PromptedClassifier, data: LabeledImages) -> float:
    return accuracy(predictions(classifier, data.images, len(data.class_names)), data.labels)


def trigger_asr(classifier: PromptedClassifier, data: LabeledImages, perturb: Perturb, target: int) -> float:
    """Fraction of images whose true class is not ``target`` that the perturbation sends to it.
    With ``perturb`` the identity this is the model's natural rate of predicting ``target``."""
    keep = data.labels != target
    if not bool(keep.any()):
        return float("nan")
    with torch.no_grad():
        triggered = perturb(data.images[keep])
    return attack_success_rate(predictions(classifier, triggered, max(len(data.class_names), target + 1)), target)
