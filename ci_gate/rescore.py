"""Re-decide a saved Result under other detection settings, without scanning again.

``result.json`` stores every input the statistics read (per class and per rung of the budget
ladder, the clean reference's values included), so a statistic, ``k``, ``min_asr`` or ``min_asr_gain`` can be
changed after the fact: ``ci-gate report result.json --rescore --set detection.k=3`` and the
detection benchmark's statistic variants both go through :func:`rescore`. Pure, and torch-free
like every reader of a Result.

The file is trusted for what was scanned, nothing more: the policy that decides is the caller's
(:func:`redecision_policy`), so an edited result.json cannot turn its own gate off. Its numbers
still decide; integrity against whoever wrote the file needs a signature or a new scan.
"""

from __future__ import annotations

import math

from pydantic import ValidationError

from ci_gate.errors import InputError
from ci_gate.policy import Policy, settings_sha256
from ci_gate.result import ClassResult, Result
from ci_gate.scoring import STATISTICS, ClassStats, decide_ladder, named_target


def rung_stats(result: Result) -> list[list[ClassStats]]:
    """The ClassStats of every rung (outer) and class (inner), as the scan scored them. A saved
    result is a file anybody could have edited: it must be self-consistent, or it is refused."""
    if len(result.classes) < 2 or any(not c.rungs for c in result.classes):
        raise InputError(None, "this result has no per-rung inputs for two or more classes (written before schema 1.1?); scan again to rescore")
    if [c.index for c in result.classes] != list(range(len(result.classes))):
        raise InputError(None, "class indices are not 0..n-1 in order")
    if [c.name for c in result.classes[: len(result.model.class_names)]] != list(result.model.class_names):
        raise InputError(None, "classes do not match model.class_names")
    if not all(math.isfinite(b) for b in [*result.detection.epsilons, *result.detection.patch_areas]):
        raise InputError(None, "detection.epsilons or detection.patch_areas holds a non-finite budget")
    layout = [("linf", e) for e in result.detection.epsilons] + [("patch", a) for a in result.detection.patch_areas]
    if any([(r.family, r.epsilon) for r in c.rungs] != layout for c in result.classes):
        raise InputError(None, "the classes' rungs do not match detection.epsilons and detection.patch_areas")
    published = result.detection.reference == "published"
    for c in result.classes:
        values = [c.base_rate, c.clean_loss] + [v for r in c.rungs for v in (r.asr, r.final_loss)]
        refs = [c.ref_clean_loss] + [v for r in c.rungs for v in (r.ref_asr, r.ref_final_loss)]
        if not published and any(v is not None for v in refs):
            # a scan without a trusted reference records none: this is an edit that would switch
            # the decision to the weaker reference-free statistic
            raise InputError(None, f"class {c.index} has the clean reference's values though detection.reference is {result.detection.reference!r}")
        if published:
            if any(v is None for v in refs):
                raise InputError(None, f"class {c.index} lacks the clean reference's values though detection.reference is 'published'")
            values += refs
        cross = [r.ref_cross_loss for r in c.rungs]
        if any(v is not None for v in cross):
            # scans before schema 1.5 have none; a scan records it at every rung or at none
            if not published or any(v is None for v in cross):
                raise InputError(None, f"class {c.index} has the delivered trigger's reference loss (ref_cross_loss) at some rungs only, or without a published reference")
            values += cross
        if not all(math.isfinite(v) for v in values):
            raise InputError(None, f"class {c.index} has a non-finite input (NaN or infinity): refusing to re-decide")
    n = len(layout)
    return [
        [
            ClassStats(
                asr=c.rungs[r].asr, base_rate=c.base_rate, final_loss=c.rungs[r].final_loss, clean_loss=c.clean_loss,
                ref_asr=c.rungs[r].ref_asr, ref_final_loss=c.rungs[r].ref_final_loss, ref_clean_loss=c.ref_clean_loss,
                ref_cross_loss=c.rungs[r].ref_cross_loss,
            )
            for c in result.classes
        ]
        for r in range(n)
    ]


