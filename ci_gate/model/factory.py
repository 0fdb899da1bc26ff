"""Checkpoint -> classifier. Also builds fresh learners for prompt tuning (demo, bench, canary)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ci_gate.checkpoint.format import Checkpoint, CheckpointMeta, LearnerSpec, Preprocessing, load_checkpoint, prompt_key
from ci_gate.errors import InputError
from ci_gate.model.backbone import Backbone, build_backbone
from ci_gate.model.classifier import PromptedClassifier
from ci_gate.learners import learner_class
from ci_gate.learners.base import Learner


@dataclass
class LoadedModel:
    classifier: PromptedClassifier
    checkpoint: Checkpoint
    backbone: Backbone
    notes: list[str] = field(default_factory=list)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.backbone.preprocessing


def new_learner(backbone: Backbone, spec: LearnerSpec, seed: int = 0) -> Learner:
    """A freshly initialised learner of ``spec.kind``, as its method starts training."""
    return learner_class(spec.kind).fresh(backbone, spec, seed)


def build_classifier(
    backbone: Backbone,
    kind: str,
    learner: Learner | None,
    class_names: list[str],
    n_ctx: int,
    image_size: int,
    mean,
    std,
    autocast_dtype: torch.dtype | None = None,
) -> PromptedClassifier:
    """``learner=None`` is only for the zero-shot prompt, which has nothing to learn."""
    if learner is None:
        learner = learner_class(kind).fresh(backbone, LearnerSpec(kind=kind, class_names=list(class_names), n_ctx=0, ctx_init=None), 0)
    prompts = learner.bind(backbone, list(class_names), n_ctx if learner.tensors_required else 0)
    return PromptedClassifier(backbone.clip, prompts, learner, class_names, mean, std, image_size, autocast_dtype=autocast_dtype)


def learner_from_tensors(path: Path | None, backbone: Backbone, meta: CheckpointMeta, tensors: dict[str, torch.Tensor]) -> Learner:
    try:
        return learner_class(meta.learner.kind).from_tensors(backbone, meta.learner, tensors)
    except ValueError as exc:
        raise InputError(path, str(exc)) from None


def load_classifier(
    checkpoint: str | Path | Checkpoint,
    extra_classes: list[str] | None = None,
    weights: Path | None = None,
    cache_dir: Path | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> LoadedModel:
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    meta = ckpt.meta
    try:
        backbone = build_backbone(meta.backbone, ckpt.backbone_tensors, weights=weights, cache_dir=cache_dir)
    except InputError as exc:
        if exc.path is None:
            raise InputError(ckpt.path, exc.problem) from None
        raise
    learner = learner_from_tensors(ckpt.path, backbone, meta, ckpt.learner_tensors)
    names = list(meta.learner.class_names)
    # the text encoder lower-cases and reads '_' as a space: an extra that reads like a checkpoint
    # class would duplicate its prompt, pin its margin at 0 and hide it from the scan
    seen = {prompt_key(n): n for n in names}
    for extra in extra_classes or []:
        key = prompt_key(extra)
        if key in seen:
            if seen[key] != extra:
                raise InputError("policy", f"candidates.extra_classes {extra!r} gives the same prompt as the class {seen[key]!r}")
            continue
        seen[key] = extra
        names.append(extra)
    problem = learner.extra_classes_problem() if len(names) > len(meta.learner.class_names) else None
    if problem:
        raise InputError("policy", f"candidates.extra_classes: {problem}")
    check_preprocessing(ckpt.path, meta.preprocessing, backbone.preprocessing)
    pre = backbone.preprocessing
    try:
        clf = build_classifier(backbone, meta.learner.kind, learner, names, meta.learner.n_ctx, pre.image_size, pre.mean, pre.std, autocast_dtype)
    except ValueError as exc:  # prompts that do not fit the text tower: the checkpoint's class names
        raise InputError(ckpt.path, str(exc)) from None
    return LoadedModel(classifier=clf, checkpoint=ckpt, backbone=backbone, notes=list(backbone.notes))


def check_preprocessing(path: Path | None, stated: Preprocessing, deployed: Preprocessing, tol: float = 1e-6) -> None:
    """The checkpoint's stated preprocessing must be the backbone's own.

    The scan always uses the backbone's (what deployment does); a checkpoint that states another
    is refused rather than silently corrected, because the provider's pipeline then disagrees
    with ours and the user should know before shipping it.
    """
    for name in ("image_size", "interpolation", "resize_mode"):
        if getattr(stated, name) != getattr(deployed, name):
            raise InputError(path, f"preprocessing.{name} {getattr(stated, name)!r} differs from the backbone's {getattr(deployed, name)!r}; ci-gate scans with the preprocessing deployment uses")
    for name in ("mean", "std"):
        a, b = getattr(stated, name), getattr(deployed, name)
        if not all(math.isfinite(x) and abs(x - y) <= tol for x, y in zip(a, b)):
            raise InputError(path, f"preprocessing.{name} {list(a)} differs from the backbone's {[round(v, 8) for v in b]}; ci-gate scans with the preprocessing deployment uses")
