"""What every report alerts on, decided in one place (HTML, SARIF and Markdown read it from here).

A "suspicious" alert says the class is an outlier: its anomaly index is above the policy's k but
its trigger never reached min_asr, or never beat the clean reference's by min_asr_gain (and, on a
ladder, the index stayed below ``extreme``), the rule
of ci_gate.scoring.decision.decide_ladder. Results written before that rule marked a class
suspicious on its trigger ASR alone (the demo's clean model had two at anomaly -0.72); re-rendered
today they would raise an alert whose text is false. ``reported`` shows such a class as ok and
says so in a warning instead.
"""

from __future__ import annotations

from ci_gate.report.sanitize import plain
from ci_gate.result import ClassResult, Detection, Result
from ci_gate.scoring.decision import gain_met

# Shown in the banner and the summary; longer lists are counted, not spelled out.
NAMES_SHOWN = 5


def _classes(n: int) -> str:
    return f"{n} class" if n == 1 else f"{n} classes"


def is_outlier(cls: ClassResult, k: float) -> bool:
    # NaN is never an outlier (the scan refuses NaN statistics); +inf is one
    return cls.anomaly > k


def best_asr(cls: ClassResult) -> float:
    """The trigger's best attack success rate over the budget ladder (the deciding rung's when
    the result carries no rungs): the number min_asr is compared with."""
    return max((r.asr for r in cls.rungs), default=cls.asr)


def best_asr_gain(cls: ClassResult) -> float | None:
    """How much more of the pool the class's trigger sends to it than the clean reference's at
    the same rung, at the rung where that is largest: the number min_asr_gain is compared with.
    None without reference values."""
    gains = [r.asr - r.ref_asr for r in cls.rungs if r.ref_asr is not None]
    return max(gains) if gains else None


def shortfall(cls: ClassResult, det: Detection) -> str:
    """Why an outlier is only suspicious: the condition of the rule its trigger did not meet."""
    asr, gain = best_asr(cls), best_asr_gain(cls)
    if asr < det.min_asr or gain_met(gain, det.min_asr_gain):
        return f"its trigger reaches at most {100 * asr:.1f}% of the pool at any budget (below the minimum ASR of {100 * det.min_asr:.0f}%)"
    return (
        f"its trigger sends at most {100 * gain:.1f}% more of the pool to it than the same inversion on the published model "
        f"at any budget (below the minimum gain of {100 * det.min_asr_gain:.0f}%): the class is as easy to reach there"
    )


def not_outliers(result: Result) -> list[ClassResult]:
    """Classes result.json marks suspicious although they are no outlier (an older scoring rule)."""
    return [c for c in result.suspicious if not is_outlier(c, result.detection.k)]


def reported(result: Result) -> Result:
    """The Result as reports show it. Idempotent: a result that needs no change is returned as is."""
    stale = not_outliers(result)
    if not stale:
        return result
    ids = {c.index for c in stale}
    classes = [c.model_copy(update={"status": "ok"}) if c.index in ids else c for c in result.classes]
    names = ", ".join(f"{plain(c.name)} {c.anomaly:.2f}" for c in stale[:NAMES_SHOWN])
    more = f" and {len(stale) - NAMES_SHOWN} more" if len(stale) > NAMES_SHOWN else ""
    # the explanation first: displays cut long texts, and the names are what may be cut
    note = (
        f"{_classes(len(stale))} marked suspicious in result.json (an older ci-gate's rule: trigger success rate alone) "
        f"{'is no outlier' if len(stale) == 1 else 'are no outliers'} (anomaly index not above k = {result.detection.k:g}) "
        f"and shown as ok: {names}{more}"
    )
    # the scan wrote example pairs for every non-ok class: those of a relabelled class go with it
    examples = [e for e in result.examples if e.class_name not in {c.name for c in stale}]
    return result.model_copy(update={"classes": classes, "examples": examples, "warnings": [*result.warnings, note]})


def alert_names(classes: list[ClassResult]) -> str:
    names = ", ".join(f"“{plain(c.name)}”" for c in classes[:NAMES_SHOWN])
    return names + (f" and {len(classes) - NAMES_SHOWN} more" if len(classes) > NAMES_SHOWN else "")


def headline_warnings(result: Result) -> list[str]:
    """What the reader must not miss, most serious first: the HTML banner lists these above the
    result's own warnings. ``result`` is the reported one."""
    det, enc = result.detection, result.encoder
    lines = []
    if enc.modified:
        lines.append(
            f"Modified encoder: {enc.changes_text}. "
            "Prompt tuning never changes the encoders, so this fails the gate on its own."
        )
    elif enc.status == "unverified":
        lines.append(
            f"Unverified towers: {enc.unverified_reason}, "
            "so an encoder-level backdoor cannot be ruled out"
            + (": this fails the gate on its own (detection.unverified_towers: fail); pass --reference-weights with the published backbone." if result.unverified_fails else ".")
        )
    if result.suspicious:
        n = len(result.suspicious)
        what = "an outlier" if n == 1 else f"{n} outliers"
        lines.append(
            f"Suspicious: {alert_names(result.suspicious)}, {what} with an anomaly index above k = {det.k:g} that fell short "
            f"of a backdoor verdict ({shortfall(result.suspicious[0], det) if n == 1 else 'each one’s numbers are in the class table, its reason in its SARIF alert'}). Worth a human look."
        )
    top = result.target
    if result.target_by_rank and top is not None:
        lines.append(
            f"Likely target: “{plain(top.name)}”, the class the scan ranks first (anomaly index {top.anomaly:.2f}, not flagged as a backdoor target). "
            "Named because the modified tower fails the gate anyway; the ranking, not a finding of its own."
        )
    return lines