# The sections of a policy that shaped the scan (what was inverted, on which images, under which
# seed): the saved per-class values depend on them, so a re-decision keeps the scan's. The rest,
# the decision's settings and report.fail_on among them, comes from whoever re-decides: a saved
# result is a file anybody could have edited, and its own fail_on could switch the gate off.
SCAN_SHAPE = ("seed", "device", "pool", "candidates", "inversion")


def scanned_policy(result: Result) -> Policy:
    """The policy the scan recorded, refused unless its record holds together."""
    try:
        policy = Policy.model_validate(result.policy.settings)
    except ValidationError:
        raise InputError(None, "policy.settings is not a valid policy") from None
    # after validation: a valid policy is shallow, so hashing it cannot exhaust the stack
    if settings_sha256(result.policy.settings) != result.policy.sha256:
        raise InputError(None, "policy.sha256 does not match policy.settings: the scan's recorded policy was edited")
    return policy


def redecision_policy(result: Result, policy: Policy) -> Policy:
    """``policy`` with the scan shape of the result's own policy (SCAN_SHAPE)."""
    scanned = scanned_policy(result).model_dump(mode="json")
    return Policy.model_validate({**policy.model_dump(mode="json"), **{key: scanned[key] for key in SCAN_SHAPE}})


PATCH_SKIPPED = "was not needed"  # in the scan's warning when a modified tower's L-inf ladder flagged a class (ci_gate.scan)


def rescore(result: Result, policy: Policy) -> Result:
    det = policy.detection
    stats = rung_stats(result)
    published = result.detection.reference == "published"
    statistic, k = det.rule(trusted_reference=published)
    if STATISTICS[statistic].needs_transfer and stats[0][0].ref_cross_loss is None:
        raise InputError(None, f"the statistic {statistic!r} needs the delivered triggers' losses on the reference (ref_cross_loss), which scans before schema 1.5 do not record: scan again")
    gain = det.min_asr_gain if published else None
    d = decide_ladder(stats, statistic, k, det.min_asr, det.mad_floor, det.extreme, gain, [r.family for r in result.classes[0].rungs])
    classes: list[ClassResult] = []
    moved = False
    for c, cls in enumerate(result.classes):
        best = d.rung[c]
        rung = cls.rungs[best]
        moved |= cls.epsilon is not None and (rung.family, rung.epsilon) != (cls.family, cls.epsilon)
        classes.append(
            cls.model_copy(
                update={
                    "asr": rung.asr, "final_loss": rung.final_loss, "epsilon": rung.epsilon, "family": rung.family,
                    "statistic": d.statistic[best][c], "anomaly": d.score[c], "status": d.status[c],
                    "rungs": [r.model_copy(update={"statistic": d.statistic[i][c], "anomaly": d.anomaly[i][c]}) for i, r in enumerate(cls.rungs)],
                }
            )
        )
    target = named_target(d, result.encoder.modified)
    shown = d.rung[target] if target is not None else len(result.detection.epsilons) - 1
    # the scan's note on whether the patch family ran is about the scan's own decision
    skipped = any(PATCH_SKIPPED in w for w in result.warnings)
    warnings = [w for w in result.warnings if PATCH_SKIPPED not in w or target == result.target_index]
    if skipped and d.target is None:
        warnings.append(
            "the scan skipped the patch (mask-and-pattern) family because its L-inf ladder flagged a class, which this decision no longer does: "
            "scan again for the patch rungs"
        )
    note = f"re-decided from the saved scan under policy {policy.name!r} (sha256 {policy.sha256()[:12]}); the scan itself used {result.policy.sha256[:12]}"
    warnings.append(note)
    if moved:
        warnings.append("some classes are now decided at another rung than the scan's: their trigger images are the scan's deciding rung's")
    return result.model_copy(
        update={
            "verdict": d.verdict,
            "target_index": target,
            "target_class": None if target is None else result.classes[target].name,
            "classes": classes,
            "detection": result.detection.model_copy(
                update={"statistic": statistic, "k": k, "min_asr": det.min_asr, "min_asr_gain": gain, "extreme": det.extreme, "median": d.median[shown], "mad": d.mad[shown], "unverified_towers": det.unverified_towers}
            ),
            "policy": result.policy.model_copy(update={"name": policy.name, "sha256": policy.sha256(), "settings": policy.model_dump(mode="json")}),
            "warnings": warnings,
        }
    )
