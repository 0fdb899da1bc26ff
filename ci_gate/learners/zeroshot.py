"""The hand-written zero-shot prompt "a photo of a {name}." (CLIP's own): no learned tensors.

Encoder-level attacks deliver such a model with a modified backbone embedded, so the scan still
has a classifier to invert.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ci_gate.learners.base import Learner
from ci_gate.learners.tokens import PromptTokens, check_prompt_tokens

if TYPE_CHECKING:
    from ci_gate.model.text import TextEncoder

TEMPLATE = "a photo of a {}."


class ZeroShot(Learner):
    kind = "zeroshot"
    title = "zero-shot"
    tensors_required = False

    def __init__(self):
        super().__init__()
        self.register_buffer("features", None, persistent=False)

    @classmethod
    def expected_tensors(cls, spec) -> set[str]:
        return set()

    @classmethod
    def fresh(cls, backbone, spec, seed: int) -> "ZeroShot":
        return cls()

    @classmethod
    def from_tensors(cls, backbone, spec, tensors) -> "ZeroShot":
        return cls()

    def bind(self, backbone, class_names: list[str], n_ctx: int) -> PromptTokens:
        tokens = backbone.tokenizer([TEMPLATE.format(n.replace("_", " ")) for n in class_names])
        # the tokenizer truncates silently: a short context would leave every class "a photo of a"
        check_prompt_tokens(tokens)
        with torch.no_grad():
            self.features = F.normalize(backbone.clip.encode_text(tokens).float(), dim=-1)
        return PromptTokens(backbone.clip, backbone.tokenizer, class_names, 0)

    def text_features(self, encoder: TextEncoder, prompts: PromptTokens, length: int, image_features: torch.Tensor | None = None) -> torch.Tensor:
        return self.features


LEARNER = ZeroShot
