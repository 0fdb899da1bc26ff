"""Repair building blocks, shared by ``ci-gate repair`` and the repair benchmark.

The paper's repair: add the predicted target's reconstructed trigger to a small labeled clean
set, keep the true labels, and fine-tune the prompt learner with the encoders frozen. The model
then learns that the trigger carries no class information. Everything here is seeded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ci_gate.accuracy import Perturb
from ci_gate.data import LabeledImages, load_labeled_folder
from ci_gate.errors import InputError
from ci_gate.inversion import InversionSettings
from ci_gate.inversion.optimize import invert
from ci_gate.model.classifier import PromptedClassifier
from ci_gate.splits import stratified_split
from ci_gate.tuning.train import TuneSettings, tune

Refresh = Callable[[PromptedClassifier, int], list[Perturb]]  # (model being repaired, block) -> new triggers


class AdditiveTrigger(nn.Module):
    """A universal additive perturbation (a reconstructed trigger, or random noise as a control),
    applied as the scan applies it: clamp(x + delta, 0, 1)."""

    def __init__(self, delta: torch.Tensor, name: str = "additive"):
        super().__init__()
        self.register_buffer("delta", delta.detach().float().clone())
        self.name = name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images + self.delta.to(images.device)).clamp(0, 1)


class MaskedTrigger(nn.Module):
    """A reconstructed mask-and-pattern trigger (ci_gate.inversion.patch), applied as the scan
    applies it: (1 - mask) x + mask pattern."""

    def __init__(self, mask: torch.Tensor, pattern: torch.Tensor, name: str = "patch"):
        super().__init__()
        self.register_buffer("mask", mask.detach().float().clone())
        self.register_buffer("pattern", pattern.detach().float().clone())
        self.name = name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m, p = self.mask.to(images.device), self.pattern.to(images.device)
        return ((1 - m) * images + m * p).clamp(0, 1)


def reconstructed(found, index: int, name: str) -> nn.Module:
    """Class ``index``'s trigger from a ScanOutput, in its own family."""
    t = found.trigger(index)
    if t.mask is not None:
        return MaskedTrigger(t.mask, t.pattern, name)
    return AdditiveTrigger(found.delta(index), name)


