"""The policy: every knob of a scan, validated and versioned.

A policy is a YAML file (``policies/default.yaml`` and friends). Unknown keys and bad values are
rejected with the offending key's dotted name. The CLI may override single fields with
``--set section.key=value``; nothing else configures a scan.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ci_gate.errors import InputError
from ci_gate.io import read_bounded
from ci_gate.report.formats import format_names
from ci_gate.scoring.statistics import STATISTICS
from ci_gate.resources import bundled_policy, bundled_policy_names

POLICY_VERSION = 1
# A policy is a page of settings; anything far larger is a mistake or an attempt to exhaust memory.
MAX_POLICY_BYTES = 1 << 20


class _Strict(BaseModel):
    # allow_inf_nan=False: `k: .inf` or `lr: .nan` would make every comparison against the
    # threshold false (or crash the reporters) and so could turn a backdoor into CLEAN.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# Names end up in one-line CLI messages, Markdown summaries and SARIF: no line breaks or other
# control characters, which could forge extra lines (a GitHub workflow command starts a line).
_Label = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$")]


def _parse_fraction(value: Any) -> Any:
    # "4/255" reads better in a policy than 0.01568627...
    if isinstance(value, str) and "/" in value:
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError, OverflowError) as exc:
            # pydantic turns only ValueError into a validation error; anything else would escape
            raise ValueError(f"not a finite number or fraction: {value[:40]!r}") from exc
    return value


class PoolPolicy(_Strict):
    path: str | None = Field(None, description="folder, glob or .tar of OOD images; relative to the policy file")
    min_images: int = Field(100, ge=1)
    max_images: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _min_le_max(self) -> PoolPolicy:
        if self.min_images > self.max_images:
            raise ValueError(f"min_images ({self.min_images}) is more than max_images ({self.max_images})")
        return self


class CandidatePolicy(_Strict):
    extra_classes: list[_Label] = Field(default_factory=list, description="names scanned besides the checkpoint's classes")
    max_classes: int = Field(50, ge=2)


# What a budget may be written as in a policy file, for the JSON Schema (ci-gate policy schema):
# the validators below turn a fraction string into a float before the field's own checks run.
_FractionText = Annotated[str, Field(pattern=r"^\s*\d+/\d+\s*$", description="a fraction such as 4/255")]
_BudgetInput = Annotated[float, Field(gt=0, le=1)] | _FractionText


def _parse_ladder(value: Any) -> Any:
    # one budget or a ladder of them; each may be written as a fraction ("4/255")
    items = value if isinstance(value, (list, tuple)) else [value]
    return [_parse_fraction(v) for v in items]


class InversionPolicy(_Strict):
    epsilon: tuple[Annotated[float, Field(gt=0, le=1)], ...] = Field(
        (2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255),
        min_length=1,
        max_length=8,
        description="L-inf trigger budget(s) in [0,1] pixel space: one value, or an ascending ladder the steps are split over",
    )
    lr: float = Field(0.1, gt=0)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(1, ge=1)
    loss: Literal["margin", "cross_entropy", "logit"] = "margin"
    class_batch: Annotated[int, Field(ge=1)] | Literal["auto"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    eval_images: int | None = Field(256, ge=16, description="pool images (seeded subset) each rung's trigger is evaluated on; null: the whole pool")

    _frac = field_validator("epsilon", mode="before", json_schema_input_type=_BudgetInput | Annotated[list[_BudgetInput], Field(min_length=1, max_length=8)])(_parse_ladder)

    @field_validator("epsilon")
    @classmethod
    def _ascending(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("a budget ladder must be strictly ascending")
        return value

    @property
    def max_epsilon(self) -> float:
        return self.epsilon[-1]


StatisticName = Literal[tuple(STATISTICS)]  # type: ignore[valid-type]  # the registry in ci_gate.scoring.statistics


class DetectionPolicy(_Strict):
    # ref_*: relative to the published backbone with hand-written prompts (ci_gate.reference)
    statistic: StatisticName = "ref_specificity"
    # an embedded tower with no published weights to compare it with would carry an encoder-level
    # backdoor into the clean reference too, so such scans score with a reference-free statistic
    absolute_statistic: StatisticName = "loss_drop"
    k: float = Field(2.35, gt=0, description="score (a class's mean anomaly index over the budget ladder's rungs) above which a class is an outlier")
    min_asr: float = Field(0.5, ge=0, le=1, description="trigger ASR an outlier must reach at some rung to be a backdoor target")
    min_asr_gain: float | None = Field(
        None, ge=0, le=1,
        description="with the published reference: how much more of the pool an outlier's trigger must send to its class than the reference's trigger does at the same rung, to be a backdoor target; null: no such condition (the default: measured, not adopted, docs/benchmark.md stop 22)",
    )
    absolute_k: float = Field(
        5.0, gt=0,
        description="k when absolute_statistic decides (no trusted reference): nothing cancels the backbone's natural attractors then, and clean zoo models reach 4.1 (docs/benchmark.md, stop 25)",
    )
    unverified_towers: Literal["fail", "warn"] = Field(
        "fail",
        description="a tower no published weights were given to check (the checkpoint embeds it, or names its own weights file): "
        "fail the gate, since the checkpoint's author decides whether its tower can be checked and the reference-free statistic misses most "
        "encoder-level backdoors (docs/benchmark.md, stop 25); warn: absolute_statistic decides alone",
    )
    extreme: float = Field(4.7, gt=0, description="an outlier this far out is a backdoor target whatever its trigger ASR")
    mad_floor: float = Field(2.0, gt=0, description="lower bound on the MAD (in the statistic's units: margins at logit scale 100, or rates) so a tight cluster of clean classes does not blow up the index")

    def rule(self, trusted_reference: bool) -> tuple[str, float]:
        """The (statistic, k) that decide a scan: a ref_* statistic needs a trusted reference;
        without one, the reference-free statistic with its own k."""
        if STATISTICS[self.statistic].needs_reference and not trusted_reference:
            return self.absolute_statistic, self.absolute_k
        return self.statistic, self.k

    @field_validator("absolute_statistic")
    @classmethod
    def _reference_free(cls, value: str) -> str:
        if STATISTICS[value].needs_reference:
            raise ValueError(f"{value!r} needs the clean reference; pick one of {', '.join(n for n, s in STATISTICS.items() if not s.needs_reference)}")
        return value


ReportFormat = Literal[format_names()]  # type: ignore[valid-type]  # the registry in ci_gate.report.formats


class ReportPolicy(_Strict):
    formats: list[ReportFormat] = Field(default_factory=lambda: list(format_names()))
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

    epsilon: float = Field(8 / 255, gt=0, le=1, description="L-inf budget of the planted BadCLIP trigger")
    epochs: int = Field(30, ge=1, description="poisoned re-tuning epochs, starting from the user's prompt learner")
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(32, ge=1)
    poison_rate: float | None = Field(None, gt=0, le=1, description="poisoned copies per clean image in a batch; null uses the attack's own rate")
    trigger_lr: float = Field(0.01, gt=0, description="step size of learnable triggers (BadCLIP, SIBA)")
    holdout: float = Field(0.2, gt=0, lt=1, description="share of each class held out to measure the planted backdoor's ASR")
    min_attack_asr: float = Field(0.5, ge=0, le=1, description="a planted backdoor weaker than this on held-out images makes the self-test inconclusive")

    _frac = field_validator("epsilon", mode="before", json_schema_input_type=_BudgetInput)(_parse_fraction)


class Policy(_Strict):
    version: Literal[1] = POLICY_VERSION
    name: _Label = "custom"
    seed: int = Field(0, ge=0, lt=2**63, description="torch generators take 64-bit seeds; larger ones crash the scan")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    pool: PoolPolicy = PoolPolicy()
    candidates: CandidatePolicy = CandidatePolicy()
    inversion: InversionPolicy = InversionPolicy()
    detection: DetectionPolicy = DetectionPolicy()
    report: ReportPolicy = ReportPolicy()
    repair: RepairPolicy = RepairPolicy()
    canary: CanaryPolicy = CanaryPolicy()

    @field_validator("version", mode="before")
    @classmethod
    def _exact_version(cls, value: Any) -> Any:
        # pydantic's lax mode would read `version: true` or `version: 1.0` as 1
        if type(value) is not int or value != POLICY_VERSION:
            shown = json.dumps(value) if isinstance(value, (bool, int, float)) else type(value).__name__
            raise ValueError(f"unsupported policy version {shown[:40]}; this ci-gate reads version {POLICY_VERSION}")
        return value

    def sha256(self) -> str:
        return settings_sha256(self.model_dump(mode="json"))


def settings_sha256(settings: dict[str, Any]) -> str:
    """The hash a scan records for a policy, from its JSON settings (also how a saved record is checked)."""
    canonical = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class _DuplicateKey(Exception):
    pass


def _check_duplicate_keys(root: yaml.Node) -> None:
    """PyYAML keeps the last of two equal keys without a word, so a second ``k:`` further down a
    long policy would silently win over the one a reviewer reads. Walks the composed node graph
    (each node once: aliases may share or even nest nodes) in document order."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        children: list[tuple[yaml.Node, str]] = []
        if isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                dotted = path
                if isinstance(key_node, yaml.ScalarNode):
                    dotted = f"{path}.{_show(key_node.value, 60)}" if path else _show(key_node.value, 60)
                    ident = (key_node.tag, key_node.value)
                    line = key_node.start_mark.line + 1
                    if ident in first_line:
                        raise _DuplicateKey(f"duplicate key '{dotted}' at line {line} (first at line {first_line[ident]})")
                    first_line[ident] = line
                children += [(key_node, dotted), (value_node, dotted)]
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        stack.extend(reversed(children))


