"""Trigger inversion (CLIP-Inspector): one universal L-inf bounded perturbation per candidate class."""

from ci_gate.inversion.losses import target_loss
from ci_gate.inversion.optimize import ClassTrigger, InversionSettings, base_rates, eval_subset, invert, invert_reference, transfer

__all__ = ["ClassTrigger", "InversionSettings", "base_rates", "invert", "eval_subset", "invert_reference", "target_loss", "transfer"]
