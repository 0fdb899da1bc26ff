"""The classifier that trigger inversion attacks: [0, 1] images in, logits over candidates out."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ci_gate.model.text import TextEncoder

if TYPE_CHECKING:  # the learners import the text tower from this package
    from ci_gate.learners.base import Learner
    from ci_gate.learners.tokens import PromptTokens


class PromptedClassifier(nn.Module):
    """Frozen CLIP image/text towers + a prompt learner (ci_gate.learners).

    The fast path (the default) truncates text sequences at the longest prompt's EOS, caches
    text features that do not depend on the input (every learner that is not ``conditional``)
    and, for a ``shares_prefix`` learner (CoCoOp), encodes each image's context prefix once for
    all classes (ci_gate.model.text). ``running(fast=False)`` is the straightforward reference
    (full context through open_clip's own blocks, recomputed every call). Both give the same
    logits up to float rounding; tests/test_inversion_exact.py holds them to it.
    """

    def __init__(
        self,
        clip: nn.Module,
        prompts: PromptTokens,
        learner: Learner,
        class_names: list[str],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        image_size: int,
        autocast_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.visual = clip.visual
        self.text = TextEncoder(clip)
        self.prompts = prompts
        self.learner = learner
        self.class_names = list(class_names)
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("logit_scale", clip.logit_scale.detach().exp().reshape(()), persistent=False)
        # modes are set here or for a block with running(), never by assigning from outside
        self._fast = True
        self._autocast_dtype = autocast_dtype
        self.channels_last = False
        self._cached_text: torch.Tensor | None = None
        self._frozen = False

    @property
    def kind(self) -> str:
        return self.learner.kind

    @property
    def fast(self) -> bool:
        return self._fast

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return self._autocast_dtype

    @contextlib.contextmanager
    def running(self, *, fast: bool | None = None, autocast_dtype: torch.dtype | None | type(...) = ...):
        """Run a block on the fast path or the reference one, and/or under another autocast dtype;
        the previous modes (and a cache built for them) come back afterwards."""
        saved = (self._fast, self._autocast_dtype, self._cached_text)
        if fast is not None and fast != self._fast:
            self._fast = fast
            self._cached_text = None
            if fast and self._frozen:
                self._cache_text()
        if autocast_dtype is not ...:
            self._autocast_dtype = autocast_dtype
        try:
            yield self
        finally:
            self._fast, self._autocast_dtype, self._cached_text = saved
            if self._cached_text is None and self._frozen:
                self._cache_text()

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def conditional(self) -> bool:
        """True when text features depend on the image (CoCoOp): one text pass per image and class."""
        return self.learner.conditional

    def text_length(self) -> int:
        # truncation is only exact for a causal text tower
        return self.prompts.fast_length if self.fast and self.text.causal else self.text.context_length

    @property
    def shares_prefix(self) -> bool:
        """Whether the fast path encodes CoCoOp prompts with the shared per-image prefix."""
        return self.fast and self.learner.shares_prefix and self.text.shares_prefix and self.prompts.sos_shared

    def freeze(self) -> "PromptedClassifier":
        """Freeze every weight and cache input-independent text features (for inversion)."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        self._cache_text()
        return self

    def _cache_text(self) -> None:
        self._cached_text = None
        if self._fast and not self.conditional:
            with torch.no_grad():
                self._cached_text = self._static_text_features()

    def tune_for(self, device: torch.device) -> "PromptedClassifier":
        """Device-specific layout that pays and keeps the numbers: channels-last for a
        convolutional (ResNet) image tower on CUDA, where cuDNN's tensor-core kernels want NHWC.

        Left out on purpose: channels-last for ViT towers (one patch convolution, then plain
        matmuls: nothing to gain) and torch.compile (its warm-up is tens of seconds per input shape,
        the class groups and the final evaluation bring several shapes, and a whole ViT-B/16 scan
        is meant to take under a minute; the work is in large matmuls that eager mode already
        runs at library speed).
        """
        convolutional = not hasattr(self.visual, "transformer")
        self.channels_last = device.type == "cuda" and convolutional
        if self.channels_last:
            self.visual.to(memory_format=torch.channels_last)
        return self

    def invalidate_cache(self) -> None:
        """For tuning: the learner's tensors are about to change, so cached features go stale."""
        self._frozen = False
        self._cached_text = None

    def _static_text_features(self) -> torch.Tensor:
        feats = self.learner.text_features(self.text, self.prompts, self.text_length())
        return F.normalize(feats.float(), dim=-1)

    def image_features(self, images01: torch.Tensor) -> torch.Tensor:
        x = (images01 - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return F.normalize(self.learner.image_features(self.visual, x).float(), dim=-1)

    def _autocast(self):
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.mean.device.type, dtype=self._autocast_dtype)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            img = self.image_features(images01)
            if self.shares_prefix:
                txt = F.normalize(self.learner.text_features_shared(self.text, self.prompts, img).float(), dim=-1)
                logits = torch.einsum("bd,bcd->bc", img, txt)
            elif self.conditional:
                txt = F.normalize(self.learner.text_features(self.text, self.prompts, self.text_length(), img).float(), dim=-1)
                logits = torch.einsum("bd,bcd->bc", img, txt)
            else:
                txt = self._cached_text if self._cached_text is not None else self._static_text_features()
                logits = img @ txt.t()
        return self.logit_scale.float() * logits.float()
