"""The torch module an ONNX graph is traced from, and the tensors its initializers must hold.

It computes exactly what the scanned PromptedClassifier computes (ci_gate.model.classifier), with
every data-bearing tensor a named, persistent parameter or buffer: the legacy exporter names graph
initializers after the module's state dict and inlines anything else as an anonymous constant,
which attestation could not trace back to the checkpoint. Names:

* ``visual.*``: the image tower, as in the backbone's state dict;
* ``text.*``: the text tower (CoCoOp only; CoOp's text features are input-independent);
* ``learner.ctx``, ``learner.meta_net.*``: the checkpoint's prompt tensors (CoCoOp);
* ``text_features``: CoOp's (or a zero-shot model's) normalised text features, folded into one
  constant (C, D);
* ``prompt_prefix``, ``prompt_suffix``, ``eos_index``, ``text_positional_embedding``,
  ``text_attn_mask``: CoCoOp's frozen prompt tokens and text-tower buffers, cut to the prompt length;
* ``mean``, ``std``, ``logit_scale``: the backbone's own normalisation and CLIP's logit scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ci_gate.model.classifier import PromptedClassifier

# Tensors recomputed by the exporting machine rather than copied: attestation compares them within
# a tolerance (another CPU may round a matmul differently); every other initializer is a copy and
# is compared bit for bit.
DERIVED = frozenset({"text_features"})
DERIVED_ATOL = 1e-5


class GraphClassifier(nn.Module):
    """Images (N, 3, S, S) in [0, 1], already at the model's input size -> logits (N, C)."""

    def __init__(self, clf: PromptedClassifier):
        super().__init__()
        self.conditional = clf.conditional
        self.visual = clf.visual
        self.register_buffer("mean", clf.mean.detach().clone().float())
        self.register_buffer("std", clf.std.detach().clone().float())
        self.register_buffer("logit_scale", clf.logit_scale.detach().clone().float())
        if self.conditional:
            prompts = clf.prompts
            # exact only for a causal tower: text_length() falls back to the full context otherwise
            length = clf.text_length()
            self.text = clf.text
            self.learner = clf.learner
            self.register_buffer("prompt_prefix", prompts.token_prefix.detach().clone())
            self.register_buffer("prompt_suffix", prompts.token_suffix[:, : length - 1 - prompts.n_ctx].detach().clone())
            self.register_buffer("eos_index", prompts.eos_index.detach().clone())
            self.register_buffer("text_positional_embedding", clf.text.positional_embedding[:length].detach().clone())
            mask = clf.text.attn_mask
            self.register_buffer("text_attn_mask", None if mask is None else mask[:length, :length].detach().clone())
        else:
            with torch.no_grad():
                feats = clf._static_text_features()
            self.register_buffer("text_features", feats.detach().clone().float())

    def _conditional_text(self, img: torch.Tensor) -> torch.Tensor:
        """CoCoOp: prompts [SOS, v_m + pi(x), class tokens] per image and class -> (N, C, D).

        The same computation as PromptLearner.text_features + TextEncoder.forward, on this
        module's own named buffers.
        """
        ctx = self.learner.conditional_context(img)  # (N, M, d)
        batch, n_cls = ctx.shape[0], self.prompt_prefix.shape[0]
        emb = torch.cat(
            [
                self.prompt_prefix.unsqueeze(0).expand(batch, -1, -1, -1),
                ctx.unsqueeze(1).expand(-1, n_cls, -1, -1),
                self.prompt_suffix.unsqueeze(0).expand(batch, -1, -1, -1),
            ],
            dim=2,
        ).flatten(0, 1)
        x = self.text.transformer(emb + self.text_positional_embedding, attn_mask=self.text_attn_mask)
        x = x.unflatten(0, (batch, n_cls))[:, torch.arange(n_cls), self.eos_index]
        return self.text._project(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.visual((images - self.mean) / self.std).float(), dim=-1)
        if self.conditional:
            txt = F.normalize(self._conditional_text(img).float(), dim=-1)
            logits = torch.einsum("bd,bcd->bc", img, txt)
        else:
            logits = img @ self.text_features.t()
        return self.logit_scale * logits


def expected_tensors(module: GraphClassifier) -> dict[str, torch.Tensor]:
    """What each initializer must hold, by the name the exporter gives it."""
    return {name: t.detach() for name, t in module.state_dict().items()}
