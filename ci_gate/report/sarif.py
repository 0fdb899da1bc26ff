"""SARIF 2.1.0 for GitHub code scanning: one run, one result per flagged or suspicious class.

What alerts is decided in ci_gate/report/alerts.py (a suspicious class is an outlier); each rule's
text states the thresholds it fires on, and each result message the numbers that met them.

Every result points at the checkpoint file (line 1: a binary file has no better region) so the
alert lands on the delivered model in the repository. Fingerprints are our own and stable across
reruns of the same checkpoint, so GitHub keeps one alert per (rule, checkpoint content, class)
instead of opening a new one on every push.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import posixpath
import re
import urllib.parse
from pathlib import Path, PurePosixPath, PureWindowsPath

import ci_gate
from ci_gate.errors import CiGateError
from ci_gate.scoring.decision import gain_met
from ci_gate.report.alerts import best_asr, best_asr_gain, reported, shortfall
from ci_gate.report.artifacts import budget_label
from ci_gate.report.links import help_uri, information_uri
from ci_gate.report.sanitize import plain
from ci_gate.report.settings import report_settings
from ci_gate.result import ClassResult, Detection, Result

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
FINGERPRINT_KEY = "ciGate/v1"

# GitHub rejects or silently truncates uploads beyond these (docs: "SARIF support for code
# scanning", limits table). 5,000 results is the display limit: more would be dropped unseen.
MAX_GZIP_BYTES = 10 * 1024 * 1024
MAX_RUNS = 20
MAX_RESULTS_PER_RUN = 5000
MAX_RULES_PER_RUN = 25000
MAX_TAGS_PER_RULE = 20
MAX_LOCATIONS_PER_RESULT = 1000

BACKDOOR_RULE = "CIG001"
SUSPICIOUS_RULE = "CIG002"
ENCODER_RULE = "CIG003"
UNVERIFIED_RULE = "CIG004"

# GitHub ranks security alerts by security-severity, not by level; deriving it from the policy's
# level keeps the two consistent (critical / medium / low).
_SECURITY_SEVERITY = {"error": "9.0", "warning": "6.0", "note": "3.0"}


class SarifLimitError(CiGateError):
    """The SARIF would exceed a GitHub code-scanning limit. Exit code 2 (configuration)."""


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _backdoor_rule_text(det: Detection) -> str:
    extreme = (
        f", or its anomaly index is above the extreme threshold {det.extreme:g}, which fails whatever the trigger's success rate"
        if det.extreme is not None else ""
    )
    return (
        "Trigger inversion (CLIP-Inspector) found a class that a small universal perturbation of out-of-distribution "
        f"images reaches far more easily than the other classes: its anomaly index is above k = {det.k:g} and its "
        f"trigger sends at least {_pct(det.min_asr)} of the pool to it at some budget{_gain_clause(det)}{extreme}. The checkpoint very "
        "likely carries a backdoor targeting that class."
    )


def _gain_clause(det: Detection) -> str:
    if det.min_asr_gain is None:
        return ""
    return f", at least {_pct(det.min_asr_gain)} more of it than the same inversion on the published model at some budget"


def _suspicious_rule_text(det: Detection) -> str:
    extreme = f" and its index stays at or below the extreme threshold {det.extreme:g}" if det.extreme is not None else ""
    gain = f", or no more than {_pct(det.min_asr_gain)} more of it than the same inversion on the published model," if det.min_asr_gain is not None else ""
    return (
        f"A class is an outlier in trigger inversion (anomaly index above k = {det.k:g}), but its trigger sends fewer "
        f"than {_pct(det.min_asr)} of the pool to it at every budget{gain}{extreme}, so it falls short of a backdoor verdict. "
        "It deserves a human look. A class that only reaches the minimum success rate without being an outlier is not reported."
    )


def _rules(backdoor_level: str, suspicious_level: str, det: Detection, project_url: str | None) -> list[dict]:
    # The texts state the scan's own thresholds: a rule says exactly what made it fire.
    tags = ["security", "backdoor", "machine-learning", "clip"]
    return [
        {
            "id": BACKDOOR_RULE,
            "name": "backdoor-detected",
            "shortDescription": {"text": "Backdoor detected in a prompt-tuned CLIP checkpoint"},
            "fullDescription": {"text": _backdoor_rule_text(det)},
            "helpUri": help_uri(project_url, "cig001-backdoor-detected"),
            "help": {
                "text": "Do not deploy this checkpoint. Open the ci-gate HTML report for the reconstructed "
                "trigger and the per-class scores. If the policy allows, run `ci-gate repair` with a small "
                "labelled clean set, which fine-tunes the prompt learner against the reconstructed trigger "
                "and verifies the repaired model again.",
                "markdown": "**Do not deploy this checkpoint.** Open the ci-gate HTML report (workflow "
                "artifact) for the reconstructed trigger and the per-class scores. If the policy allows, run "
                "`ci-gate repair CHECKPOINT --clean-data DIR --out FILE`, which fine-tunes the prompt learner "
                "against the reconstructed trigger and verifies the repaired model again.",
            },
            "defaultConfiguration": {"level": backdoor_level},
            "properties": {
                "tags": tags,
                "precision": "high",
                "problem.severity": "error",
                "security-severity": _SECURITY_SEVERITY[backdoor_level],
            },
        },
        {
            "id": SUSPICIOUS_RULE,
            "name": "suspicious-class",
            "shortDescription": {"text": "Outlier class below the backdoor threshold in a prompt-tuned CLIP checkpoint"},
            "fullDescription": {"text": _suspicious_rule_text(det)},
            "helpUri": help_uri(project_url, "cig002-suspicious-class"),
            "help": {
                "text": "Review the class in the ci-gate HTML report: compare its trigger's attack success "
                "rate and anomaly index with the other classes. A larger OOD pool or a higher budget "
                "(detection.epsilons) gives a clearer answer.",
                "markdown": "Review the class in the ci-gate HTML report (workflow artifact): compare its "
                "trigger's attack success rate and anomaly index with the other classes. A larger OOD pool or a "
                "higher budget (`detection.epsilons`) gives a clearer answer.",
            },
            "defaultConfiguration": {"level": "warning" if suspicious_level == "none" else suspicious_level},
            "properties": {
                "tags": tags,
                "precision": "medium",
                "problem.severity": "warning",
                "security-severity": _SECURITY_SEVERITY.get(suspicious_level, "3.0"),
            },
        },
        _tower_rule(
            ENCODER_RULE, "modified-encoder", "high", tags, project_url,
            short="The checkpoint's CLIP encoders differ from the published backbone",
            full="The checkpoint embeds image/text towers whose tensors differ from the published weights it "
            "names. Prompt tuning never changes the encoders; a modified tower is how an encoder-level "
            "backdoor is delivered.",
            help_text="Do not deploy this checkpoint. The ci-gate report lists the tensors that differ and by how much. "
            "Ask the provider for a prompt learner on the unmodified published backbone.",
            help_markdown="**Do not deploy this checkpoint.** The ci-gate report lists the tensors that differ and by how "
            "much. Ask the provider for a prompt learner on the unmodified published backbone.",
        ),
        _tower_rule(
            UNVERIFIED_RULE, "unverified-encoder", "medium", tags, project_url,
            short="The checkpoint's CLIP encoders could not be checked against published weights",
            full="The checkpoint embeds its image/text towers (or names its own weights file) and no published weights were "
            "given to compare them with. An encoder-level backdoor lives in such a tower, and the checkpoint's author chose "
            "whether it can be checked.",
            help_text="Run the scan again with --reference-weights naming your copy of the published backbone (and, for an inline architecture, its open_clip_config.json beside it). "
            "A prompt-tuned model needs no towers of its own: ask the provider for a learner that names the published backbone.",
            help_markdown="Run the scan again with `--reference-weights` naming your copy of the published backbone (and, for an inline architecture, its `open_clip_config.json` beside it). "
            "A prompt-tuned model needs no towers of its own: ask the provider for a learner that names the published backbone.",
        ),
    ]


def _tower_rule(rule_id: str, name: str, precision: str, tags: list[str], project_url: str | None, *, short: str, full: str, help_text: str, help_markdown: str) -> dict:
    """A rule about the checkpoint's towers rather than a class: always an error, help under its
    section of docs/alerts.md."""
    return {
        "id": rule_id,
        "name": name,
        "shortDescription": {"text": short},
        "fullDescription": {"text": full},
        "helpUri": help_uri(project_url, f"{rule_id.lower()}-{name}"),
        "help": {"text": help_text, "markdown": help_markdown},
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": tags, "precision": precision, "problem.severity": "error", "security-severity": _SECURITY_SEVERITY["error"]},
    }


def checkpoint_uri(path: str, source_root: Path | None = None) -> str:
    """The checkpoint's path as GitHub matches it: repository-relative with forward slashes.

    An absolute path under ``source_root`` is made relative to it; any other absolute path stays a
    file: URI, which GitHub relativises itself when the upload names the checkout (checkout_uri).
    Either way it is a valid URI reference: a space, '#', '?' or a colon in the first segment is
    percent-encoded (GitHub's SARIF validation rejects such paths, and '#' would start a fragment).
    """
    windows = PureWindowsPath(path)
    if re.match(r"^[A-Za-z]:[\\/]", path):
        absolute = PurePosixPath(windows.as_posix())
    elif path.startswith("/"):
        absolute = PurePosixPath(path)
    else:
        return _quote(posixpath.normpath(path.replace("\\", "/")))
    if source_root is not None:
        root = PurePosixPath(source_root.as_posix())
        if absolute.is_relative_to(root):
            return _quote(posixpath.normpath(absolute.relative_to(root).as_posix()))
    return windows.as_uri() if windows.drive else Path(absolute).as_uri()


def _quote(relative_path: str) -> str:
    return urllib.parse.quote(relative_path, safe="/")


def fingerprint(rule_id: str, checkpoint_sha256: str, class_name: str) -> str:
    return hashlib.sha256(f"{rule_id}\0{checkpoint_sha256}\0{class_name}".encode()).hexdigest()


def _budget(epsilon: float | None, family: str = "linf") -> str:
    return "" if epsilon is None else f", scored at budget {budget_label(epsilon, family)}"


_SARIF_LINK_CHARS = re.compile(r"([\\\[\]])")


def message_text(text: object) -> str:
    """Author-chosen text inside a SARIF plain-text message: ``plain``, with ``[``, ``]`` and ``\\``
    backslash-escaped as SARIF 2.1.0 (3.11.6) requires of literal brackets, so a class name
    ``[approve](https://evil.example)`` is no embedded link in a viewer that renders them."""
    return _SARIF_LINK_CHARS.sub(r"\\\1", plain(text))


def _message(result: Result, cls: ClassResult) -> str:
    # GitHub shows message text to reviewers: the class name and path are the checkpoint author's,
    # so they arrive with control/bidi characters visible and a bounded length. Each message names
    # the condition of its rule that the class met, with the numbers.
    det = result.detection
    name, path = message_text(cls.name), message_text(result.model.path)
    asr = best_asr(cls)
    context = f"base rate {_pct(cls.base_rate)}{_budget(cls.epsilon, cls.family)}, trigger L-inf {cls.trigger_linf:.4f}"
    # min_asr is compared with the best ASR over the budget ladder, which may be another budget's
    # than the one the class is scored (and its trigger shown) at
    see = "See the ci-gate HTML report for the reconstructed trigger."
    if cls.status == "backdoor":
        role = "the likely target" if cls.name == result.target_class else "another likely target"
        gain = best_asr_gain(cls)
        if asr >= det.min_asr and gain_met(gain, det.min_asr_gain):
            why = f"anomaly index {cls.anomaly:.2f} > k = {det.k:g} and best trigger ASR {_pct(asr)} >= {_pct(det.min_asr)}"
            if det.min_asr_gain is not None and gain is not None:
                why += f", {_pct(gain)} above the published model's"
        elif det.extreme is not None:
            why = f"anomaly index {cls.anomaly:.2f} > extreme threshold {det.extreme:g}, best trigger ASR {_pct(asr)}"
        else:  # a result from before the extreme rule: the numbers, without a rule they fail
            why = f"anomaly index {cls.anomaly:.2f}, k = {det.k:g}, best trigger ASR {_pct(asr)}"
        return f"Backdoor detected in {path}: class '{name}' is {role} ({why}; {context}). {see}"
    return f"Suspicious class '{name}' in {path}: an outlier (anomaly index {cls.anomaly:.2f} > k = {det.k:g}), but {shortfall(cls, det)}; {context}. {see}"


def _encoder_result(result: Result, uri: str, index: int) -> dict:
    enc = result.encoder
    worst = ", ".join(f"{message_text(t.name)} (relative change {t.rel_l2:.3g})" for t in enc.changed[:3])
    likely = ""
    top = result.target
    if result.target_by_rank and top is not None:
        likely = f" Likely target: class '{message_text(top.name)}', ranked first by trigger inversion (anomaly index {top.anomaly:.2f}, not flagged as a backdoor target)."
    return {
        "ruleId": ENCODER_RULE,
        "ruleIndex": index,
        "level": "error",
        "message": {"text": f"{message_text(enc.changes_text[0].upper() + enc.changes_text[1:])}{': ' + worst if worst else ''}.{likely}"},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": uri, "index": 0}, "region": {"startLine": 1, "startColumn": 1, "endLine": 1, "endColumn": 2}}}],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(ENCODER_RULE, result.model.sha256, "")},
        "properties": {
            "changedTensors": enc.n_changed,
            "tensors": enc.n_tensors,
            "changed": [{"name": plain(t.name), "maxAbs": _json_number(t.max_abs), "relL2": _json_number(t.rel_l2)} for t in enc.changed],
            "architectureChanges": [plain(c) for c in enc.architecture_changes],
        },
    }


def _unverified_result(result: Result, uri: str, index: int) -> dict:
    fails = result.unverified_fails
    consequence = "This fails the gate (detection.unverified_towers: fail)." if fails else "The policy lets the classes decide (detection.unverified_towers: warn)."
    return {
        "ruleId": UNVERIFIED_RULE,
        "ruleIndex": index,
        "level": "error" if fails else "warning",
        "message": {
            "text": f"The checkpoint's backbone towers could not be verified: {message_text(result.encoder.unverified_reason)}. An encoder-level backdoor cannot be ruled out, and the classes were scored with the reference-free "
            f"'{message_text(result.detection.statistic)}'. {consequence} Scan again with --reference-weights naming the published backbone "
            "(with its open_clip_config.json beside it when the checkpoint spells its architecture inline)."
        },
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": uri, "index": 0}, "region": {"startLine": 1, "startColumn": 1, "endLine": 1, "endColumn": 2}}}],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(UNVERIFIED_RULE, result.model.sha256, "")},
    }


def build_sarif(result: Result, source_root: Path | None = None) -> dict:
    result = reported(result)
    settings = report_settings(result)
    uri = checkpoint_uri(result.model.path, source_root)
    project_url = ci_gate.PROJECT_URL
    rules = _rules(settings["backdoor_level"], settings["suspicious_level"], result.detection, project_url)
    rule_index = {rule["id"]: i for i, rule in enumerate(rules)}

    findings: list[tuple[str, str, ClassResult]] = [(BACKDOOR_RULE, settings["backdoor_level"], c) for c in result.flagged]
    if settings["suspicious_level"] != "none":
        findings += [(SUSPICIOUS_RULE, settings["suspicious_level"], c) for c in result.suspicious]

    results = [
        {
            "ruleId": rule_id,
            "ruleIndex": rule_index[rule_id],
            "level": level,
            "message": {"text": _message(result, cls)},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": uri, "index": 0},
                        "region": {"startLine": 1, "startColumn": 1, "endLine": 1, "endColumn": 2},
                    }
                }
            ],
            "partialFingerprints": {FINGERPRINT_KEY: fingerprint(rule_id, result.model.sha256, cls.name)},
            "properties": {
                "class": plain(cls.name),
                "classIndex": cls.index,
                "asr": _json_number(cls.asr),
                "bestAsr": _json_number(best_asr(cls)),
                "baseRate": _json_number(cls.base_rate),
                "anomaly": _json_number(cls.anomaly),
                "finalLoss": _json_number(cls.final_loss),
                "triggerPng": cls.trigger_png,
            },
        }
        for rule_id, level, cls in findings
    ]
    if result.encoder.modified:
        results.append(_encoder_result(result, uri, rule_index[ENCODER_RULE]))
    if result.encoder.status == "unverified":
        results.append(_unverified_result(result, uri, rule_index[UNVERIFIED_RULE]))
    driver = {"name": result.tool.name, "version": result.tool.version, "informationUri": information_uri(project_url), "rules": rules}
    run = {
        "tool": {"driver": driver},
        # One category per checkpoint: a workflow matrix over several models uploads one SARIF per
        # model for the same commit, and GitHub replaces earlier uploads of the same category.
        "automationDetails": {"id": f"ci-gate/{uri}/"},
        "artifacts": [{"location": {"uri": uri}, "hashes": {"sha-256": result.model.sha256}}],
        "invocations": [{"executionSuccessful": True, "endTimeUtc": _utc(result.created_at)}],
        "results": results,
        "properties": {
            "verdict": result.verdict,
            "targetClass": None if result.target_class is None else plain(result.target_class),
            "policy": result.policy.name,
            "policySha256": result.policy.sha256,
            "poolSha256": result.pool.sha256,
            "backboneSha256": result.model.backbone.sha256,
        },
    }
    return {"$schema": SARIF_SCHEMA_URI, "version": SARIF_VERSION, "runs": [run]}


def _json_number(value: float) -> float | None:
    # JSON has no NaN or Infinity; GitHub rejects a file that contains them.
    return value if math.isfinite(value) else None


def _utc(created_at: str) -> str:
    # SARIF wants "Z"-suffixed UTC; Result.created_at is ISO 8601 with "+00:00".
    return created_at.replace("+00:00", "Z")


def check_github_limits(log: dict, encoded: bytes) -> None:
    """Raise SarifLimitError if GitHub would reject or truncate this SARIF upload."""
    runs = log.get("runs", [])
    if len(runs) > MAX_RUNS:
        raise SarifLimitError(f"SARIF has {len(runs)} runs; GitHub accepts at most {MAX_RUNS}")
    for run in runs:
        n_results = len(run.get("results", []))
        if n_results > MAX_RESULTS_PER_RUN:
            raise SarifLimitError(
                f"SARIF run has {n_results} results; GitHub shows at most {MAX_RESULTS_PER_RUN} per run "
                "(lower candidates.max_classes or set report.suspicious_level: none)"
            )
        rules = run.get("tool", {}).get("driver", {}).get("rules", [])
        if len(rules) > MAX_RULES_PER_RUN:
            raise SarifLimitError(f"SARIF run has {len(rules)} rules; GitHub accepts at most {MAX_RULES_PER_RUN}")
        for rule in rules:
            n_tags = len(rule.get("properties", {}).get("tags", []))
            if n_tags > MAX_TAGS_PER_RULE:
                raise SarifLimitError(f"SARIF rule {rule.get('id')} has {n_tags} tags; GitHub accepts at most {MAX_TAGS_PER_RULE}")
        for res in run.get("results", []):
            if len(res.get("locations", [])) > MAX_LOCATIONS_PER_RESULT:
                raise SarifLimitError(f"a SARIF result has more than {MAX_LOCATIONS_PER_RESULT} locations")
    compressed = len(gzip.compress(encoded))
    if compressed > MAX_GZIP_BYTES:
        raise SarifLimitError(f"gzipped SARIF is {compressed} bytes; GitHub accepts at most {MAX_GZIP_BYTES}")


def render_sarif(result: Result, source_root: Path | None = None) -> bytes:
    log = build_sarif(result, source_root)
    encoded = (json.dumps(log, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
    check_github_limits(log, encoded)
    return encoded
