"""Backdoor attacks on prompt-tuned (and zero-shot) CLIP, for the demo, the benchmark zoo and the
canary self-test.

Each attack is a :class:`~ci_gate.attacks.triggers.Trigger` (how a poisoned image looks: images
in [0, 1] -> images in [0, 1]) plus a planting recipe in :mod:`ci_gate.attacks.plant`
(:data:`~ci_gate.attacks.plant.ATTACKS`: BadCLIP, adaptive BadCLIP, Blended, WaNet, SIBA-like
sparse, BadNets, encoder-level).
"""

from ci_gate.attacks.plant import (
    ATTACKS,
    AttackSpec,
    PoisonSettings,
    attack_spec,
    build_trigger,
    poison_encoder,
    poison_prompt_tuning,
)
from ci_gate.attacks.triggers import (
    BlendedTrigger,
    LearnedTrigger,
    PatchTrigger,
    SparseTrigger,
    Trigger,
    WaNetTrigger,
    make_trigger,
    trigger_names,
)

__all__ = [
    "ATTACKS",
    "AttackSpec",
    "BlendedTrigger",
    "LearnedTrigger",
    "PatchTrigger",
    "PoisonSettings",
    "SparseTrigger",
    "Trigger",
    "WaNetTrigger",
    "attack_spec",
    "build_trigger",
    "make_trigger",
    "poison_encoder",
    "poison_prompt_tuning",
    "trigger_names",
]
