"""Optimise the universal triggers.

``invert`` is the fast path: several candidate classes are optimised together in one batch
(their losses are summed, so each trigger only receives its own gradient, and Adam is
element-wise, which makes the joint run equal to separate runs; the image tower has no
cross-sample layers such as batch norm in eval mode), and the classifier runs with truncated,
cached and shared-prefix text encoding. ``invert_reference`` is the straightforward
one-class-at-a-time loop the paper describes; tests/test_inversion_exact.py and
``ci-gate bench speed`` hold the two equal.

Every class sees the same seeded batch order whichever group or process it runs in, which is
what lets ``ci_gate.distributed`` split the classes across processes and merge the results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ci_gate.inversion.losses import margin, target_loss
from ci_gate.model.classifier import PromptedClassifier

# (steps done, steps in all, candidate classes being inverted): a step is one class on one batch
Progress = Callable[[int, int, int], None]


@dataclass(frozen=True)
class InversionSettings:
    epsilon: float = 4 / 255
    lr: float = 0.1
    batch_size: int = 32
    epochs: int = 1
    loss: str = "margin"
    seed: int = 0
    eval_batch_size: int = 64
    # A budget ladder (ascending L-inf budgets): the steps are split evenly over the rungs, each
    # rung starts from the previous rung's trigger (it lies inside the larger ball), and every
    # rung's trigger is evaluated. Empty: one rung at ``epsilon``.
    ladder: tuple[float, ...] = ()
    # pool images (a seeded subset) each rung's trigger is evaluated on; None: the whole pool
    eval_images: int | None = None

    @property
    def rungs(self) -> tuple[float, ...]:
        return tuple(self.ladder) or (self.epsilon,)


@dataclass
class Rung:
    epsilon: float  # the rung's budget: L-inf for "linf", the mask's area fraction for "patch"
    delta: torch.Tensor  # (3, S, S), |delta|_inf <= epsilon ("patch": its change to a mid-grey image)
    asr: float
    final_loss: float
    family: str = "linf"  # "linf" (this module) or "patch" (ci_gate.inversion.patch)
    mask: torch.Tensor | None = None  # "patch": (1, S, S) in [0, 1]
    pattern: torch.Tensor | None = None  # "patch": (3, S, S) in [0, 1]

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The trigger as the scan measured it, on images in [0, 1]."""
        if self.mask is None:
            return (images + self.delta.to(images)).clamp(0, 1)
        m, p = self.mask.to(images), self.pattern.to(images)
        return ((1 - m) * images + m * p).clamp(0, 1)


@dataclass
class ClassTrigger:
    index: int
    rungs: list[Rung]  # one per budget of the ladder, ascending

    # the largest budget's trigger: what a one-rung scan reports
    @property
    def delta(self) -> torch.Tensor:
        return self.rungs[-1].delta

    @property
    def asr(self) -> float:
        return self.rungs[-1].asr

    @property
    def final_loss(self) -> float:
        return self.rungs[-1].final_loss


def eval_subset(images: torch.Tensor, settings: InversionSettings) -> torch.Tensor:
    """The seeded subset of the pool every rung is evaluated on (the whole pool if it is small)."""
    n = images.shape[0]
    if settings.eval_images is None or settings.eval_images >= n:
        return images
    gen = torch.Generator().manual_seed(settings.seed + 1)
    return images[torch.randperm(n, generator=gen)[: settings.eval_images].sort().values]


def _batch_order(n: int, settings: InversionSettings) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(settings.seed)
    batches = []
    for _ in range(settings.epochs):
        perm = torch.randperm(n, generator=gen)
        batches.extend(perm.split(settings.batch_size))
    return batches


# Recorded losses are margins at CLIP's own logit scale (100), whatever the checkpoint's: the
# scale multiplies every margin and leaves every prediction alone, so a tower that shrinks it
# would otherwise shrink every statistic under the MAD floor and hide its backdoor. The
# optimisation itself is unaffected: Adam's steps do not depend on the gradient's scale.
CANONICAL_LOGIT_SCALE = 100.0


