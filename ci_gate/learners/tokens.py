"""Prompt tokens shared by the context-vector learners: [SOS, v_1..v_M, class name, '.', EOS].

As in the reference implementations (KaiyangZhou/CoOp), context vectors are spliced between the
SOS embedding and the class-name tokens; the frozen embeddings around them are built once.
"""

from __future__ import annotations

import torch
from torch import nn


class PromptTokens(nn.Module):
    """Frozen token embeddings of the prompts "X*M {name}." for a list of class names."""

    def __init__(self, clip: nn.Module, tokenizer, class_names: list[str], n_ctx: int):
        super().__init__()
        placeholder = " ".join(["X"] * n_ctx)
        texts = [f"{placeholder} {name.replace('_', ' ')}." for name in class_names]
        tokens = tokenizer(texts)
        eot = getattr(tokenizer, "eot_token_id", None)
        eos = (tokens == eot).int().argmax(dim=-1) if eot is not None else tokens.argmax(dim=-1)
        if (tokens[:, -1] != 0).any():
            i = int((tokens[:, -1] != 0).nonzero()[0])
            raise ValueError(f"learner.class_names[{i}] is too long for the text encoder's context of {tokens.shape[1]} tokens")
        with torch.no_grad():
            emb = clip.token_embedding(tokens).detach()
        self.n_ctx = n_ctx
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx :].clone(), persistent=False)
        self.register_buffer("eos_index", eos, persistent=False)
        # Kept on the host so the fast path never syncs with the device to learn shapes.
        self.fast_length = int(eos.max()) + 1
        # Classes grouped by EOS position (stable order), for the shared-prefix pass: within a
        # group every prompt has the same length, so nothing is padded. ``group_order`` lists
        # classes group by group; ``group_inverse`` puts the outputs back in class order.
        order = torch.sort(eos, stable=True).indices
        self.groups: list[tuple[int, int, int]] = []  # (start, end, suffix length) in group order
        start = 0
        for value, count in zip(*torch.unique_consecutive(eos[order], return_counts=True)):
            self.groups.append((start, start + int(count), int(value) + 1 - (1 + n_ctx)))
            start += int(count)
        self.register_buffer("group_order", order, persistent=False)
        self.register_buffer("group_inverse", torch.argsort(order), persistent=False)
        # class-token embeddings in group order, cut after the longest EOS: slicing a group out of
        # this is a view, so a forward pass copies nothing that does not depend on the image
        longest = max(s for _, _, s in self.groups)
        self.register_buffer("grouped_suffix", self.token_suffix[order, :longest].clone(), persistent=False)
        # every prompt starts with the same SOS token, so the prefix is class-independent
        self.sos_shared = bool((tokens[:, 0] == tokens[0, 0]).all())

    def group_suffixes(self) -> list[torch.Tensor]:
        """Per EOS group, the class-token embeddings (C_g, S_g, d) that follow the context."""
        return [self.grouped_suffix[a:b, :s] for a, b, s in self.groups]

    def assemble(self, ctx: torch.Tensor, length: int) -> torch.Tensor:
        """ctx: (M, d) or (B, M, d) -> prompts (C, length, d) or (B, C, length, d)."""
        suffix = self.token_suffix[:, : length - 1 - self.n_ctx]
        prefix = self.token_prefix
        n_cls = prefix.shape[0]
        if ctx.dim() == 2:
            return torch.cat([prefix, ctx.unsqueeze(0).expand(n_cls, -1, -1).to(prefix.dtype), suffix], dim=1)
        batch = ctx.shape[0]
        return torch.cat(
            [
                prefix.unsqueeze(0).expand(batch, -1, -1, -1),
                ctx.unsqueeze(1).expand(-1, n_cls, -1, -1).to(prefix.dtype),
                suffix.unsqueeze(0).expand(batch, -1, -1, -1),
            ],
            dim=2,
        )


def init_context(clip: nn.Module, tokenizer, n_ctx: int, ctx_init: str | None, generator: torch.Generator | None) -> torch.Tensor:
    width = clip.token_embedding.weight.shape[1]
    if ctx_init:
        tokens = tokenizer([ctx_init])
        n_words = int((tokens[0] > 0).sum()) - 2
        if n_words != n_ctx:
            raise ValueError(f"ctx_init {ctx_init!r} has {n_words} tokens, expected n_ctx={n_ctx}")
        with torch.no_grad():
            return clip.token_embedding(tokens)[0, 1 : 1 + n_ctx].detach().clone()
    return torch.randn(n_ctx, width, generator=generator) * 0.02
