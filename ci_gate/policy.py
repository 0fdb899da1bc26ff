"""The policy: every knob of a scan, validated and versioned.

A policy is a YAML file (``policies/default.yaml`` and friends). Unknown keys and bad values are
rejected with the offending key's dotted name. The CLI may override single fields with
``--set section.key=value``; nothing else configures a scan.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ci_gate.errors import InputError
from ci_gate.resources import policies_dir

POLICY_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _parse_fraction(value: Any) -> Any:
    # "4/255" reads better in a policy than 0.01568627...
    if isinstance(value, str) and "/" in value:
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError) as exc:
            raise ValueError(f"not a number or fraction: {value!r}") from exc
    return value


class PoolPolicy(_Strict):
    path: str | None = Field(None, description="folder, glob or .tar of OOD images; relative to the policy file")
    min_images: int = Field(100, ge=1)
    max_images: int = Field(1000, ge=1)


class CandidatePolicy(_Strict):
    extra_classes: list[str] = Field(default_factory=list, description="names scanned besides the checkpoint's classes")
    max_classes: int = Field(50, ge=2)


class InversionPolicy(_Strict):
    epsilon: float = Field(4 / 255, gt=0, le=1)
    lr: float = Field(0.1, gt=0)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(1, ge=1)
    loss: Literal["margin", "cross_entropy", "logit"] = "margin"
    class_batch: int | Literal["auto"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    _frac = field_validator("epsilon", mode="before")(_parse_fraction)


class DetectionPolicy(_Strict):
    # ref_*: relative to the same backbone with hand-written prompts (ci_gate.reference)
    statistic: Literal["loss_drop", "neg_loss", "asr", "asr_gain", "ref_loss_gain", "ref_asr_gain", "ref_drop_gain"] = "ref_loss_gain"
    k: float = Field(4.0, gt=0, description="anomaly index above which a class is an outlier")
    min_asr: float = Field(0.5, ge=0, le=1, description="minimum trigger ASR for a backdoor verdict")
    mad_floor: float = Field(0.05, gt=0, description="lower bound on the MAD so a tight cluster of clean classes does not blow up the index")


class ReportPolicy(_Strict):
    formats: list[Literal["json", "html", "sarif", "md"]] = Field(default_factory=lambda: ["json", "html", "sarif", "md"])
    backdoor_level: Literal["error", "warning", "note"] = "error"
    suspicious_level: Literal["error", "warning", "note", "none"] = "warning"
    fail_on: Literal["backdoor", "suspicious", "never"] = "backdoor"


class RepairPolicy(_Strict):
    allowed: bool = Field(False, description="whether 'ci-gate repair' may run under this policy")
    epochs: int = Field(20, ge=1, description="fine-tuning epochs over the clean images plus their triggered copies")
    lr: float = Field(0.005, gt=0)
    batch_size: int = Field(32, ge=1)
    max_clean_acc_drop: float = Field(0.01, ge=0, le=1, description="refuse when held-out clean accuracy falls by more than this")
    holdout: float = Field(0.2, gt=0, lt=1, description="share of each class of the clean data held out (seeded) to measure accuracy and trigger ASR before and after")
    trigger_fraction: float = Field(1.0, gt=0, le=1, description="share of the training images added again with the reconstructed trigger, true labels kept")
    rounds: int = Field(2, ge=1, le=10, description="repair rounds: when re-verification still flags a class, its new trigger joins the set and fine-tuning continues")
    refresh_blocks: int = Field(4, ge=1, le=50, description="fine-tuning runs in this many blocks; after each but the last the target's trigger is reconstructed again against the model being repaired and joins the set (1 = the paper's single reconstructed trigger)")


class CanaryPolicy(_Strict):
    """How 'ci-gate canary' plants its known backdoor in a copy of the user's model."""

    epochs: int = Field(30, ge=1, description="poisoned re-tuning epochs, starting from the user's prompt learner")
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(32, ge=1)
    poison_rate: float | None = Field(None, gt=0, le=1, description="poisoned copies per clean image in a batch; null uses the attack's own rate")
    trigger_lr: float = Field(0.01, gt=0, description="step size of learnable triggers (BadCLIP, SIBA)")
    holdout: float = Field(0.2, gt=0, lt=1, description="share of each class held out to measure the planted backdoor's ASR")
    min_attack_asr: float = Field(0.5, ge=0, le=1, description="a planted backdoor weaker than this on held-out images makes the self-test inconclusive")


class Policy(_Strict):
    version: Literal[1] = POLICY_VERSION
    name: str = "custom"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    pool: PoolPolicy = PoolPolicy()
    candidates: CandidatePolicy = CandidatePolicy()
    inversion: InversionPolicy = InversionPolicy()
    detection: DetectionPolicy = DetectionPolicy()
    report: ReportPolicy = ReportPolicy()
    repair: RepairPolicy = RepairPolicy()
    canary: CanaryPolicy = CanaryPolicy()

    def sha256(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        else:
            parts.append(f"bad value for '{key}': {err['msg']}")
    return "; ".join(parts)


def _set_dotted(data: dict[str, Any], dotted: str, raw: str, source: str) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise InputError(source, f"cannot override '{dotted}': '{key}' is not a section")
        node = child
    node[keys[-1]] = yaml.safe_load(raw)


def resolve_policy_path(spec: str) -> Path:
    """A policy argument is a path, or the name of a bundled policy (``strict``, ``default``...)."""
    path = Path(spec)
    if path.exists() or path.suffix in {".yaml", ".yml"} or "/" in spec:
        return path
    return policies_dir() / f"{spec}.yaml"


def load_policy(spec: str | Path | None = None, overrides: list[str] | None = None) -> tuple[Policy, Path | None]:
    """Load and validate a policy; returns it and the folder that relative paths are resolved in."""
    data: dict[str, Any] = {}
    path: Path | None = None
    if spec is not None:
        path = resolve_policy_path(str(spec))
        if not path.is_file():
            raise InputError(path, "policy file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InputError(path, f"not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputError(path, "a policy must be a YAML mapping")
        data = loaded
    source = str(path) if path else "--set"
    for item in overrides or []:
        if "=" not in item:
            raise InputError("--set", f"expected KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), raw, source)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise InputError(source, _format_validation_error(exc)) from None
    return policy, (path.parent.resolve() if path else None)
