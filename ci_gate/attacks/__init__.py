"""Backdoor attacks on prompt tuning, for the demo, the benchmark zoo and the canary self-test.

Each attack is a :class:`~ci_gate.attacks.triggers.Trigger` (how a poisoned image looks) plus
the poisoned prompt-tuning run in :mod:`ci_gate.tuning`.
"""

from ci_gate.attacks.triggers import BlendedTrigger, LearnedTrigger, PatchTrigger, Trigger, make_trigger

__all__ = ["BlendedTrigger", "LearnedTrigger", "PatchTrigger", "Trigger", "make_trigger"]
