"""Is the delivered backbone the published one? Prompt tuning never changes the encoders.

A checkpoint that embeds its own towers could carry an encoder-level backdoor (a fine-tuned image
tower), which the ``ref_*`` statistics would cancel if the clean reference were built on that
same tower. So when a published backbone is at hand (``--reference-weights``), every tensor is
compared with it, and a tower that differs is a finding of its own that fails the gate, with
which tensors differ and by how much. Without one, the tower is "unverified": the scan still runs
(absolute statistics, ci_gate.scoring) and the reports say so. The tensors are half of a tower:
its architecture is checked against open_clip's registry or the user's own config
(ci_gate.model.architecture), and an inline one with nothing to check it against leaves the
tower unverified too.

``compare_state_dicts`` is pure: it reads two state dicts and returns numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ci_gate.model.architecture import ArchitectureCheck
from ci_gate.result import EncoderInfo, TensorChange

# An embedded tower is a copy of the published file, so any difference at all is a change somebody
# made; even a half-precision re-save is listed (its relative change, ~1e-3, says what it is),
# because a gate cannot tell rounding from a small targeted edit.
MAX_LISTED = 20


@dataclass(frozen=True)
class TensorDiff:
    name: str
    max_abs: float  # largest element-wise |delivered - published|
    rel_l2: float  # ||delivered - published|| / ||published||
    note: str = ""  # "missing", "unexpected", "shape (a) vs (b)"


@dataclass(frozen=True)
class TowerComparison:
    n_tensors: int
    n_changed: int
    changed: list[TensorDiff]  # largest relative change first, at most MAX_LISTED
    max_rel_l2: float

    @property
    def modified(self) -> bool:
        return self.n_changed > 0


def compare_state_dicts(delivered: dict[str, torch.Tensor], published: dict[str, torch.Tensor]) -> TowerComparison:
    diffs: list[TensorDiff] = []
    for name in sorted(set(delivered) | set(published)):
        if name not in published:
            diffs.append(TensorDiff(name, float("inf"), float("inf"), "not in the published backbone"))
            continue
        if name not in delivered:
            diffs.append(TensorDiff(name, float("inf"), float("inf"), "missing from the delivered backbone"))
            continue
        a, b = delivered[name].detach().double().cpu(), published[name].detach().double().cpu()
        if a.shape != b.shape:
            diffs.append(TensorDiff(name, float("inf"), float("inf"), f"shape {tuple(a.shape)} vs published {tuple(b.shape)}"))
            continue
        delta = a - b
        max_abs = float(delta.abs().max()) if delta.numel() else 0.0
        if not torch.isfinite(delta).all():
            diffs.append(TensorDiff(name, float("inf"), float("inf"), "non-finite values"))
            continue
        norm = float(b.norm())
        rel = float(delta.norm()) / norm if norm > 0 else (0.0 if max_abs == 0 else float("inf"))
        if max_abs > 0:
            diffs.append(TensorDiff(name, max_abs, rel))
    diffs.sort(key=lambda d: (-d.rel_l2, d.name))
    return TowerComparison(
        n_tensors=len(set(delivered) | set(published)),
        n_changed=len(diffs),
        changed=diffs[:MAX_LISTED],
        max_rel_l2=max((d.rel_l2 for d in diffs), default=0.0),
    )


def status_contradiction(status: str, embedded: bool) -> str | None:
    """Why a recorded encoder status cannot belong to a checkpoint that does (not) embed its
    towers, or None. A result.json is a file anybody could have edited: a consumer holding the
    checkpoint checks the one field that would let an embedded tower ship unchecked."""
    if embedded and status == "not_embedded":
        return "says encoder.status 'not_embedded', but the checkpoint embeds its towers: the result was edited or is of another scan"
    return None


def encoder_info(verified: bool, delivered: dict[str, torch.Tensor], published: dict[str, torch.Tensor] | None, reference: str | None, architecture: ArchitectureCheck) -> EncoderInfo:
    """What the Result records about the towers (see the module docstring for the cases).

    ``verified``: the towers were loaded from open_clip's tag or the user's own weights file; an
    embedded tower, or a weights file the checkpoint names, is not. Published weights, when
    given, are compared with the towers in every case. ``architecture``: the delivered
    architecture against a trusted one (ci_gate.model.architecture); with nothing trusted to
    check an inline config against, the towers stay unverified unless their tensors already
    differ."""
    arch = {"architecture": architecture.source, "architecture_changes": list(architecture.changes)}
    if published is None:
        if not verified or not architecture.known:
            return EncoderInfo(status="unverified", **arch)
        return EncoderInfo(status="modified" if architecture.changes else "not_embedded", **arch)
    cmp = compare_state_dicts(delivered, published)
    status = "modified" if cmp.modified or architecture.changes else "unmodified" if architecture.known else "unverified"
    return EncoderInfo(
        status=status,
        reference=reference,
        n_tensors=cmp.n_tensors,
        n_changed=cmp.n_changed,
        max_rel_l2=cmp.max_rel_l2,
        changed=[TensorChange(name=d.name, max_abs=d.max_abs, rel_l2=d.rel_l2, note=d.note) for d in cmp.changed],
        **arch,
    )
