"""The Result: one versioned, serialisable record of a scan.

It is the only thing reporters and gate actions read, and it never imports torch, so a saved
``result.json`` can be re-rendered anywhere (``ci-gate report result.json``). Artifact paths
(trigger PNGs, example images) are relative to the folder that holds ``result.json``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ci_gate.errors import InputError
from ci_gate.io import atomic_write_text, read_bounded
from ci_gate.learners import LearnerKind

RESULT_SCHEMA_VERSION = "1.6"  # 1.6: detection.unverified_towers, encoder.architecture(_changes); 1.5: ref_cross_loss (the delivered trigger on the reference); 1.2: losses at the canonical logit scale (ci_gate.inversion.optimize); 1.3: patch-family rungs; 1.4: detection.min_asr_gain, targets named by rank on a modified tower

Verdict = Literal["clean", "backdoor"]
ClassStatus = Literal["ok", "suspicious", "backdoor"]


class _Model(BaseModel):
    # A degenerate scan can produce NaN or +-inf scores. JSON has no such numbers: write them as
    # the strings "NaN", "Infinity", "-Infinity" (strict JSON that loads back to the same float)
    # rather than pydantic's default null, which a float field cannot read back.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")


def _null_is_nan(value: object) -> object:
    # result.json files written before the "strings" setting above hold null for a non-finite
    # score; which one is lost, so read it back as NaN.
    return float("nan") if value is None else value


class ToolInfo(_Model):
    name: str = "ci-gate"
    version: str


class BackboneInfo(_Model):
    architecture: str = Field(description="open_clip architecture name, or 'inline' for an embedded config")
    pretrained: str | None = Field(None, description="pretrained tag or weights file reference")
    sha256: str | None = None
    quick_gelu: bool = False


class ModelInfo(_Model):
    path: str = Field(description="checkpoint path as given (repository-relative in CI)")
    sha256: str
    format_version: int
    learner: LearnerKind
    # the learner's own settings (CoOp's CSC and class-token position, MaPLe's depth), as checked
    learner_options: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    class_names: list[str]
    n_ctx: int
    backbone: BackboneInfo

    @property
    def learner_label(self) -> str:
        """e.g. ``coop (csc=True, class_token_position=middle)``: the kind and its settings."""
        shown = ", ".join(f"{k}={v}" for k, v in sorted(self.learner_options.items()))
        return f"{self.learner} ({shown})" if shown else self.learner


class TensorChange(_Model):
    name: str
    max_abs: float
    rel_l2: float = Field(description="||delivered - published|| / ||published||")
    note: str = ""

    _scores = field_validator("max_abs", "rel_l2", mode="before")(_null_is_nan)


class EncoderInfo(_Model):
    """Whether the delivered towers are the published backbone (ci_gate.encoder_check)."""

    status: Literal["not_embedded", "unmodified", "modified", "unverified"] = Field(
        description="not_embedded: weights loaded from the published tag or file (pinned SHA-256 checked); "
        "unmodified/modified: an embedded tower compared tensor by tensor with the published weights; "
        "unverified: an embedded tower and no published weights to compare it with"
    )
    reference: str | None = Field(None, description="the published weights the tower was compared with")
    n_tensors: int = 0
    n_changed: int = 0
    max_rel_l2: float = 0.0
    changed: list[TensorChange] = Field(default_factory=list, description="largest relative changes first (at most 20)")
    architecture: str | None = Field(
        None, description="where the published architecture the tower was checked against came from (open_clip's registry, or the "
        "open_clip_config.json beside the user's weights); None: nothing trusted to check an inline config with"
    )
    architecture_changes: list[str] = Field(default_factory=list, description="how the delivered architecture (config, activation) differs from the published one")

    _scores = field_validator("max_rel_l2", mode="before")(_null_is_nan)

    @property
    def modified(self) -> bool:
        return self.status == "modified"

    @property
    def unverified_reason(self) -> str:
        """Why an unverified tower could not be checked, in one clause every report shares."""
        if self.reference is not None:
            return (f"its tensors match {self.reference}, but its architecture is the checkpoint's own inline config and no "
                    "open_clip_config.json beside those weights says what the published one is")
        return ("the checkpoint embeds its backbone (or names a weights file, not a pretrained tag, or spells its architecture inline) "
                "and nothing published was given to check it against")

    @property
    def changes_text(self) -> str:
        """What differs from the published backbone, in one clause every report shares."""
        parts = []
        if self.n_changed or not self.architecture_changes:
            parts.append(f"{self.n_changed} of {self.n_tensors} backbone tensors differ from the published weights")
        if self.architecture_changes:
            n = len(self.architecture_changes)
            parts.append(f"its architecture differs from the published one in {n} setting{'s' if n > 1 else ''} ({self.architecture_changes[0]})")
        return " and ".join(parts)


class PoolInfo(_Model):
    source: str
    sha256: str = Field(description="digest over the sorted (relative path, file digest) pairs of the images used")
    n_images: int
    n_skipped: int
    skipped: list[str] = Field(default_factory=list, description="first skipped files with the reason")


class PolicyInfo(_Model):
    name: str
    path: str | None
    sha256: str
    settings: dict = Field(description="the full, validated policy after overrides")

    @field_validator("settings")
    @classmethod
    def _report_is_a_mapping(cls, value: dict) -> dict:
        # reporters and gates read their keys from settings["report"] (ci_gate.report.settings):
        # anything but a mapping there would crash them rather than be refused as bad input
        report = value.get("report") or {}
        if not isinstance(report, dict):
            raise ValueError("policy.settings.report is not a mapping")
        # the alert settings reporters print and decide with (fail_on, the SARIF levels): a
        # result.json anybody could edit held Markdown there ("fail_on": "backdoor) |\n## clean")
        # that the summary printed as it was, or a level SARIF had no severity for (a crash)
        from ci_gate.policy import ReportPolicy
        from ci_gate.report.settings import KEYS

        shown = {key: report[key] for key in KEYS if key in report}
        try:
            ReportPolicy.model_validate(shown)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ValueError(f"policy.settings.report.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None
        return value


Family = Literal["linf", "patch"]


class RungResult(_Model):
    """One budget of the ladder for one class: the inputs of every statistic and what they gave."""

    epsilon: float = Field(description="the rung's budget: L-inf for family 'linf', the mask's area fraction for 'patch'")
    family: Family = "linf"
    asr: float = Field(description="trigger ASR on the evaluation images")
    final_loss: float
    ref_asr: float | None = None
    ref_final_loss: float | None = None
    ref_cross_loss: float | None = Field(None, description="this rung's trigger (the delivered model's) on the clean reference: its margin loss there (ref_specificity); None without a reference and in scans before schema 1.5")
    statistic: float
    anomaly: float

    # the ref_* fields are None when no reference ran, so they are not read back as NaN
    _scores = field_validator("asr", "final_loss", "statistic", "anomaly", mode="before")(_null_is_nan)


class ClassResult(_Model):
    index: int
    name: str
    from_checkpoint: bool = Field(description="False for extra candidate names from the policy")
    asr: float = Field(description="fraction of pool images predicted as this class under its trigger")
    base_rate: float = Field(description="fraction of clean pool images predicted as this class")
    final_loss: float = Field(description="mean margin loss over the pool under the trigger")
    clean_loss: float = Field(description="mean margin loss over the clean pool (no trigger)")
    statistic: float = Field(description="the per-class statistic fed to the anomaly index")
    anomaly: float = Field(description="robust z-score of the statistic across classes")
    status: ClassStatus
    trigger_linf: float
    trigger_png: str | None = None
    trigger_tensor: str | None = None
    epsilon: float | None = Field(None, description="budget of the deciding rung (the one whose anomaly index is largest); asr, final_loss and statistic are its values, the trigger image its trigger")
    family: Family = Field("linf", description="trigger family of the deciding rung: 'linf' (additive, epsilon is its L-inf budget) or 'patch' (mask and pattern, epsilon is the mask's area fraction)")
    ref_clean_loss: float | None = Field(None, description="the clean reference's mean margin loss on the clean pool")
    rungs: list[RungResult] = Field(default_factory=list, description="every rung of the budget ladder, ascending")

    _scores = field_validator(
        "asr", "base_rate", "final_loss", "clean_loss", "statistic", "anomaly", "trigger_linf", mode="before"
    )(_null_is_nan)


class Example(_Model):
    class_name: str
    clean_png: str
    triggered_png: str
    predicted_clean: str
    predicted_triggered: str


class Timings(_Model):
    load_s: float = 0.0
    pool_s: float = 0.0
    inversion_s: float = 0.0
    total_s: float = 0.0


class Detection(_Model):
    statistic: str = Field(description="the statistic the verdict used")
    k: float
    min_asr: float
    min_asr_gain: float | None = Field(None, description="how much more of the pool than the clean reference's trigger an outlier's trigger had to move; None: no such condition (no reference, or a result from before 1.4)")
    median: float = Field(description="median of the statistic at the target's (or the largest) rung")
    mad: float
    extreme: float | None = None
    epsilons: list[float] = Field(default_factory=list, description="the budget ladder")
    patch_areas: list[float] = Field(default_factory=list, description="the patch family's mask areas, after the L-inf rungs in every class's rungs; empty unless it ran (a modified image tower)")
    reference: Literal["published", "none"] | None = Field(None, description="published: the ref_* inputs come from the published backbone; none: no trusted reference, so a reference-free statistic decided")
    unverified_towers: Literal["fail", "warn"] | None = Field(None, description="the policy's answer to unverified towers (encoder.status unverified): fail the gate, or warn; None: a result from before 1.6, which warned")

    _scores = field_validator("median", "mad", mode="before")(_null_is_nan)


class Result(_Model):
    schema_version: str = RESULT_SCHEMA_VERSION
    tool: ToolInfo
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    verdict: Verdict
    target_class: str | None = Field(None, description="the flagged class with the largest score; on a modified image tower with none flagged, the class ranked first (see target_by_rank)")
    target_index: int | None = None
    model: ModelInfo
    pool: PoolInfo
    policy: PolicyInfo
    detection: Detection
    classes: list[ClassResult]
    encoder: EncoderInfo = EncoderInfo(status="not_embedded")
    examples: list[Example] = Field(default_factory=list)
    timings: Timings
    device: str
    seed: int
    warnings: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _target_is_a_class(self) -> "Result":
        # result.json is a file anybody can edit: a target that names no class is refused on load
        if self.target_index is not None and not any(c.index == self.target_index for c in self.classes):
            raise ValueError(f"target_index {self.target_index} names no class in classes")
        return self

    @property
    def suspicious(self) -> list[ClassResult]:
        return [c for c in self.classes if c.status == "suspicious"]

    @property
    def flagged(self) -> list[ClassResult]:
        return [c for c in self.classes if c.status == "backdoor"]

    @property
    def target_by_rank(self) -> bool:
        """The target named is the class ranked first on a failing modified tower, not a flagged
        outlier (ci_gate.scoring.decision.named_target)."""
        return self.target_index is not None and self.verdict != "backdoor" and self.encoder.modified

    @property
    def target(self) -> ClassResult | None:
        """The named target's class entry; None when none is named."""
        return None if self.target_index is None else next(c for c in self.classes if c.index == self.target_index)

    @property
    def unverified_fails(self) -> bool:
        """The towers could not be checked against published weights and the policy fails such a
        checkpoint (detection.unverified_towers), whatever its classes scored."""
        return self.encoder.status == "unverified" and self.detection.unverified_towers == "fail"

    def gate_fails(self, fail_on: str) -> bool:
        if fail_on == "never":
            return False
        # a modified encoder is a policy violation of its own: prompt tuning never changes them
        if self.encoder.modified:
            return True
        if self.unverified_fails:
            return True
        if fail_on == "suspicious":
            # an outlier, as the reports say (ci_gate.report.alerts): a result written under the
            # older rule also marked classes suspicious on their trigger ASR alone
            return self.verdict == "backdoor" or any(c.anomaly > self.detection.k for c in self.suspicious)
        return self.verdict == "backdoor"

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, self.to_json() + "\n")
        return path


# A scan of ten thousand classes writes about 40 MiB; a file far larger is a mistake or an attempt
# to exhaust the memory of whoever renders it.
MAX_RESULT_BYTES = 64 << 20


def load_result(path: str | Path) -> Result:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "result file not found")
    raw = read_bounded(path, MAX_RESULT_BYTES, "result file", f"{MAX_RESULT_BYTES >> 20} MiB")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not valid JSON: {exc}") from exc
    except RecursionError:  # the decoder recurses per nesting level: a file built to exhaust the stack
        raise InputError(path, "not valid JSON: nested too deeply") from None
    version = str(data.get("schema_version", "")) if isinstance(data, dict) else ""
    if version.split(".")[0] != RESULT_SCHEMA_VERSION.split(".")[0]:
        raise InputError(path, f"unsupported result schema version {version!r} (this ci-gate reads {RESULT_SCHEMA_VERSION})")
    try:
        return Result.model_validate(data)
    except ValidationError as exc:
        raise InputError(path, f"not a ci-gate result: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from None