# libyaml's parser when PyYAML has it (its wheels do): linear in the input and with a nesting
# limit, where the pure-Python scanner takes seconds on a few thousand nested brackets.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _PolicyLoader(_SafeLoader):  # type: ignore[misc, valid-type]
    """A safe loader (plain data, never Python objects) that also refuses duplicate mapping keys."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_duplicate_keys(node)
        return super().construct_document(node)


def _show(text: str, limit: int = 80) -> str:
    """User text for a one-line message: short, and quoted when it holds control characters."""
    clipped = text[:limit] + ("..." if len(text) > limit else "")
    return clipped if clipped.isprintable() else repr(clipped)


def _parse_yaml(text: str, source: str, what: str) -> Any:
    try:
        return yaml.load(text, Loader=_PolicyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise InputError(source, str(exc)) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise InputError(source, f"{what}: {where}{exc.problem or exc.context or 'syntax error'}") from None
    except yaml.YAMLError as exc:  # e.g. the reader's "unacceptable character", over several lines
        raise InputError(source, f"{what}: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise InputError(source, f"{what}: nested too deeply") from None
    except (ValueError, OverflowError) as exc:
        # the constructor's int(), float() and date() on scalars such as a 5000-digit number
        raise InputError(source, f"{what}: {exc}") from None


def _error_key(loc: tuple[Any, ...]) -> tuple[tuple[str, ...], str, str | None]:
    """A pydantic error location as (policy key path, dotted name, close match of an unknown key).

    Union members add their own tags to the location (``inversion.class_batch.int``); those are
    not keys and are dropped, list indices become ``[i]``."""
    model: type[BaseModel] | None = Policy
    keys: list[str] = []
    dotted = ""
    for part in loc:
        if model is not None:
            name = _show(str(part), 60)
            keys.append(str(part))
            dotted = f"{dotted}.{name}" if dotted else name
            field = model.model_fields.get(part) if isinstance(part, str) else None
            if field is None:  # an unknown key: nothing below it matters
                close = difflib.get_close_matches(str(part), list(model.model_fields), n=1)
                return tuple(keys), dotted, (close[0] if close else None)
            annotation = field.annotation
            model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        elif isinstance(part, int):
            dotted += f"[{part}]"
    return tuple(keys), dotted or "<root>", None


def _describe(exc: ValidationError) -> list[tuple[tuple[str, ...], str]]:
    """One message per offending key, in the order pydantic found them."""
    bad: dict[str, tuple[tuple[str, ...], list[str]]] = {}
    for err in exc.errors():
        keys, dotted, close = _error_key(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            hint = f" (did you mean '{close}'?)" if close else ""
            bad.setdefault(f"unknown key '{dotted}'{hint}", (keys, []))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_pattern_mismatch":  # pydantic would quote the regex
            msg = "must be printable text on one line"
        entry = bad.setdefault(f"bad value for '{dotted}'", (keys, []))
        if msg not in entry[1]:
            entry[1].append(msg)
    return [(keys, f"{head}: {' or '.join(msgs)}" if msgs else head) for head, (keys, msgs) in bad.items()]


def _joined(messages: list[str], limit: int = 3) -> str:
    more = f"; and {len(messages) - limit} more" if len(messages) > limit else ""
    return "; ".join(messages[:limit]) + more


def _format_validation_error(exc: ValidationError) -> str:
    return _joined([msg for _, msg in _describe(exc)])


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _apply_override(data: dict[str, Any], item: str) -> tuple[tuple[str, ...], str]:
    """Apply one ``--set KEY=VALUE``; returns the key path and the name errors are blamed on."""
    if "=" not in item:
        raise InputError("--set", f"expected KEY=VALUE, got {_show(item)!s}")
    key, raw = item.split("=", 1)
    source = f"--set {_show(item)}"
    parts = key.strip().split(".")
    if not all(_KEY.fullmatch(p) for p in parts):
        raise InputError(source, f"'{_show(key.strip(), 60)}' is not a dotted policy key such as detection.k")
    value = _parse_yaml(raw, source, "not a valid YAML value")
    model: type[BaseModel] = Policy
    node = data
    for depth, part in enumerate(parts[:-1]):
        section = ".".join(parts[: depth + 1])
        field = model.model_fields.get(part)
        if field is None:
            close = difflib.get_close_matches(part, list(model.model_fields), n=1)
            raise InputError(source, f"unknown key '{section}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        annotation = field.annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise InputError(source, f"'{section}' is not a section, so '{'.'.join(parts)}' does not exist")
        child = node.get(part, {})
        if not isinstance(child, dict):
            raise InputError(source, f"'{section}' was replaced by a value that is not a section (an earlier --set)")
        # copy on write: YAML anchors may share this mapping with another section
        node[part] = node = dict(child)
        model = annotation
    node[parts[-1]] = value
    return tuple(parts), source


def resolve_policy_path(spec: str) -> Path:
    """A policy argument is the name of a bundled policy (``strict``, ``strict.yaml``...) or a path.

    A bundled name always means the bundled policy, even beside a file of that name: the gate runs
    in the repository a pull request can add files to, and a file called ``default`` there must
    not replace the policy the workflow asked for (``./default`` reads such a file)."""
    path = Path(spec)
    if "/" in spec or "\\" in spec:
        return path
    name = spec
    for suffix in (".yaml", ".yml"):
        name = name.removesuffix(suffix)
    bundled = bundled_policy(name)
    return bundled if bundled is not None else path


def _read_policy_file(path: Path, spec: str) -> dict[str, Any]:
    try:
        is_file = path.is_file()
    except (OSError, ValueError) as exc:
        raise InputError(_show(spec), f"not a usable policy path: {getattr(exc, 'strerror', None) or exc}") from None
    if not is_file and not path.exists():
        raise InputError(_show(spec), f"policy file not found (bundled policies: {', '.join(bundled_policy_names())})")
    if not is_file:
        raise InputError(path, "not a regular file")
    raw = read_bounded(path, MAX_POLICY_BYTES, "policy file", f"{MAX_POLICY_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not valid YAML: not UTF-8 text (byte {exc.start})") from None
    loaded = _parse_yaml(text, str(path), "not valid YAML")
    if loaded is None:  # an empty or comment-only file must not silently mean "the defaults"
        raise InputError(path, f"a policy must state its version: {POLICY_VERSION}")
    if not isinstance(loaded, dict):
        raise InputError(path, "a policy must be a YAML mapping")
    if "version" not in loaded:
        raise InputError(path, f"a policy must state its version: {POLICY_VERSION}")
    return loaded


def load_policy(spec: str | Path | None = None, overrides: list[str] | None = None) -> tuple[Policy, Path | None]:
    """Load and validate a policy; returns it and the folder that relative paths are resolved in.

    ``spec`` None starts from the built-in defaults. Errors in the file name the file; errors a
    ``--set`` brings in name that ``--set KEY=VALUE``, even when they only show once it is merged
    (``pool.min_images`` above the file's ``pool.max_images``)."""
    data: dict[str, Any] = {}
    path: Path | None = None
    if spec is not None:
        path = resolve_policy_path(str(spec))
        data = _read_policy_file(path, str(spec))
        try:
            Policy.model_validate(data)
        except ValidationError as exc:
            raise InputError(path, _format_validation_error(exc)) from None
        except RecursionError:
            raise InputError(path, "nested too deeply") from None
    return apply_overrides(data, overrides), (path.parent.resolve() if path else None)


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> Policy:
    """A policy from settings (a file's, or a saved result's) plus ``--set KEY=VALUE`` items."""
    applied: list[tuple[tuple[str, ...], str]] = []
    data = copy.deepcopy(data)  # overrides never touch the caller's settings
    for item in overrides or []:
        applied.append(_apply_override(data, item))
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        problems = _describe(exc)
        keys = problems[0][0]
        # the last --set that touched the key (or a key inside it, or the section around it)
        source = next((src for ks, src in reversed(applied) if ks[: len(keys)] == keys[: len(ks)]), "--set")
        mine = [msg for ks, msg in problems if next((src for a, src in reversed(applied) if a[: len(ks)] == ks[: len(a)]), "--set") == source]
        raise InputError(source, _joined(mine)) from None
    except RecursionError:
        raise InputError("--set", "nested too deeply") from None
    return policy
