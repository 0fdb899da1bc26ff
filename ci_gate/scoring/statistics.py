"""The per-class detection statistics: one registry of pure functions. Larger means the class is
easier to force with a universal trigger. This is where to add or change a statistic.

Each function reads only a class's :class:`ClassStats`, which ``result.json`` stores whole, so a
saved result can be re-decided under any statistic here without scanning again
(``ci-gate report result.json --rescore --set detection.statistic=...``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ClassStats:
    asr: float
    base_rate: float
    final_loss: float
    clean_loss: float = 0.0  # mean margin loss of the clean pool for this class
    # clean reference: the published backbone with hand-written prompts ("a photo of a {class}."),
    # inverted with the same settings and pool; None when no reference was run
    ref_asr: float | None = None
    ref_final_loss: float | None = None
    ref_clean_loss: float | None = None
    # the delivered model's own trigger (this rung's) on the clean reference: its margin loss
    ref_cross_loss: float | None = None

    @property
    def has_reference(self) -> bool:
        return self.ref_asr is not None and self.ref_final_loss is not None and self.ref_clean_loss is not None


@dataclass(frozen=True)
class Statistic:
    name: str
    fn: Callable[[ClassStats], float]
    needs_reference: bool
    doc: str
    needs_transfer: bool = False  # reads ref_cross_loss (scans from schema 1.5 on)


STATISTICS: dict[str, Statistic] = {}


def _statistic(name: str, needs_reference: bool = False, needs_transfer: bool = False):
    def register(fn: Callable[[ClassStats], float]) -> Callable[[ClassStats], float]:
        STATISTICS[name] = Statistic(name, fn, needs_reference or needs_transfer, (fn.__doc__ or "").strip(), needs_transfer)
        return fn

    return register


@_statistic("neg_loss")
def _neg_loss(s: ClassStats) -> float:
    """Minus the final margin loss: how strongly the trigger makes the class the prediction."""
    return -s.final_loss


@_statistic("asr")
def _asr(s: ClassStats) -> float:
    """The trigger's attack success rate on the pool."""
    return s.asr


@_statistic("asr_gain")
def _asr_gain(s: ClassStats) -> float:
    """Trigger ASR minus the share of clean pool images already predicted as the class."""
    return s.asr - s.base_rate


@_statistic("loss_drop")
def _loss_drop(s: ClassStats) -> float:
    """How far the trigger moves the margin; a class the pool already leans towards gains little."""
    return s.clean_loss - s.final_loss


@_statistic("ref_loss_gain", needs_reference=True)
def _ref_loss_gain(s: ClassStats) -> float:
    """How much lower the delivered model's inversion loss is than the clean reference's on the
    same backbone: a backdoor makes its target easier than CLIP itself."""
    return s.ref_final_loss - s.final_loss


@_statistic("ref_asr_gain", needs_reference=True)
def _ref_asr_gain(s: ClassStats) -> float:
    """Trigger ASR minus the clean reference's trigger ASR."""
    return s.asr - s.ref_asr


@_statistic("ref_drop_gain", needs_reference=True)
def _ref_drop_gain(s: ClassStats) -> float:
    """The trigger's margin drop minus the clean reference's."""
    return (s.clean_loss - s.final_loss) - (s.ref_clean_loss - s.ref_final_loss)


@_statistic("ref_specificity", needs_transfer=True)
def _ref_specificity(s: ClassStats) -> float:
    """How much more the delivered model gives in to its own trigger than the clean reference
    does to the same trigger. A class that CLIP itself makes easy (a natural attractor) is
    reached by a trigger that works on both; a backdoor planted in the prompts answers a trigger
    the backbone with hand-written prompts does not (and an attacker who anchors the trigger
    against the published model, to pass ``ref_loss_gain``, makes this larger)."""
    return s.ref_cross_loss - s.final_loss


REFERENCE_STATISTICS = tuple(n for n, st in STATISTICS.items() if st.needs_reference)


def class_statistic(kind: str, stats: ClassStats) -> float:
    if kind not in STATISTICS:
        raise ValueError(f"unknown statistic {kind!r} (known: {', '.join(STATISTICS)})")
    st = STATISTICS[kind]
    if st.needs_reference and not stats.has_reference:
        raise ValueError(f"statistic {kind!r} needs the clean-reference inversion (ref_* fields)")
    if st.needs_transfer and stats.ref_cross_loss is None:
        raise ValueError(f"statistic {kind!r} needs the delivered triggers' losses on the clean reference (ref_cross_loss, scans from schema 1.5 on)")
    return st.fn(stats)