def _canonical(classifier: PromptedClassifier) -> float:
    return CANONICAL_LOGIT_SCALE / float(classifier.logit_scale)


def _perturbed_logits(classifier: PromptedClassifier, x: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """x: (B, 3, S, S); deltas: (K, 3, S, S) -> logits (K, B, C)."""
    k, b = deltas.shape[0], x.shape[0]
    xs = (x.unsqueeze(0) + deltas.unsqueeze(1)).clamp(0, 1).flatten(0, 1)
    return classifier(xs).view(k, b, -1)


def _evaluate(classifier: PromptedClassifier, images: torch.Tensor, deltas: torch.Tensor, targets: torch.Tensor, settings: InversionSettings) -> tuple[torch.Tensor, torch.Tensor]:
    hits = torch.zeros(len(targets), dtype=torch.float64)
    losses = torch.zeros(len(targets), dtype=torch.float64)
    device = deltas.device
    with torch.no_grad():
        for chunk in images.split(settings.eval_batch_size):
            logits = _perturbed_logits(classifier, chunk.to(device), deltas)
            k, b, c = logits.shape
            tgt = targets.to(device).repeat_interleave(b)
            flat = logits.reshape(k * b, c)
            hits += (flat.argmax(1) == tgt).view(k, b).sum(1).double().cpu()
            losses += (margin(flat, tgt) * _canonical(classifier)).view(k, b).sum(1).double().cpu()
    n = images.shape[0]
    return hits / n, losses / n


def _segments(order: list[torch.Tensor], n_rungs: int) -> list[list[torch.Tensor]]:
    if len(order) < n_rungs:  # a small pool: cycle its batches so that no rung goes unoptimised
        order = [order[i % len(order)] for i in range(n_rungs)]
    per, extra = divmod(len(order), n_rungs)
    out, start = [], 0
    for r in range(n_rungs):
        size = per + (1 if r < extra else 0)
        out.append(order[start : start + size])
        start += size
    return out


def _optimise_group(
    classifier: PromptedClassifier,
    images: torch.Tensor,
    targets: list[int],
    settings: InversionSettings,
    order: list[torch.Tensor],
    on_step: Callable[[], None] | None,
) -> list[ClassTrigger]:
    device = classifier.mean.device
    size = images.shape[-1]
    deltas = torch.zeros(len(targets), 3, size, size, device=device, requires_grad=True)
    opt = torch.optim.Adam([deltas], lr=settings.lr)
    tgt = torch.tensor(targets, device=device)
    held_out = eval_subset(images, settings)
    per_class: list[list[Rung]] = [[] for _ in targets]
    for epsilon, segment in zip(settings.rungs, _segments(order, len(settings.rungs))):
        for idx in segment:
            x = images[idx].to(device, non_blocking=True)
            logits = _perturbed_logits(classifier, x, deltas)
            k, b, c = logits.shape
            per_sample = target_loss(settings.loss, logits.reshape(k * b, c), tgt.repeat_interleave(b)).view(k, b)
            loss = per_sample.mean(dim=1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                deltas.clamp_(-epsilon, epsilon)
            if on_step:
                on_step()
        final = deltas.detach().clone()
        asr, final_loss = _evaluate(classifier, held_out, final, tgt.cpu(), settings)
        for i in range(len(targets)):
            per_class[i].append(Rung(epsilon=epsilon, delta=final[i].cpu(), asr=float(asr[i]), final_loss=float(final_loss[i])))
    return [ClassTrigger(index=t, rungs=per_class[i]) for i, t in enumerate(targets)]


def invert(
    classifier: PromptedClassifier,
    images: torch.Tensor,
    settings: InversionSettings,
    classes: list[int] | None = None,
    class_batch: int = 8,
    progress: Progress | None = None,
) -> list[ClassTrigger]:
    """Fast path: classes optimised ``class_batch`` at a time over the same seeded batch order."""
    classifier.freeze()
    classes = list(range(classifier.n_classes)) if classes is None else list(classes)
    order = _batch_order(images.shape[0], settings)
    # a pool with fewer batches than rungs cycles its batches (_segments): every rung takes a step
    total, done = sum(len(seg) for seg in _segments(order, len(settings.rungs))) * len(classes), 0
    results: list[ClassTrigger] = []
    for start in range(0, len(classes), class_batch):
        group = classes[start : start + class_batch]

        def step(n=len(group)) -> None:
            nonlocal done
            done += n
            if progress:
                progress(done, total, len(classes))

        results.extend(_optimise_group(classifier, images, group, settings, order, step))
    return results


def transfer(classifier: PromptedClassifier, images: torch.Tensor, triggers: list[ClassTrigger], class_batch: int = 8, eval_batch_size: int = 64) -> dict[int, list[tuple[float, float]]]:
    """Every rung of each class's trigger (inverted on some other model) on ``classifier``: its
    ASR and mean margin loss for its class on ``images``, measured as the inversion measures its
    own (canonical logit scale, either trigger family)."""
    classifier.freeze()
    device = classifier.mean.device
    out: dict[int, list[tuple[float, float]]] = {t.index: [] for t in triggers}
    n = images.shape[0]
    with torch.no_grad():
        for r in range(len(triggers[0].rungs) if triggers else 0):
            for start in range(0, len(triggers), class_batch):
                group = triggers[start : start + class_batch]
                tgt = torch.tensor([t.index for t in group], device=device)
                hits = torch.zeros(len(group), dtype=torch.float64)
                losses = torch.zeros(len(group), dtype=torch.float64)
                for chunk in images.split(eval_batch_size):
                    x = chunk.to(device)
                    logits = classifier(torch.cat([t.rungs[r].apply(x) for t in group])).float()
                    per = tgt.repeat_interleave(x.shape[0])
                    hits += (logits.argmax(1) == per).view(len(group), -1).sum(1).double().cpu()
                    losses += (margin(logits, per) * _canonical(classifier)).view(len(group), -1).sum(1).double().cpu()
                for i, t in enumerate(group):
                    out[t.index].append((float(hits[i]) / n, float(losses[i]) / n))
    return out


def invert_reference(
    classifier: PromptedClassifier,
    images: torch.Tensor,
    settings: InversionSettings,
    classes: list[int] | None = None,
) -> list[ClassTrigger]:
    """Straightforward path: one class at a time, full 77-token text encoding through open_clip's
    own blocks, nothing cached, fp32 whatever the classifier's autocast setting."""
    classifier.freeze()
    with classifier.running(fast=False, autocast_dtype=None):
        classes = list(range(classifier.n_classes)) if classes is None else list(classes)
        order = _batch_order(images.shape[0], settings)
        return [r for t in classes for r in _optimise_group(classifier, images, [t], settings, order, None)]


def base_rates(classifier: PromptedClassifier, images: torch.Tensor, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, on the clean pool: the fraction predicted as that class, and the mean margin loss
    of making it the prediction (the trigger-free baseline of each class's final loss)."""
    device = classifier.mean.device
    n_cls = classifier.n_classes
    counts = torch.zeros(n_cls, dtype=torch.float64)
    losses = torch.zeros(n_cls, dtype=torch.float64)
    with torch.no_grad():
        for chunk in images.split(batch_size):
            logits = classifier(chunk.to(device)).float()
            counts += torch.bincount(logits.argmax(1).cpu(), minlength=n_cls).double()
            for t in range(n_cls):
                losses[t] += (margin(logits, torch.full((logits.shape[0],), t, device=device)) * _canonical(classifier)).sum().double().cpu()
    return counts / images.shape[0], losses / images.shape[0]
