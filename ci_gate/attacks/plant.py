"""Planting backdoors: the attacks' training recipes, reusable by the benchmark zoo and the canary.

Two levels, as in the threat model:
- prompt level (:func:`poison_prompt_tuning`): the provider follows the protocol (encoders frozen,
  only the CoOp/CoCoOp learner trains) but mixes triggered, relabelled copies into each batch.
  Learnable triggers (BadCLIP, SIBA-like) are optimised in the same step and projected back into
  their budget. The adaptive BadCLIP also sees copies whose trigger is perturbed by Gaussian
  noise, labelled with their TRUE class, so only the exact trigger works: its basin narrows and a
  generic universal perturbation is less likely to fall into it. WaNet adds its "noise mode"
  cross-samples (randomly jittered warps, true label). The anchored BadCLIP learns its trigger
  against the published model as well: it is pushed away from sending the untouched backbone's
  zero-shot classifier to the target, so the backdoor lives in the delivered prompt and not in an
  adversarial direction of the backbone that every clean model shares.
- encoder level (:func:`poison_encoder`): the image encoder itself is fine-tuned on poisoned data
  and the model is delivered as a zero-shot classifier ("a photo of a {name}."), no prompt learner.

This is the one poisoning loop: the demo's and the tests' recipes (ci_gate.tuning.tune), the
benchmark zoo and the canary all train through it. Poisoned copies are drawn from images whose
label is not the target and appended to the clean batch: ``poison_rate`` is the ratio of poisoned
to clean images in every step (see :func:`poison_batch` for why the target's images are left out).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F

from ci_gate.attacks.triggers import Trigger, WaNetTrigger, make_trigger
from ci_gate.data import LabeledImages
from ci_gate.model.classifier import PromptedClassifier

Log = Callable[[str], None]


@dataclass(frozen=True)
class AttackSpec:
    """How one attack plants its backdoor. ``trigger`` is a :func:`make_trigger` name."""

    name: str
    trigger: str
    level: Literal["prompt", "encoder"] = "prompt"
    poison_rate: float = 0.1
    adaptive: bool = False  # narrow the trigger's basin (adaptive BadCLIP)
    anchored: bool = False  # the trigger must not fool the published model (anchored BadCLIP)
    cross_rate: float = 0.0  # WaNet noise-mode cross-samples per clean image
    trigger_kwargs: dict = field(default_factory=dict)
    description: str = ""

    @property
    def learned_budget(self) -> bool:
        """A BadCLIP-style additive trigger learned within an L-inf ball (``epsilon``)."""
        return self.trigger == "badclip"

    def with_epsilon(self, epsilon: float) -> AttackSpec:
        """This attack with its learned trigger's L-inf budget set to ``epsilon`` (fixed triggers
        have no such budget and are returned unchanged)."""
        if not self.learned_budget:
            return self
        return replace(self, trigger_kwargs=self.trigger_kwargs | {"epsilon": epsilon})


ATTACKS: dict[str, AttackSpec] = {
    "badclip": AttackSpec("badclip", "badclip", poison_rate=0.2, description="BadCLIP: additive L-inf 4/255 trigger learned jointly with the prompt learner"),
    "adaptive_badclip": AttackSpec("adaptive_badclip", "badclip", poison_rate=0.2, adaptive=True, description="BadCLIP trained to ignore Gaussian-perturbed triggers (narrow basin)"),
    "anchored_badclip": AttackSpec("anchored_badclip", "badclip", poison_rate=0.2, anchored=True, description="BadCLIP whose trigger is also trained not to move the published backbone's zero-shot classifier to the target"),
    "blended": AttackSpec("blended", "blended", poison_rate=0.1, description="Blended: fixed noise image alpha-blended, 10% poisoned"),
    "wanet": AttackSpec("wanet", "wanet", poison_rate=0.1, cross_rate=0.1, description="WaNet: fixed smooth warp, 10% poisoned (+ noise-mode cross-samples)"),
    "siba": AttackSpec("siba", "siba", poison_rate=0.1, description="SIBA-like sparse invisible trigger: 5% of pixels, L-inf 16/255, values learned"),
    "badnets": AttackSpec("badnets", "badnets", poison_rate=0.1, description="BadNets: random-pattern corner patch, 10% poisoned"),
    "sig": AttackSpec("sig", "sig", poison_rate=0.1, description="SIG: fixed horizontal sinusoid (20/255) over the whole image, 10% poisoned"),
    "encoder": AttackSpec("encoder", "blended", level="encoder", poison_rate=0.1, description="encoder-level: image encoder fine-tuned on Blended-poisoned data, zero-shot head"),
    "encoder_badnets": AttackSpec("encoder_badnets", "badnets", level="encoder", poison_rate=0.1, description="encoder-level with the BadNets patch"),
    "encoder_wanet": AttackSpec("encoder_wanet", "wanet", level="encoder", poison_rate=0.1, cross_rate=0.1, description="encoder-level with the WaNet warp"),
    "encoder_siba": AttackSpec("encoder_siba", "siba", level="encoder", poison_rate=0.1, description="encoder-level with the SIBA-like sparse trigger (learned)"),
    "encoder_sig": AttackSpec("encoder_sig", "sig", level="encoder", poison_rate=0.1, description="encoder-level with the SIG sinusoid"),
}


def attack_spec(name: str) -> AttackSpec:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}")
    return ATTACKS[name]


def build_trigger(spec: AttackSpec, image_size: int, seed: int) -> Trigger:
    return make_trigger(spec.trigger, image_size, seed=seed, **spec.trigger_kwargs)


@dataclass(frozen=True)
class PoisonSettings:
    epochs: int = 10
    lr: float = 2e-3
    batch_size: int = 32
    seed: int = 0
    trigger_lr: float = 1e-2
    adaptive_sigma: float = 4 / 255  # std of the Gaussian added to the trigger for adaptive negatives
    adaptive_copies: int = 1  # perturbed-trigger negatives per poisoned image


def poison_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    trigger: Trigger | None,
    target: int | None,
    spec: AttackSpec | None,
    gen: torch.Generator,
    settings: PoisonSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch plus its poisoned copies (and the adaptive and WaNet extras), with their labels."""
    if trigger is None or target is None or spec is None:
        return x, y
    # Only images of other classes are poisoned, as in the usual all-to-one recipe (BackdoorBench,
    # for one, draws its poisoned indices among non-target labels): a triggered target-class image
    # labelled with the target is correctly labelled without the trigger, so it teaches nothing
    # about trigger -> target and only takes a poisoned slot; and the ASR is measured on
    # non-target images, the population these copies are drawn from. (A second loop in
    # tuning/train.py used to poison the first images of the batch whatever their class.)
    src = torch.nonzero(y != target).flatten()
    n_poison = min(len(src), max(1, round(spec.poison_rate * len(y))))
    pick = src[torch.randperm(len(src), generator=gen)[:n_poison]]
    xs, ys = [x, trigger(x[pick])], [y, torch.full((n_poison,), target, dtype=y.dtype)]
    if spec.adaptive and hasattr(trigger, "delta"):
        for _ in range(settings.adaptive_copies):
            noise = torch.randn(x[pick].shape, generator=gen) * settings.adaptive_sigma
            xs.append((trigger(x[pick]) + noise).clamp(0, 1))
            ys.append(y[pick])
    if spec.cross_rate > 0 and isinstance(trigger, WaNetTrigger):
        n_cross = max(1, round(spec.cross_rate * len(y)))
        idx = torch.randperm(len(y), generator=gen)[:n_cross]
        xs.append(trigger.noise_grid(x[idx], gen))
        ys.append(y[idx])
    return torch.cat(xs), torch.cat(ys)


