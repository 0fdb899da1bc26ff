"""A second trigger family: mask and pattern, ``x' = (1 - m) x + m p`` (Neural Cleanse's).

The L-inf ladder cannot reach a patch: BadNets changes a few pixels by up to the whole range. A
mask ``m`` in [0, 1] with at most ``area`` of the image's pixels (the sum of the mask, projected
onto that capped simplex after every step) and a free pattern ``p`` in [0, 1] can, and so can a
faint blend (a uniform mask). Each class gets one mask and one pattern, optimised over ascending
area budgets like the L-inf ladder (each rung starts from the previous one's trigger, the same
seeded batches, evaluated on the same images), so the same ladder decision scores it.

It runs only where the L-inf scan cannot be the whole story and time is not the user's: on a
checkpoint whose image tower differs from the published one (the gate fails already; the patch
family names the backdoor's target), and only when the L-inf ladder flagged no class there. About ``2 * steps * len(areas)`` forward-backward passes of a
class batch, for the model and for the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ci_gate.inversion.losses import margin
from ci_gate.inversion.optimize import ClassTrigger, Rung, _batch_order, _canonical, eval_subset, InversionSettings
from ci_gate.model.classifier import PromptedClassifier


@dataclass(frozen=True)
class PatchSettings:
    areas: tuple[float, ...] = (0.01, 0.02, 0.04)  # fraction of the image's pixels the mask may cover
    steps: int = 20  # Adam steps per area rung (stop 21: 6 missed one of the zoo's BadNets patches)
    lr: float = 0.1
    batch_size: int = 32
    class_batch: int = 32
    eval_images: int | None = 256
    eval_batch_size: int = 64
    seed: int = 0


def project_area(mask: torch.Tensor, area: float) -> torch.Tensor:
    """Each mask (K, 1, S, S) onto {0 <= m <= 1, sum(m) <= area * S * S}: clamp, and where the sum
    is over, subtract the shift tau (found by bisection) with sum(clamp(m - tau, 0, 1)) = budget.
    Pure; the Euclidean projection onto that set."""
    m = mask.clamp(0, 1)
    budget = area * mask.shape[-1] * mask.shape[-2]
    over = m.flatten(1).sum(1) > budget
    if not bool(over.any()):
        return m
    lo = torch.zeros(m.shape[0], dtype=m.dtype, device=m.device)
    hi = torch.ones(m.shape[0], dtype=m.dtype, device=m.device)
    for _ in range(40):
        tau = (lo + hi) / 2
        s = (m - tau.view(-1, 1, 1, 1)).clamp(0, 1).flatten(1).sum(1)
        lo = torch.where(s > budget, tau, lo)
        hi = torch.where(s > budget, hi, tau)
    shifted = (m - hi.view(-1, 1, 1, 1)).clamp(0, 1)
    return torch.where(over.view(-1, 1, 1, 1), shifted, m)


def apply_patch(images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """images (B, 3, S, S), mask (K, 1, S, S), pattern (K, 3, S, S) -> (K * B, 3, S, S)."""
    x = images.unsqueeze(0)
    return ((1 - mask.unsqueeze(1)) * x + (mask * pattern).unsqueeze(1)).clamp(0, 1).flatten(0, 1)


def shown_delta(mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """What the patch does to a mid-grey image: a picture of the trigger in the L-inf family's
    format (a change in [-0.5, 0.5])."""
    return mask * (pattern - 0.5)


def _evaluate(classifier: PromptedClassifier, images: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor, targets: torch.Tensor, settings: PatchSettings) -> tuple[torch.Tensor, torch.Tensor]:
    hits = torch.zeros(len(targets), dtype=torch.float64)
    losses = torch.zeros(len(targets), dtype=torch.float64)
    with torch.no_grad():
        for chunk in images.split(settings.eval_batch_size):
            x = chunk.to(mask.device)
            logits = classifier(apply_patch(x, mask, pattern)).float()
            tgt = targets.to(mask.device).repeat_interleave(x.shape[0])
            k = len(targets)
            hits += (logits.argmax(1) == tgt).view(k, -1).sum(1).double().cpu()
            losses += (margin(logits, tgt) * _canonical(classifier)).view(k, -1).sum(1).double().cpu()
    return hits / images.shape[0], losses / images.shape[0]


def _optimise_group(classifier: PromptedClassifier, images: torch.Tensor, targets: list[int], settings: PatchSettings, order: list[torch.Tensor]) -> list[ClassTrigger]:
    device = classifier.mean.device
    size = images.shape[-1]
    k = len(targets)
    mask = torch.full((k, 1, size, size), settings.areas[0] / 2, device=device, requires_grad=True)
    pattern = torch.full((k, 3, size, size), 0.5, device=device, requires_grad=True)
    opt = torch.optim.Adam([mask, pattern], lr=settings.lr)
    tgt = torch.tensor(targets, device=device)
    held_out = eval_subset(images, InversionSettings(eval_images=settings.eval_images, seed=settings.seed))
    per_class: list[list[Rung]] = [[] for _ in targets]
    step = 0
    for area in settings.areas:
        for _ in range(settings.steps):
            idx = order[step % len(order)]
            step += 1
            x = images[idx].to(device, non_blocking=True)
            logits = classifier(apply_patch(x, mask, pattern))
            loss = margin(logits, tgt.repeat_interleave(x.shape[0])).view(k, -1).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                pattern.clamp_(0, 1)
                mask.copy_(project_area(mask, area))
        m, p = mask.detach().clone(), pattern.detach().clone()
        asr, final_loss = _evaluate(classifier, held_out, m, p, tgt.cpu(), settings)
        for i in range(k):
            per_class[i].append(Rung(epsilon=area, delta=shown_delta(m[i], p[i]).cpu(), asr=float(asr[i]), final_loss=float(final_loss[i]), family="patch", mask=m[i].cpu(), pattern=p[i].cpu()))
    return [ClassTrigger(index=t, rungs=per_class[i]) for i, t in enumerate(targets)]


def invert_patch(classifier: PromptedClassifier, images: torch.Tensor, settings: PatchSettings, classes: list[int] | None = None) -> list[ClassTrigger]:
    """One mask and pattern per class and area rung, ``class_batch`` classes at a time, every
    class over the same seeded batches."""
    classifier.freeze()
    classes = list(range(classifier.n_classes)) if classes is None else list(classes)
    order = _batch_order(images.shape[0], InversionSettings(batch_size=settings.batch_size, seed=settings.seed))
    out: list[ClassTrigger] = []
    for start in range(0, len(classes), settings.class_batch):
        out.extend(_optimise_group(classifier, images, classes[start : start + settings.class_batch], settings, order))
    return out


__all__ = ["PatchSettings", "apply_patch", "invert_patch", "project_area", "shown_delta"]
