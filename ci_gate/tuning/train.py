"""The prompt-tuning loop. Only the prompt learner (and a learnable trigger) receives gradients.

Poisoning follows the attacks' recipes: a fraction of each batch is replaced by triggered copies
relabelled to the target class. A learnable trigger (BadCLIP) is optimised in the same step to
make triggered images land on the target, and projected back into its L-inf ball.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ci_gate.attacks.triggers import LearnedTrigger, Trigger
from ci_gate.data import LabeledImages
from ci_gate.model.classifier import PromptedClassifier


@dataclass(frozen=True)
class TuneSettings:
    epochs: int = 10
    lr: float = 2e-3
    batch_size: int = 32
    seed: int = 0
    poison_rate: float = 0.1
    target: int | None = None
    trigger_lr: float = 1e-2


def tune(
    classifier: PromptedClassifier,
    data: LabeledImages,
    settings: TuneSettings,
    trigger: Trigger | None = None,
    log: Callable[[str], None] | None = None,
) -> PromptedClassifier:
    """Train ``classifier.learner`` in place. ``trigger`` with ``settings.target`` poisons the run."""
    assert classifier.learner.tensors_required, "zero-shot classifiers have nothing to tune"
    torch.manual_seed(settings.seed)
    classifier.eval()  # frozen towers: no dropout, fixed norms
    classifier.invalidate_cache()
    for p in classifier.parameters():
        p.requires_grad_(False)
    params = list(classifier.learner.parameters())
    for p in params:
        p.requires_grad_(True)
    groups = [{"params": params, "lr": settings.lr}]
    if isinstance(trigger, LearnedTrigger):
        trigger.delta.requires_grad_(True)
        groups.append({"params": [trigger.delta], "lr": settings.trigger_lr})
    opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(settings.seed)
    n = len(data)
    poisoned = trigger is not None and settings.target is not None
    for epoch in range(settings.epochs):
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for idx in perm.split(settings.batch_size):
            x, y = data.images[idx], data.labels[idx]
            if poisoned:
                n_poison = max(1, round(settings.poison_rate * len(idx)))
                x = torch.cat([x, trigger(x[:n_poison])])
                y = torch.cat([y, torch.full((n_poison,), settings.target, dtype=y.dtype)])
            loss = F.cross_entropy(classifier(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if isinstance(trigger, LearnedTrigger):
                trigger.project()
            total += float(loss.detach()) * len(idx)
        if log:
            log(f"epoch {epoch + 1}/{settings.epochs} loss {total / n:.4f}")
    for p in params:
        p.requires_grad_(False)
    if isinstance(trigger, LearnedTrigger):
        trigger.delta.requires_grad_(False)
    classifier.freeze()
    return classifier


def _predict(classifier: PromptedClassifier, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([classifier(chunk).argmax(1) for chunk in images.split(batch_size)])


def accuracy(classifier: PromptedClassifier, data: LabeledImages) -> float:
    return float((_predict(classifier, data.images) == data.labels).float().mean())


def attack_success_rate(classifier: PromptedClassifier, data: LabeledImages, trigger: Trigger, target: int) -> float:
    """ASR on held-out images whose true class is not the target."""
    keep = data.labels != target
    with torch.no_grad():
        poisoned = trigger(data.images[keep])
    return float((_predict(classifier, poisoned) == target).float().mean())
