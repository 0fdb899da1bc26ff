"""The clean reference for the ``ref_*`` detection statistics (ci_gate.scoring).

The delivered checkpoint names its backbone; the same backbone with hand-written prompts
("a photo of a {class}.", zero-shot) is a model no provider touched. Inverting it with the same
settings and pool says how easy each class is for CLIP itself; the ``ref_*`` statistics score
how much EASIER the delivered model makes each class than that reference, which cancels classes
that are intrinsically easy to reach (a common source of false positives on clean models).

Cheap: a zero-shot classifier's text features do not depend on the image, so its inversion
costs one image-tower pass per step.

Which backbone: by default the one the checkpoint loads. An encoder-level checkpoint embeds a
fine-tuned (possibly backdoored) image tower; a reference built on it carries the backdoor and
cancels it. ``verify --reference-weights FILE`` loads the published weights the provider started
from (the user has them: the checkpoint names its backbone) to keep the reference clean; without
it, a scan of an embedded-backbone checkpoint says so in its warnings.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ci_gate.errors import InputError
from ci_gate.inversion import ClassTrigger, InversionSettings, base_rates, eval_subset, invert, transfer
from ci_gate.inversion.memory import choose_class_batch
from ci_gate.inversion.patch import PatchSettings, invert_patch
from ci_gate.model.architecture import PublishedArchitecture
from ci_gate.model.backbone import Backbone, build_backbone
from ci_gate.model.classifier import PromptedClassifier
from ci_gate.model.factory import LoadedModel, build_classifier


@dataclass(frozen=True)
class ReferenceClass:
    asr: float
    final_loss: float
    clean_loss: float
    # the delivered model's own trigger for the class, at the same rung, on this reference: its
    # margin loss (ref_specificity); None when no delivered trigger was given
    cross_loss: float | None = None


def reference_classifier(loaded: LoadedModel, class_names: list[str], backbone: Backbone | None = None) -> PromptedClassifier:
    pre = loaded.preprocessing
    clf = build_classifier(backbone or loaded.backbone, "zeroshot", None, list(class_names), 0, pre.image_size, pre.mean, pre.std)
    return clf


def reference_backbone(loaded: LoadedModel, weights: Path | None, trusted: PublishedArchitecture | None) -> Backbone | None:
    """The published backbone the checkpoint names, loaded from ``weights`` (None: use the
    checkpoint's own), the file being the user's copy of the published weights. Its architecture
    is ``trusted`` (ci_gate.model.architecture.published_config: the config file beside
    ``weights``, else open_clip's registry for a named one); None: the checkpoint's own, which then
    leaves the towers unverified."""
    if weights is None:
        return None
    spec = loaded.checkpoint.meta.backbone
    if trusted is None:
        # nothing says what the published architecture is (the tower stays unverified): the
        # checkpoint's, for the tensor comparison only
        update: dict = {"quick_gelu": loaded.backbone.quick_gelu}
    elif not trusted.from_file:
        update = {"quick_gelu": None}
    else:
        update = {"architecture": None, "config": trusted.config, "quick_gelu": None}
    # quick_gelu None: the published model's own activation (its config's, OpenAI-format
    # weights', or the named tag's, which is why a tag stays the 'pretrained' name; the file
    # itself comes from ``weights``), never the checkpoint's field
    spec = spec.model_copy(update={"embedded": False, "sha256": None, "pretrained": spec.pretrained or str(weights), **update})
    try:
        return build_backbone(spec, weights=weights)
    except InputError as exc:
        raise InputError(weights, f"not usable as the reference backbone: {exc.problem}") from None


def reference_stats(
    loaded: LoadedModel,
    class_names: list[str],
    images: torch.Tensor,
    settings: InversionSettings,
    device: torch.device | None = None,
    backbone: Backbone | None = None,
    delivered: list[ClassTrigger] | None = None,
) -> list[list[ReferenceClass]]:
    """Per candidate class (in ``class_names`` order) and per rung of the budget ladder: trigger
    ASR, final and clean margin loss of the hand-written-prompt model on the same (or the given
    published) backbone, inverted with the same settings, batches and evaluation images, and,
    given the ``delivered`` model's triggers, each one's margin loss on this reference."""
    clf, batch = _reference_model(loaded, class_names, settings.batch_size, device, backbone)
    cross = None if delivered is None else transfer(clf, eval_subset(images, settings), delivered, batch, settings.eval_batch_size)
    return _per_class(clf, images, invert(clf, images, settings, class_batch=batch), len(class_names), cross)


def reference_patch_stats(
    loaded: LoadedModel,
    class_names: list[str],
    images: torch.Tensor,
    settings: PatchSettings,
    device: torch.device | None = None,
    backbone: Backbone | None = None,
    delivered: list[ClassTrigger] | None = None,
) -> list[list[ReferenceClass]]:
    """As :func:`reference_stats`, for the patch family's area rungs."""
    clf, batch = _reference_model(loaded, class_names, settings.batch_size, device, backbone)
    held_out = eval_subset(images, InversionSettings(eval_images=settings.eval_images, seed=settings.seed))
    cross = None if delivered is None else transfer(clf, held_out, delivered, batch, settings.eval_batch_size)
    return _per_class(clf, images, invert_patch(clf, images, replace(settings, class_batch=batch)), len(class_names), cross)


def _reference_model(loaded: LoadedModel, class_names: list[str], batch_size: int, device: torch.device | None, backbone: Backbone | None) -> tuple[PromptedClassifier, int]:
    """The frozen reference classifier on ``device`` and its class batch. Its text features are
    image-independent, but its activations still grow with the class batch: the same
    memory-bound choice as the delivered model's scan."""
    clf = reference_classifier(loaded, class_names, backbone)
    if device is not None:
        clf.to(device)
    clf.freeze()
    return clf, choose_class_batch(clf, batch_size, max(1, len(class_names)), device or torch.device("cpu"))


def _per_class(clf: PromptedClassifier, images: torch.Tensor, triggers: list, n: int, cross: dict[int, list[tuple[float, float]]] | None) -> list[list[ReferenceClass]]:
    rates, clean = base_rates(clf, images)
    by_index = {t.index: t for t in triggers}
    return [
        [ReferenceClass(asr=r.asr, final_loss=r.final_loss, clean_loss=float(clean[i]), cross_loss=None if cross is None else cross[i][k][1]) for k, r in enumerate(by_index[i].rungs)]
        for i in range(n)
    ]
