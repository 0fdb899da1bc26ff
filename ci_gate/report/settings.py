"""The policy's report section as a scan recorded it in the Result."""

from __future__ import annotations

from ci_gate.result import Result

# The alert settings the reporters read; ``formats`` only chose which reporters ran.
KEYS = ("fail_on", "backdoor_level", "suspicious_level")


def report_settings(result: Result) -> dict[str, str]:
    # Imported here: ci_gate.policy lists the report formats, whose registry loads this package.
    from ci_gate.policy import ReportPolicy

    # Results are re-rendered long after the scan, possibly by a newer ci-gate: fall back to the
    # policy defaults for keys an older result does not carry.
    settings = result.policy.settings.get("report") or {}
    defaults = ReportPolicy().model_dump(mode="json")
    return {key: settings.get(key, defaults[key]) for key in KEYS}
