"""Trigger inversion (CLIP-Inspector): one universal L-inf bounded perturbation per candidate class."""

from ci_gate.inversion.losses import target_loss
from ci_gate.inversion.optimize import ClassTrigger, InversionSettings, base_rates, invert, invert_reference

__all__ = ["ClassTrigger", "InversionSettings", "base_rates", "invert", "invert_reference", "target_loss"]