def random_sign_noise(shape: Sequence[int], epsilon: float, seed: int) -> torch.Tensor:
    """+-epsilon per pixel and channel: the reconstructed triggers sit at the L-inf bound almost
    everywhere, so this control has the same budget and energy, only no direction."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, tuple(shape), generator=gen).float() * 2 - 1) * epsilon


@dataclass(frozen=True)
class FineTuneSettings:
    epochs: int = 20
    lr: float = 0.005
    batch_size: int = 32
    seed: int = 0
    trigger_fraction: float = 1.0
    refresh_blocks: int = 1


def load_clean_data(root: str | Path, image_size: int, class_names: list[str], min_per_class: int = 2) -> LabeledImages:
    """The user's labeled clean set (ROOT/<class>/<images>) for the model's classes.

    Every class needs ``min_per_class`` readable images: at least one to train on and one held
    out to measure accuracy and trigger ASR. A class folder that is empty is named in the error.
    """
    root = Path(root)
    data = load_labeled_folder(root, image_size, class_names=class_names)
    counts = torch.bincount(data.labels, minlength=len(class_names))
    short = [i for i, n in enumerate(counts.tolist()) if n < min_per_class]
    if short:
        folders = {p.name.replace("_", " ").lower(): p for p in root.iterdir() if p.is_dir()}
        named = [str(folders.get(class_names[i].replace("_", " ").lower(), root / class_names[i])) for i in short[:3]]
        raise InputError(
            named[0] if len(short) == 1 else root,
            f"needs at least {min_per_class} readable images per class; too few in {', '.join(named)}"
            + (f" and {len(short) - 3} more" if len(short) > 3 else ""),
        )
    return data


def split_holdout(data: LabeledImages, holdout: float, seed: int) -> tuple[LabeledImages, LabeledImages]:
    """Stratified, seeded split into (train, held out): each class keeps at least one image on
    each side, so accuracy before and after is measured on the same images for every class."""

    def n_held(_: int, n: int) -> int:
        return min(n - 1, max(1, round(holdout * n))) if n else 0

    held, train = stratified_split(data, n_held, seed)
    return train, held


def with_triggered_copies(data: LabeledImages, perturbations: Sequence[Perturb], fraction: float, seed: int) -> LabeledImages:
    """The clean set plus, for each perturbation, triggered copies of a seeded ``fraction`` of it,
    labelled with their TRUE classes. An empty list of perturbations returns ``data`` unchanged."""
    if not perturbations:
        return data
    gen = torch.Generator().manual_seed(seed)
    images, labels = [data.images], [data.labels]
    n_pick = max(1, round(fraction * len(data)))
    for perturb in perturbations:
        pick = torch.randperm(len(data), generator=gen)[:n_pick]
        with torch.no_grad():
            images.append(perturb(data.images[pick]))
        labels.append(data.labels[pick])
    return LabeledImages(torch.cat(images), torch.cat(labels), data.class_names)


def fine_tune(
    classifier: PromptedClassifier,
    train: LabeledImages,
    perturbations: Sequence[Perturb],
    settings: FineTuneSettings,
    refresh: Refresh | None = None,
) -> list[Perturb]:
    """Fine-tune ``classifier.learner`` in place (encoders frozen) on the clean set plus triggered,
    correctly labelled copies (``trigger_fraction`` of the set in all, shared by the triggers).

    With ``refresh``, the epochs run in ``refresh_blocks`` blocks and after each block but the last
    ``refresh`` reconstructs the target's trigger (the targets', after a second repair round)
    again against the model as it is now; they join the set. A learned backdoor has a basin wider
    than the one trigger the scan found: trained on that trigger alone, the model unlearns it but
    the attacker's real trigger keeps working (BadCLIP on CIFAR-10 at 16/255: real ASR 97% -> 66%);
    re-reconstructing follows what remains of the basin (-> 2.4%, docs/repair.md). Returns every
    trigger used.
    """
    used = list(perturbations)
    blocks = settings.refresh_blocks if refresh is not None else 1
    done = 0
    for block in range(blocks):
        epochs = settings.epochs * (block + 1) // blocks - done
        done += epochs
        data = with_triggered_copies(train, used, settings.trigger_fraction / max(1, len(used)), settings.seed + block)
        if epochs:
            tune(classifier, data, TuneSettings(epochs=epochs, lr=settings.lr, batch_size=settings.batch_size, seed=settings.seed + block))
        if refresh is not None and block < blocks - 1:
            used.extend(refresh(classifier, block))
    return used


def trigger_refresher(train: LabeledImages, targets: Sequence[int], settings: InversionSettings, min_steps: int = 32) -> Refresh:
    """A ``Refresh`` that inverts each class in ``targets`` on the clean training images of the
    other classes, with the scan's settings, for at least ``min_steps`` steps (the scan's one epoch
    over 1,000 pool images is about 32). Every class repaired so far is followed: a later round
    that refreshed only its new class let the first target's backdoor grow back (zoo BadCLIP s7:
    real ASR 1.0% after round 1, 20.8% after a round that followed only the class the re-scan
    flagged)."""

    def refresh(classifier: PromptedClassifier, block: int) -> list[Perturb]:
        out: list[Perturb] = []
        for target in targets:
            images = train.images[train.labels != target]
            per_epoch = max(1, math.ceil(len(images) / settings.batch_size))
            epochs = max(settings.epochs, math.ceil(min_steps / per_epoch))
            found = invert(classifier, images, replace(settings, epochs=epochs, seed=settings.seed + block + 1), classes=[target])[0]
            out.append(AdditiveTrigger(found.delta, f"refreshed:{block + 1}:{target}"))
        return out

    return refresh


def learner_state(classifier: PromptedClassifier) -> dict[str, torch.Tensor]:
    assert classifier.learner.tensors_required
    return {k: v.detach().clone() for k, v in classifier.learner.state_dict().items()}


def restore_learner(classifier: PromptedClassifier, state: dict[str, torch.Tensor]) -> None:
    assert classifier.learner.tensors_required
    classifier.learner.load_state_dict(state)
    classifier.invalidate_cache()
    classifier.freeze()
