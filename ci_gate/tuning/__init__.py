"""Prompt tuning (CoOp/CoCoOp, encoders frozen), optionally poisoned by an attack."""

from ci_gate.tuning.train import TuneSettings, tune

__all__ = ["TuneSettings", "tune"]
