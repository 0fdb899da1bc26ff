"""The interface every prompt learner implements, and what they share.

A learner owns four things, so that adding one touches its own module only:

* its tensors as a checkpoint stores them (names, shapes, validation from the header alone),
  and how it is built fresh for tuning or from those tensors;
* its Dassl import (which keys of a reference implementation's state dict are its own);
* how it changes the text tower (``text_features``) and, for deep prompts, the image tower
  (``image_features``);
* its fast path: ``conditional`` learners pay one text pass per image and class, the others
  have input-independent text features that the classifier caches.

Learner-specific checkpoint settings (CoOp's class-specific context, MaPLe's prompt depth, ...)
live in ``LearnerSpec.options`` and are validated by the learner's own ``Options`` model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ci_gate.learners.tokens import PromptTokens

if TYPE_CHECKING:
    from ci_gate.checkpoint.format import LearnerSpec
    from ci_gate.model.text import TextEncoder
    from ci_gate.model.backbone import Backbone


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class DasslImport:
    """What a learner takes from a Dassl state dict (``module.`` stripped)."""

    tensors: dict[str, torch.Tensor]  # the learner's own, named as ci-gate stores them
    options: dict[str, Any]  # LearnerSpec.options that the tensors imply (e.g. CoOp's CSC)
    token_prefix: torch.Tensor  # (n_cls, 1, d): the stored SOS embedding per class
    token_suffix: torch.Tensor  # (n_cls, L - 1 - n_ctx, d): class name, '.', EOS, padding
    used: frozenset[str]  # every state key read; any other key is refused as unknown
    # backbone tensors the file carries (whole-model checkpoints such as MaPLe's), in open_clip
    # state-dict names: convert compares them with the pinned backbone, and a difference makes
    # the converted checkpoint carry them as a modified (embedded) encoder
    towers: dict[str, torch.Tensor] = field(default_factory=dict)


def vision_dim(backbone: "Backbone") -> int:
    return int(backbone.clip.visual.output_dim)


def text_width(backbone: "Backbone") -> int:
    return int(backbone.clip.token_embedding.weight.shape[1])


class Learner(nn.Module):
    kind: ClassVar[str]
    title: ClassVar[str]  # as the literature writes it, for reports and messages
    Options: ClassVar[type[BaseModel]] = NoOptions
    # text features depend on the image (one text pass per image and class)
    conditional: ClassVar[bool] = False
    # encodes each image's prompt prefix once for all classes (ci_gate.model.text)
    shares_prefix: ClassVar[bool] = False
    # carries learned tensors; False only for the hand-written zero-shot prompt
    tensors_required: ClassVar[bool] = True
    # ci_gate.export can trace it into an ONNX graph
    exportable: ClassVar[bool] = True

    # ---- checkpoint tensors -------------------------------------------------------------

    @classmethod
    def options(cls, spec: "LearnerSpec") -> BaseModel:
        return cls.Options.model_validate(spec.options)

    @classmethod
    def expected_tensors(cls, spec: "LearnerSpec") -> set[str]:
        """Names (without the ``prompt_learner.`` prefix) a checkpoint of this spec holds."""
        raise NotImplementedError

    @classmethod
    def check_shapes(cls, spec: "LearnerSpec", shapes: dict[str, tuple[int, ...]], max_width: int) -> None:
        """Raise ValueError on a shape that cannot be this learner's, from the header alone.
        The backbone-dependent sizes (text width, vision width) are checked by ``from_tensors``."""

    @classmethod
    def fresh(cls, backbone: "Backbone", spec: "LearnerSpec", seed: int) -> "Learner":
        """A learner initialised as its method starts training (deterministic in ``seed``)."""
        raise NotImplementedError

    @classmethod
    def from_tensors(cls, backbone: "Backbone", spec: "LearnerSpec", tensors: dict[str, torch.Tensor]) -> "Learner":
        """Rebuild from a checkpoint's tensors; ValueError when they do not fit the backbone."""
        raise NotImplementedError

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors as a checkpoint stores them (Dassl names)."""
        return {}

    # ---- Dassl import ---------------------------------------------------------------------

    # for learners listed as Dassl-importable (ci_gate.learners): what marks their state dict
    dassl_signature: ClassVar[str] = ""

    @classmethod
    def dassl_claims(cls, keys: frozenset[str]) -> bool:
        """Whether a Dassl state dict with these keys (``module.`` stripped) is this learner's."""
        return False

    @classmethod
    def dassl_import(cls, state: dict[str, torch.Tensor]) -> DasslImport:
        """The learner's tensors from a claimed state dict; ValueError names what does not fit
        (shapes that cannot be this learner's). dtypes, finiteness, unknown keys and the token
        shapes are checked by ci_gate.checkpoint.dassl for every learner."""
        raise NotImplementedError

    @classmethod
    def dassl_prompt_options(cls, options: dict[str, Any], token_suffix: torch.Tensor, backbone: "Backbone", class_names: list[str], n_ctx: int) -> dict[str, Any]:
        """``options`` completed with what only the stored prompt tokens and the backbone's
        vocabulary tell (MaPLe: fixed words before the class name); convert calls it once the
        backbone is built. Nothing to add by default."""
        return options

    @classmethod
    def prompt_names(cls, options: dict[str, Any], class_names: list[str]) -> list[str]:
        """The text after the context in each class's prompt: the class name, unless the learner
        keeps fixed words before it."""
        return list(class_names)

    # ---- forward --------------------------------------------------------------------------

    def bind(self, backbone: "Backbone", class_names: list[str], n_ctx: int) -> PromptTokens:
        """The frozen prompt tokens for these classes (extra candidate classes included)."""
        return PromptTokens(backbone.clip, backbone.tokenizer, class_names, n_ctx)

    def extra_classes_problem(self) -> str | None:
        """Why this learner cannot prompt class names beyond the checkpoint's (the policy's
        ``candidates.extra_classes``), or None when it can."""
        return None

    def text_features(self, encoder: TextEncoder, prompts: PromptTokens, length: int, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """(C, D), or (B, C, D) for a conditional learner given normalised image features (B, d_vis)."""
        raise NotImplementedError

    def text_features_shared(self, encoder: TextEncoder, prompts: PromptTokens, image_features: torch.Tensor) -> torch.Tensor:
        """(B, C, D) through the shared-prefix pass; only for ``shares_prefix`` learners."""
        raise NotImplementedError

    def image_features(self, visual: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """The image tower's output for normalised pixels; deep vision prompts override this."""
        return visual(pixels)
