"""Text-encoder pass over prompt embeddings, truncated to the prompts' real length.

CLIP's text transformer is causal and pools the feature at the EOS token, so the output for a
prompt depends only on positions up to its EOS. Running on the shortest sequence that holds every
EOS instead of the full context (77 tokens) is exact, and is where most of a scan's time goes.
"""

from __future__ import annotations

import torch
from torch import nn


class TextEncoder(nn.Module):
    """Wraps an open_clip CLIP text tower; takes embeddings, not token ids."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("positional_embedding", clip.positional_embedding.detach(), persistent=False)
        mask = clip.attn_mask
        self.register_buffer("attn_mask", None if mask is None else mask.detach(), persistent=False)
        self.context_length = clip.positional_embedding.shape[0]

    def forward(self, embeddings: torch.Tensor, eos_index: torch.Tensor) -> torch.Tensor:
        """embeddings: (N, L, width) with L <= context length; eos_index: (N,) positions < L."""
        length = embeddings.shape[1]
        x = embeddings + self.positional_embedding[:length].to(embeddings.dtype)
        mask = None if self.attn_mask is None else self.attn_mask[:length, :length]
        x = self.transformer(x, attn_mask=mask)
        x = x[torch.arange(x.shape[0], device=x.device), eos_index]
        x = self.ln_final(x)
        proj = self.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj
