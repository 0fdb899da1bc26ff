"""``ci-gate repair`` end to end: verify, repair with the reconstructed trigger, verify again.

1. Scan the delivered checkpoint with the policy. A model the gate passes has nothing to repair.
2. Split the user's labeled clean set (seeded, per class) into a training part and a held-out
   part. The held-out part measures clean accuracy and the reconstructed trigger's ASR before and
   after, so the numbers are never measured on the images the repair trained on.
3. Fine-tune only the prompt learner on the training part plus triggered copies that keep their
   true labels (:mod:`ci_gate.repair.core`); between blocks of epochs the target's trigger is
   reconstructed again against the model being repaired (``repair.refresh_blocks``).
4. Save the candidate to a temporary file and scan it with the same inputs (policy, pool,
   backbone and published reference weights). When the re-scan
   still flags a class and rounds remain, that class's new trigger joins the set and fine-tuning
   continues from the current learner (the paper stops after one round; later rounds only run
   when the gate would still fail).
5. Accept only when the gate passes and held-out clean accuracy fell by at most
   ``repair.max_clean_acc_drop``; then write the checkpoint (atomically, with provenance) and
   ``repair.json``. A refusal writes nothing.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ci_gate import __version__
from ci_gate.accuracy import clean_accuracy, trigger_asr
from ci_gate.checkpoint.format import Checkpoint, CheckpointMeta, backbone_digest, load_checkpoint, save_checkpoint
from ci_gate.data import LabeledImages
from ci_gate.errors import InputError
from ci_gate.io import atomic_write_text
from ci_gate.model import load_classifier
from ci_gate.model.classifier import PromptedClassifier
from ci_gate.policy import Policy
from ci_gate.repair.core import (
    FineTuneSettings,
    Perturb,
    fine_tune,
    load_clean_data,
    reconstructed,
    split_holdout,
    trigger_refresher,
)
from ci_gate.result import ClassResult, Result
from ci_gate.scan import inversion_settings, pick_device, scan
from ci_gate.scan_inputs import ScanInputs
from ci_gate.scan_output import ScanOutput

SUMMARY_SCHEMA_VERSION = "1.0"
# Accuracies are fractions of a finite held-out set; without a little slack, a drop of exactly
# the allowed amount (1 image in 100 at 0.01) can be refused through float rounding.
_ACC_SLACK = 1e-9


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScanSummary(_Model):
    verdict: Literal["clean", "backdoor"]
    gate_passes: bool
    target_class: str | None
    flagged: list[str] = Field(description="classes with status 'backdoor'")
    suspicious: list[str]
    max_anomaly: float
    target_pool_asr: float | None = Field(None, description="the target trigger's ASR on the OOD pool")


class HeldOut(_Model):
    clean_accuracy: float
    trigger_asr: float = Field(description="the reconstructed target trigger's ASR on held-out images of the other classes")
    natural_rate: float = Field(description="the same images without a trigger predicted as the target (the floor for trigger_asr)")


class RoundRecord(_Model):
    round: int
    triggers: list[str] = Field(description="classes whose reconstructed triggers were in the fine-tuning set")
    reverify: ScanSummary
    held_out: HeldOut


class RepairSummary(_Model):
    schema_version: str = SUMMARY_SCHEMA_VERSION
    tool: str = f"ci-gate {__version__}"
    status: Literal["repaired", "clean", "refused"]
    message: str
    checkpoint: str
    checkpoint_sha256: str
    output: str | None = None
    output_sha256: str | None = None
    target_class: str | None = None
    verify: ScanSummary
    before: HeldOut | None = None
    after: HeldOut | None = None
    clean_accuracy_drop: float | None = None
    rounds: list[RoundRecord] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list, description="why a repair was refused")
    clean_data: dict = Field(default_factory=dict)
    settings: dict = Field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


@dataclass(frozen=True)
class RepairRequest:
    scan: ScanInputs  # the delivered checkpoint and what every scan of the repair reads with it
    clean_data: Path
    out: Path
    summary: Path | None = None  # default: repair.json next to ``out``

    @property
    def summary_path(self) -> Path:
        return self.summary if self.summary is not None else self.out.parent / "repair.json"


@dataclass
class RepairOutcome:
    summary: RepairSummary
    written: list[Path] = field(default_factory=list)


def gate_fails(result: Result, policy: Policy) -> bool:
    """The verdict ``ci-gate verify`` would give with this policy, plus a backdoor verdict even
    when ``fail_on: never`` (repair exists to remove backdoors, not to follow a report setting)."""
    return result.verdict == "backdoor" or result.gate_fails(policy.report.fail_on)


def _target(result: Result) -> ClassResult:
    """The class to repair: the predicted target, else (a 'suspicious' gate failure) the most
    anomalous suspicious class."""
    if result.target is not None:
        return result.target
    return max(result.suspicious or result.classes, key=lambda c: c.anomaly)


def scan_summary(result: Result, policy: Policy) -> ScanSummary:
    target = result.target
    return ScanSummary(
        verdict=result.verdict,
        gate_passes=not gate_fails(result, policy),
        target_class=result.target_class,
        flagged=[c.name for c in result.flagged],
        suspicious=[c.name for c in result.suspicious],
        max_anomaly=max(c.anomaly for c in result.classes),
        target_pool_asr=None if target is None else target.asr,
    )


def check_output(checkpoint: Path, out: Path, summary: Path) -> None:
    """Bad output paths are bad input: refuse before any compute, and never write over the input."""
    for path, what in ((out, "--out"), (summary, "summary")):
        if path.exists() and path.is_dir():
            raise InputError(path, f"{what} is a folder; give a file path")
        if checkpoint.exists() and path.exists() and path.resolve() == checkpoint.resolve():
            raise InputError(path, f"{what} would overwrite the input checkpoint; inputs are never modified")
    if out.resolve() == summary.resolve():
        raise InputError(out, "the repaired checkpoint and the summary cannot be the same file")
    if out.parent.exists() and not out.parent.is_dir():
        raise InputError(out.parent, "output folder is a file")


def _held_out(clf, held, perturb, target: int) -> HeldOut:
    return HeldOut(
        clean_accuracy=clean_accuracy(clf, held),
        trigger_asr=trigger_asr(clf, held, perturb, target),
        natural_rate=trigger_asr(clf, held, lambda x: x, target),
    )


def _data_digest(images: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    h.update((images * 255).round().to(torch.uint8).numpy().tobytes())
    h.update(labels.numpy().tobytes())
    return h.hexdigest()


def learner_tensors_like(clf, parent: Checkpoint) -> dict[str, torch.Tensor]:
    """The learner's tensors in the parent's dtypes (a converted fp16 learner stays fp16), for the
    candidates and the written file alike, so the re-verification scans exactly these values."""
    return {k: v.to(parent.learner_tensors[k].dtype) for k, v in clf.learner.named_tensors().items()}


def require_allowed(policy: Policy, policy_path: Path | None) -> None:
    """Repair changes the model a team ships; a policy has to opt in (action.yml relies on this)."""
    if not policy.repair.allowed:
        raise InputError(
            policy_path or "policy",
            "this policy does not allow repair (repair.allowed: false); use a policy that does, e.g. --policy permissive, or --set repair.allowed=true",
        )


Rescan = Callable[[PromptedClassifier, int], tuple[Path, ScanOutput]]  # (model, round) -> (candidate file, its scan)


@dataclass
class Round:
    number: int
    triggers: list[str]  # classes whose reconstructed triggers were in the fine-tuning set
    candidate: Path
    scan: ScanOutput

    @property
    def result(self) -> Result:
        return self.scan.result


def repair_rounds(clf: PromptedClassifier, train: LabeledImages, target: ClassResult, trigger: Perturb, policy: Policy, rescan: Rescan) -> list[Round]:
    """Steps 3-4 of the module docstring, in place on ``clf``: fine-tune with the target's
    reconstructed trigger (refreshed between blocks), re-scan through ``rescan``, and while the
    gate still fails and ``repair.rounds`` allows, add the class the re-scan flags (with the
    trigger it inverted against the repaired model) and continue. The benchmark runs exactly
    this, so what it measures is what ``ci-gate repair`` does."""
    rp = policy.repair
    triggers: dict[str, Perturb] = {target.name: trigger}
    focus = [target.index]
    # refreshed triggers are inverted at the budget that revealed the backdoor (the scan's
    # deciding rung), not over the whole ladder
    # the refresher inverts L-inf triggers: a patch-family target's epsilon is a mask area, not a budget
    budget = (target.epsilon if target.family == "linf" else None) or policy.inversion.max_epsilon
    rounds: list[Round] = []
    for r in range(1, rp.rounds + 1):
        ft = FineTuneSettings(epochs=rp.epochs, lr=rp.lr, batch_size=rp.batch_size, seed=policy.seed + r - 1, trigger_fraction=rp.trigger_fraction, refresh_blocks=rp.refresh_blocks)
        refresh = trigger_refresher(train, focus, replace(inversion_settings(policy), epsilon=budget, ladder=(), eval_images=None))
        fine_tune(clf, train, list(triggers.values()), ft, refresh=refresh)
        candidate, found = rescan(clf, r)
        rounds.append(Round(r, list(triggers), candidate, found))
        if not gate_fails(found.result, policy) or r == rp.rounds:
            break
        nxt = _target(found.result)
        key = nxt.name if nxt.name not in triggers else f"{nxt.name}#{r + 1}"
        triggers[key] = reconstructed(found, nxt.index, f"reconstructed:{key}")
        if nxt.index not in focus:
            focus.append(nxt.index)
        budget = max(budget, (nxt.epsilon if nxt.family == "linf" else None) or budget)
    return rounds


def run_repair(req: RepairRequest, log=None) -> RepairOutcome:
    t0 = time.perf_counter()
    say = log or (lambda _msg: None)
    inputs = req.scan
    pol, rp = inputs.policy, inputs.policy.repair
    require_allowed(pol, inputs.policy_path)
    check_output(inputs.checkpoint, req.out, req.summary_path)
    parent = load_checkpoint(inputs.checkpoint)
    meta = parent.meta
    if meta.learner.kind == "zeroshot":
        raise InputError(inputs.checkpoint, "a zero-shot (encoder-level) checkpoint has no prompt learner to repair")
    data = load_clean_data(req.clean_data, meta.preprocessing.image_size, list(meta.learner.class_names))
    train, held = split_holdout(data, rp.holdout, pol.seed)
    display = inputs.shown_path
    settings = {**rp.model_dump(mode="json"), "seed": pol.seed, "policy": pol.name, "policy_sha256": pol.sha256()}
    clean_info = {"path": str(req.clean_data), "sha256": _data_digest(data.images, data.labels), "n_train": len(train), "n_held_out": len(held)}
    base = dict(checkpoint=display, checkpoint_sha256=parent.sha256, clean_data=clean_info, settings=settings)

    # the candidates are files (a scan reads a checkpoint file); the scans themselves write nothing
    with tempfile.TemporaryDirectory(prefix="ci-gate-repair-") as tmp_name:
        tmp = Path(tmp_name)

        def scan_file(path: Path) -> ScanOutput:
            # the delivered checkpoint's own inputs, reference weights included: a candidate that
            # embeds the delivered tower is re-verified against the published one, not against itself
            found = scan(replace(inputs, checkpoint=path, display_path=display))
            assert found is not None  # single-process scan
            return found

        say("verifying the delivered checkpoint")
        first = scan_file(inputs.checkpoint)
        before_scan = first.result
        verify = scan_summary(before_scan, pol)
        if not gate_fails(before_scan, pol):
            summary = RepairSummary(status="clean", message="the gate passes this checkpoint: nothing to repair, nothing written", verify=verify, seconds=time.perf_counter() - t0, **base)
            return RepairOutcome(summary)

        if before_scan.encoder.modified or before_scan.unverified_fails:
            # every candidate re-embeds the delivered towers, and a modified (or, under the policy,
            # an unverified) tower fails the gate on its own: no prompt repair can pass
            # verification, so none is attempted
            reason = (f"the checkpoint's towers differ from the published backbone ({before_scan.encoder.changes_text}); "
                      "prompt repair cannot undo an encoder-level change: rebuild the model on the published backbone") if before_scan.encoder.modified else (
                      "the checkpoint's towers could not be checked against published weights (embedded, and no --reference-weights), which fails the gate "
                      "whatever a prompt repair does: pass --reference-weights with the published backbone")
            summary = RepairSummary(status="refused", message="repair refused; nothing written", reasons=[reason], verify=verify, seconds=time.perf_counter() - t0, **base)
            return RepairOutcome(summary)

        target = _target(before_scan)
        say(f"backdoor target {target.name!r}: fine-tuning the prompt learner with its reconstructed trigger")
        device = pick_device(pol.device)
        clf = load_classifier(parent, extra_classes=pol.candidates.extra_classes, weights=inputs.backbone_weights).classifier.to(device)
        clf.freeze()
        primary = reconstructed(first, target.index, f"reconstructed:{target.name}")
        before = _held_out(clf, held, primary, target.index)
        held_outs: list[HeldOut] = []

        def rescan(model, r: int) -> tuple[Path, ScanOutput]:
            candidate = tmp / f"candidate-{r}.safetensors"
            save_checkpoint(candidate, CheckpointMeta(learner=meta.learner, backbone=meta.backbone, preprocessing=meta.preprocessing,
                                                      provenance={"producer": "ci-gate repair (candidate)"}),
                            learner_tensors_like(model, parent), parent.backbone_tensors if meta.backbone.embedded else None)
            say(f"round {r}: re-verifying the repaired model")
            held_outs.append(_held_out(model, held, primary, target.index))
            return candidate, scan_file(candidate)

        steps = repair_rounds(clf, train, target, primary, pol, rescan)
        rounds = [RoundRecord(round=st.number, triggers=st.triggers, reverify=scan_summary(st.result, pol), held_out=h) for st, h in zip(steps, held_outs)]
        after_scan, after, candidate = steps[-1].result, held_outs[-1], steps[-1].candidate

        drop = before.clean_accuracy - after.clean_accuracy
        reasons = []
        if gate_fails(after_scan, pol):
            reasons.append(
                f"the repaired model still fails verification after {len(rounds)} round(s) "
                f"(verdict {after_scan.verdict}, target {after_scan.target_class!r})"
            )
        if drop > rp.max_clean_acc_drop + _ACC_SLACK:
            reasons.append(f"held-out clean accuracy fell by {drop:.1%} ({before.clean_accuracy:.1%} -> {after.clean_accuracy:.1%}), more than repair.max_clean_acc_drop={rp.max_clean_acc_drop:.1%}")
        common = dict(target_class=target.name, verify=verify, before=before, after=after, clean_accuracy_drop=drop, rounds=rounds, **base)
        if reasons:
            summary = RepairSummary(status="refused", message="repair refused; nothing written", reasons=reasons, seconds=time.perf_counter() - t0, **common)
            return RepairOutcome(summary)

        learner = learner_tensors_like(clf, parent)
        verified_sha = hashlib.sha256(candidate.read_bytes()).hexdigest()
        summary = RepairSummary(status="repaired", message="repaired and re-verified", output=str(req.out), seconds=time.perf_counter() - t0, **common)
        provenance = {
            "producer": "ci-gate repair",
            "tool": f"ci-gate {__version__}",
            "parent": {"sha256": parent.sha256, "path": display, "provenance": meta.provenance},
            "repair": {
                "settings": settings,
                "clean_data": clean_info,
                "pool": {"source": str(inputs.pool), "sha256": before_scan.pool.sha256},
                "summary": summary.model_dump(mode="json", include={"target_class", "verify", "before", "after", "clean_accuracy_drop", "rounds"}),
                # the file that was re-verified differs from this one only in this metadata
                "verified_file_sha256": verified_sha,
                "learner_sha256": backbone_digest(learner),
            },
        }
        final_meta = CheckpointMeta(learner=meta.learner, backbone=meta.backbone, preprocessing=meta.preprocessing, provenance=provenance)
        sha = save_checkpoint(req.out, final_meta, learner, parent.backbone_tensors if meta.backbone.embedded else None)
        summary = summary.model_copy(update={"output_sha256": sha, "seconds": time.perf_counter() - t0})
        atomic_write_text(req.summary_path, summary.to_json() + "\n")
        return RepairOutcome(summary, written=[req.out, req.summary_path])
