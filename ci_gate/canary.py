"""``ci-gate canary``: prove the gate works on the user's own model by planting a known backdoor.

A copy of the user's prompt learner (never the file: the checkpoint is only read) is re-tuned
with poisoned copies of the user's labeled data (an attack from :mod:`ci_gate.attacks`, starting
from the user's learner, encoders frozen), then scanned with the user's policy. The self-test
passes when the scan says "backdoor" AND names the planted target.

A planted backdoor that does not work (held-out ASR below ``canary.min_attack_asr``) proves
nothing either way: the run is "inconclusive" and the scan is skipped.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ci_gate import __version__
from ci_gate.accuracy import clean_accuracy, trigger_asr
from ci_gate.attacks import ATTACKS, PoisonSettings, attack_spec, build_trigger, poison_prompt_tuning
from ci_gate.checkpoint.format import CheckpointMeta, load_checkpoint, save_checkpoint
from ci_gate.errors import InputError
from ci_gate.io import atomic_write_text, sha256_file
from ci_gate.model import load_classifier
from ci_gate.repair.core import load_clean_data, split_holdout
from ci_gate.repair.flow import ScanSummary, scan_summary
from ci_gate.report.folder import write_scan_files
from ci_gate.scan import pick_device, scan
from ci_gate.scan_inputs import ScanInputs

Status = Literal["caught", "wrong_target", "missed", "inconclusive"]


def prompt_attacks() -> list[str]:
    """Attacks a canary can plant: prompt-level ones (encoder-level attacks need a zero-shot model)."""
    return sorted(name for name, spec in ATTACKS.items() if spec.level == "prompt")


class CanarySummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: str = f"ci-gate {__version__}"
    status: Status
    passed: bool
    message: str
    checkpoint: str
    checkpoint_sha256: str
    checkpoint_unchanged: bool = Field(description="the checkpoint's SHA-256 after the run equals the one before")
    attack: str
    planted_target: str
    predicted_target: str | None = None
    scan: ScanSummary | None = None
    clean_accuracy_original: float = Field(description="held-out clean accuracy of the user's model")
    clean_accuracy_canary: float = Field(description="held-out clean accuracy of the backdoored copy")
    planted_asr: float = Field(description="the planted trigger's ASR on held-out images of the other classes")
    natural_rate: float = Field(description="held-out images of the other classes predicted as the target without a trigger (canary model)")
    canary_model: str | None = Field(None, description="where the backdoored copy was kept (--keep-model), else null")
    settings: dict = Field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class CanaryRequest:
    scan: ScanInputs  # the user's checkpoint; the canary copy is scanned with the same inputs
    data: Path
    out: Path | None  # canary.json, scan/ (and canary.safetensors); None: nothing is written
    attack: str = "badclip"
    target: str | None = None
    keep_model: bool = False


def _target_index(name: str | None, class_names: list[str], seed: int) -> int:
    if name is None:
        # seeded, so the same policy plants the same canary; not always the first class, so a
        # gate that happens to favour one class cannot pass every self-test by luck
        return int(np.random.default_rng(seed).integers(len(class_names)))
    norm = {c.replace("_", " ").lower(): i for i, c in enumerate(class_names)}
    key = name.replace("_", " ").lower()
    if key not in norm:
        raise InputError("--target", f"{name!r} is not a class of this model (classes: {', '.join(class_names[:10])}{'...' if len(class_names) > 10 else ''})")
    return norm[key]


def run_canary(req: CanaryRequest, log=None) -> CanarySummary:
    t0 = time.perf_counter()
    say = log or (lambda _m: None)
    inputs = req.scan
    pol, cp = inputs.policy, inputs.policy.canary
    if req.attack not in ATTACKS:
        raise InputError("--attack", f"unknown attack {req.attack!r}; choose from {', '.join(prompt_attacks())}")
    spec = attack_spec(req.attack)
    if cp.poison_rate is not None:
        spec = replace(spec, poison_rate=cp.poison_rate)
    # the planted trigger's budget is the canary's own (canary.epsilon), inside the ladder the scan
    # searches: the gate does not know it, as it would not know an attacker's
    spec = spec.with_epsilon(pol.canary.epsilon)
    if spec.level != "prompt":
        raise InputError("--attack", f"{req.attack!r} is an encoder-level attack; a canary re-tunes the prompt learner, choose from {', '.join(prompt_attacks())}")
    if req.out is not None and req.out.exists() and not req.out.is_dir():
        raise InputError(req.out, "output path exists and is not a folder")
    if req.keep_model and req.out is None:
        raise InputError("--keep-model", "needs an output folder to keep the canary model in")
    sha_before = sha256_file(inputs.checkpoint) if inputs.checkpoint.is_file() else None
    ckpt = load_checkpoint(inputs.checkpoint)
    meta = ckpt.meta
    if meta.learner.kind == "zeroshot":
        raise InputError(inputs.checkpoint, "a zero-shot (encoder-level) checkpoint has no prompt learner to plant a canary in")
    names = list(meta.learner.class_names)
    size = meta.preprocessing.image_size
    target = _target_index(req.target, names, pol.seed)
    data = load_clean_data(req.data, size, names)
    train, held = split_holdout(data, cp.holdout, pol.seed)
    display = inputs.shown_path

    device = pick_device(pol.device)
    # the learner is built from tensors read into memory: re-tuning it cannot reach the file
    clf = load_classifier(ckpt, weights=inputs.backbone_weights).classifier.to(device)
    clf.freeze()
    acc_original = clean_accuracy(clf, held)
    trigger = build_trigger(spec, size, seed=pol.seed + 1)
    settings = PoisonSettings(epochs=cp.epochs, lr=cp.lr, batch_size=cp.batch_size, seed=pol.seed, trigger_lr=cp.trigger_lr)
    say(f"planting a {req.attack} backdoor with target {names[target]!r} in a copy of the prompt learner")
    poison_prompt_tuning(clf, train, settings, spec, trigger, target)
    trigger.eval()
    acc_canary = clean_accuracy(clf, held)
    planted_asr = trigger_asr(clf, held, trigger, target)
    natural = trigger_asr(clf, held, lambda x: x, target)
    common = dict(
        checkpoint=display,
        checkpoint_sha256=ckpt.sha256,
        attack=req.attack,
        planted_target=names[target],
        clean_accuracy_original=acc_original,
        clean_accuracy_canary=acc_canary,
        planted_asr=planted_asr,
        natural_rate=natural,
        settings={**cp.model_dump(mode="json"), "attack": req.attack, "poison_rate": spec.poison_rate, "trigger": spec.trigger_kwargs, "seed": pol.seed, "policy": pol.name, "policy_sha256": pol.sha256()},
    )
    if req.out is not None:
        req.out.mkdir(parents=True, exist_ok=True)
    canary_model = None
    if planted_asr < cp.min_attack_asr:
        status: Status = "inconclusive"
        message = (f"the planted backdoor only reaches {planted_asr:.1%} ASR on held-out images (canary.min_attack_asr={cp.min_attack_asr:.0%}): "
                   "the self-test proves nothing; raise canary.epochs or canary.lr, or give more data")
        scan_info, predicted = None, None
    else:
        provenance = {"producer": "ci-gate canary", "parent": {"sha256": ckpt.sha256, "path": display},
                      "canary": {"attack": req.attack, "target": names[target], "seed": pol.seed}}
        tensors = {k: v.to(ckpt.learner_tensors[k].dtype) for k, v in clf.learner.named_tensors().items()}
        backbone = ckpt.backbone_tensors if meta.backbone.embedded else None
        canary_meta = CheckpointMeta(learner=meta.learner, backbone=meta.backbone, preprocessing=meta.preprocessing, provenance=provenance)
        with tempfile.TemporaryDirectory(prefix="ci-gate-canary-") as tmp:
            path = Path(tmp) / "canary.safetensors"
            save_checkpoint(path, canary_meta, tensors, backbone)
            say("scanning the backdoored copy with the policy")
            # the user's inputs (published reference weights included) with the copy in place of the model
            found = scan(replace(inputs, checkpoint=path, display_path=f"canary of {display}"))
            assert found is not None  # single-process scan
            result = found.result
            if req.out is not None:
                write_scan_files(found, req.out / "scan")
            if req.keep_model:
                canary_model = str(req.out / "canary.safetensors")
                save_checkpoint(canary_model, canary_meta, tensors, backbone)
        scan_info, predicted = scan_summary(result, pol), result.target_class
        if result.verdict == "backdoor" and result.target_index == target:
            status, message = "caught", f"the gate caught the planted {req.attack} backdoor and named its target {names[target]!r}"
        elif result.verdict == "backdoor":
            status, message = "wrong_target", f"the gate flagged the model but named {predicted!r}, not the planted target {names[target]!r}"
        else:
            status, message = "missed", f"the gate passed a model with a working {req.attack} backdoor (held-out ASR {planted_asr:.1%})"
    sha_after = sha256_file(inputs.checkpoint)
    summary = CanarySummary(
        status=status,
        passed=status == "caught",
        message=message,
        checkpoint_unchanged=sha_after == sha_before,
        predicted_target=predicted,
        scan=scan_info,
        canary_model=canary_model,
        seconds=time.perf_counter() - t0,
        **common,
    )
    if req.out is not None:
        atomic_write_text(req.out / "canary.json", summary.model_dump_json(indent=2) + "\n")
    return summary
