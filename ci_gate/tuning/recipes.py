"""Recipes that produce real checkpoints: prompt-tune a learner on a backbone (optionally with a
backdoor) and save it in the ci-gate format. Used by the demo, the tests, the benchmark zoo and
the canary self-test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ci_gate.attacks import Trigger, make_trigger
from ci_gate.checkpoint.format import BackboneSpec, CheckpointMeta, LearnerSpec, Preprocessing, save_checkpoint
from ci_gate.data import LabeledImages
from ci_gate.model.backbone import Backbone
from ci_gate.model.classifier import PromptedClassifier
from ci_gate.model.factory import build_classifier, new_learner
from ci_gate.tuning.train import TuneSettings, tune


@dataclass
class TunedModel:
    classifier: PromptedClassifier
    trigger: Trigger | None
    target: int | None
    path: Path
    sha256: str


def tune_checkpoint(
    backbone: Backbone,
    backbone_spec: BackboneSpec,
    learner_spec: LearnerSpec,
    preprocessing: Preprocessing,
    train: LabeledImages,
    settings: TuneSettings,
    out: Path,
    attack: str | Trigger | None = None,
    backbone_tensors: dict[str, torch.Tensor] | None = None,
    provenance: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> TunedModel:
    learner = new_learner(backbone, learner_spec, seed=settings.seed)
    clf = build_classifier(
        backbone,
        learner_spec.kind,
        learner,
        learner_spec.class_names,
        learner_spec.n_ctx,
        preprocessing.image_size,
        preprocessing.mean,
        preprocessing.std,
    )
    trigger = None
    if isinstance(attack, Trigger):
        trigger = attack
    elif attack is not None:
        trigger = make_trigger(attack, preprocessing.image_size, seed=settings.seed + 1)
    tune(clf, train, settings, trigger=trigger, log=log)
    meta = CheckpointMeta(
        learner=learner_spec,
        backbone=backbone_spec,
        preprocessing=preprocessing,
        provenance={"producer": "ci-gate tuning recipe", **(provenance or {})},
    )
    sha = save_checkpoint(out, meta, learner.named_tensors(), backbone_tensors if backbone_spec.embedded else None)
    return TunedModel(classifier=clf, trigger=trigger, target=settings.target if attack else None, path=out, sha256=sha)
