"""Prompt tuning (CoOp/CoCoOp, encoders frozen), optionally poisoned by an attack."""

from ci_gate.tuning.train import TuneSettings, accuracy, attack_success_rate, tune

__all__ = ["TuneSettings", "accuracy", "attack_success_rate", "tune"]
