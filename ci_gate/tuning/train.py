"""The prompt-tuning loop. Only the prompt learner (and a learnable trigger) receives gradients.

There is one such loop, :func:`ci_gate.attacks.plant.poison_prompt_tuning`; :func:`tune` is its
plain front door for the recipes and repair: clean when no trigger and target are given, else
poisoned as every attack is (triggered copies of non-target images, relabelled to the target, a
learnable BadCLIP trigger optimised in the same step and projected back into its L-inf ball).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ci_gate.attacks.plant import AttackSpec, PoisonSettings, poison_prompt_tuning
from ci_gate.attacks.triggers import Trigger
from ci_gate.data import LabeledImages
from ci_gate.model.classifier import PromptedClassifier


@dataclass(frozen=True)
class TuneSettings(PoisonSettings):
    """The loop's settings, plus the one attack the recipes plant: ``poison_rate`` triggered
    copies per clean image, relabelled to ``target`` (None: a clean run)."""

    poison_rate: float = 0.1
    target: int | None = None


def tune(
    classifier: PromptedClassifier,
    data: LabeledImages,
    settings: TuneSettings,
    trigger: Trigger | None = None,
    log: Callable[[str], None] | None = None,
) -> PromptedClassifier:
    """Train ``classifier.learner`` in place. ``trigger`` with ``settings.target`` poisons the run."""
    spec = None
    if trigger is not None and settings.target is not None:
        spec = AttackSpec(trigger.name, trigger.name, poison_rate=settings.poison_rate)
    return poison_prompt_tuning(classifier, data, settings, spec, trigger, settings.target, log)
