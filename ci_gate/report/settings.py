"""The policy's report section as a scan recorded it in the Result."""

from __future__ import annotations

from ci_gate.result import Result


def report_settings(result: Result) -> dict[str, str]:
    # Results are re-rendered long after the scan, possibly by a newer ci-gate: fall back to the
    # policy defaults for keys an older result does not carry.
    settings = result.policy.settings.get("report") or {}
    return {
        "fail_on": settings.get("fail_on", "backdoor"),
        "backdoor_level": settings.get("backdoor_level", "error"),
        "suspicious_level": settings.get("suspicious_level", "warning"),
    }