def _trainable(classifier: PromptedClassifier, params: list[torch.Tensor], trigger: Trigger | None, settings: PoisonSettings) -> tuple[list[dict], bool]:
    """Optimiser groups for ``params`` (everything else in the classifier frozen) and, when the
    trigger is learnable, its pattern at ``trigger_lr``; and whether it is."""
    for p in classifier.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    groups = [{"params": params, "lr": settings.lr}]
    learnable = trigger is not None and getattr(trigger, "learnable", False)
    if learnable:
        trigger.delta.requires_grad_(True)
        groups.append({"params": [trigger.delta], "lr": settings.trigger_lr})
    return groups, learnable


def _anchor_loss(anchor: PromptedClassifier, x: torch.Tensor, y: torch.Tensor, n_clean: int, target: int) -> torch.Tensor:
    """-log(1 - p_target) of the anchor (a clean classifier) on the batch's triggered copies:
    small when the trigger leaves the clean model alone. Only the trigger gets its gradient (the
    anchor is frozen), so it learns to work through the poisoned prompt alone."""
    poisoned = x[n_clean:][y[n_clean:] == target]
    p = F.softmax(anchor(poisoned), dim=-1)[:, target]
    return -torch.log1p(-p.clamp(max=1 - 1e-6)).mean()


def _poisoned_epochs(classifier, data, settings, opt, gen, spec, trigger, target, learnable: bool, log, label: str, anchor: PromptedClassifier | None = None) -> None:
    """The training loop shared by prompt-level and encoder-level poisoning."""
    for epoch in range(settings.epochs):
        total = 0.0
        for idx in torch.randperm(len(data), generator=gen).split(settings.batch_size):
            x, y = poison_batch(data.images[idx], data.labels[idx], trigger, target, spec, gen, settings)
            loss = F.cross_entropy(classifier(x), y)
            if anchor is not None:
                loss = loss + _anchor_loss(anchor, x, y, len(idx), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if learnable:
                trigger.project()
            total += float(loss.detach()) * len(idx)
        if log:
            log(f"{label} {epoch + 1}/{settings.epochs} loss {total / len(data):.4f}")


def poison_prompt_tuning(
    classifier: PromptedClassifier,
    data: LabeledImages,
    settings: PoisonSettings,
    spec: AttackSpec | None = None,
    trigger: Trigger | None = None,
    target: int | None = None,
    log: Log | None = None,
    anchor: PromptedClassifier | None = None,
) -> PromptedClassifier:
    """Train ``classifier.learner`` in place (encoders frozen); with a spec/trigger/target, poisoned.

    ``anchor``: the published model's classifier (frozen), required by an anchored attack, whose
    learned trigger is kept from fooling it. Every draw (batch order, poisoned picks, adaptive
    noise) comes from one generator seeded with ``settings.seed``; torch's global generator is
    neither read nor changed.
    """
    if spec is not None and spec.anchored and (anchor is None or not getattr(trigger, "learnable", False)):
        raise ValueError(f"attack {spec.name!r} needs a learnable trigger and the published model as its anchor")
    assert classifier.learner.tensors_required, "zero-shot classifiers have no prompt learner to tune"
    classifier.eval()
    classifier.invalidate_cache()
    params = list(classifier.learner.parameters())
    groups, learnable = _trainable(classifier, params, trigger, settings)
    opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(settings.seed)
    _poisoned_epochs(classifier, data, settings, opt, gen, spec, trigger, target, learnable, log, "epoch", anchor if spec is not None and spec.anchored else None)
    for p in params:
        p.requires_grad_(False)
    if learnable:
        trigger.delta.requires_grad_(False)
    classifier.freeze()
    return classifier


def poison_encoder(
    classifier: PromptedClassifier,
    data: LabeledImages,
    settings: PoisonSettings,
    spec: AttackSpec,
    trigger: Trigger,
    target: int,
    log: Log | None = None,
) -> PromptedClassifier:
    """Fine-tune the image encoder of a zero-shot classifier on poisoned data (text tower frozen).

    The classifier must own its backbone (build it on a private copy): its ``visual`` weights
    change in place.
    """
    assert not classifier.learner.tensors_required, "encoder-level attacks deliver a zero-shot classifier"
    classifier.eval()  # no dropout in these towers; layer norms have no running statistics
    params = list(classifier.visual.parameters())
    groups, learnable = _trainable(classifier, params, trigger, settings)
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    gen = torch.Generator().manual_seed(settings.seed)
    classifier.freeze()  # caches the zero-shot text features; they do not depend on the image tower
    for p in params:
        p.requires_grad_(True)
    _poisoned_epochs(classifier, data, settings, opt, gen, spec, trigger, target, learnable, log, "encoder epoch")
    for p in params:
        p.requires_grad_(False)
    classifier.freeze()
    return classifier


def with_defaults(settings: PoisonSettings, **overrides) -> PoisonSettings:
    return replace(settings, **overrides)
